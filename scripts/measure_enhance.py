"""Directional enhancement against additive control vectors, for one axis, with `cvgen eval`'s
machinery: per configuration, the mean KL (nats per token) to the unedited, unsteered model on
neutral text, and the change of the axis's propensity from the unedited model (paired over
held-out prompts, bootstrap 95% interval), and that change per unit KL.

Enhanced models are written one at a time (`cvgen.weights.enhance.enhance_model`) and scored
through the llama.cpp engine with no steering; control vectors are run on the unedited model
as `cvgen eval` runs them (debias at 1 plus the pole file of the scale's sign).

    python scripts/measure_enhance.py --pack demo-pack --model SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cvgen.eval.backend import Scored, Steering
from cvgen.eval.controls import axis_files
from cvgen.eval.engine_backend import EngineBackend
from cvgen.eval.inputs import EvalInputs, prepare_inputs
from cvgen.eval.measurement import kl_against, neutral_scores, propensities
from cvgen.eval.settings import EvalSettings
from cvgen.eval.statistics import bootstrap_slope
from cvgen.pack.manifest import load_manifest
from cvgen.weights.enhance import enhance_model


def _numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _score(
    backend: EngineBackend, steering: Steering, inputs: EvalInputs, axis: str
) -> tuple[np.ndarray, list[Scored]]:
    with backend.session(steering) as session:
        return (
            propensities(session, inputs.prompt_ids, inputs.probe_ids[axis]),
            neutral_scores(session, inputs),
        )


def _row(label: str, base: np.ndarray, got: np.ndarray, kl: np.ndarray, seconds: float) -> str:
    change = bootstrap_slope(np.array([0.0, 1.0]), np.stack([base, got], axis=1))
    mean_kl = float(np.mean(kl))
    per_kl = change.slope / mean_kl if mean_kl > 0 else float("nan")
    return (
        f"{label:<24} {mean_kl:8.4f} {change.slope:+8.3f} [{change.low:+7.3f}, {change.high:+7.3f}]"
        f" {per_kl:+9.2f} {seconds:6.1f}"
    )


def main() -> None:
    """Parse the options, run the sweep, print one line per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--axis", default="language")
    parser.add_argument("--factors", default="-1,-0.5,0.5,1,1.5,2,3")
    parser.add_argument("--scales", default="-1,-0.5,0.5,1")
    parser.add_argument("--ffn", action="store_true", help="edit ffn_down too")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    manifest = load_manifest(args.pack)
    settings = EvalSettings(prompts=args.prompts, probe_pairs=3, probe_tokens=16, neutral_texts=4)
    base = EngineBackend(args.model, threads=args.threads)
    classes = {args.axis: tuple(manifest.axes[args.axis].classes)}
    inputs = prepare_inputs(base, classes, settings)
    plain, reference = _score(base, Steering("unsteered"), inputs, args.axis)
    print(f"axis {args.axis}, {len(inputs.prompt_ids)} prompts, model {args.model.name}")
    print(f"{'configuration':<24} {'KL':>8} {'d-propensity [95% CI]':>27} {'d/KL':>9} {'s':>6}")
    files = axis_files(args.pack, manifest, args.axis, controls_dir=None, seed=0)
    for scale in _numbers(args.scales):
        started = time.perf_counter()
        got, scores = _score(base, files.steering("axis", scale), inputs, args.axis)
        kl = kl_against(reference, scores)
        print(_row(f"vector {scale:+g}", plain, got, kl, time.perf_counter() - started))
    base.close()
    with tempfile.TemporaryDirectory() as folder:
        for factor in _numbers(args.factors):
            started = time.perf_counter()
            out = Path(folder) / f"enhanced{factor:+g}.gguf"
            enhance_model(args.pack, args.model, out, {args.axis: factor}, ffn=args.ffn)
            edited = EngineBackend(out, threads=args.threads)
            try:
                got, scores = _score(edited, Steering("baked"), inputs, args.axis)
            finally:
                edited.close()
            out.unlink()
            kl = kl_against(reference, scores)
            label = f"enhance {factor:+g}" + (" +ffn" if args.ffn else "")
            print(_row(label, plain, got, kl, time.perf_counter() - started))


if __name__ == "__main__":
    main()
