"""Measure `cvgen transfer` on the small model: sigmoid ratios against task arithmetic ("none").

B is the model; D is B with the donor axis enhanced on attn_output, T is B with the target axis
enhanced (W' = W + a u (u^T W) per block, u the axis's unit direction from the pack: the pole
files' difference, positive - negative, normalised). O = transfer(B, D, T) for each ratio.
Printed: the wall time and peak RSS of each transfer (run in a child process, so the RSS is its
own) against the model's size and largest tensor; KL(T || O) per token on neutral text (mean
and a bootstrap 95% interval over tokens); and each axis's propensity shift (mean over prompts
of the model's propensity minus B's, bootstrap 95% interval over prompts) for D, T and each O.

    python scripts/measure_transfer.py [--model M.gguf] [--pack demo-pack] [--factor 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cvgen.eval.backend import Steering
from cvgen.eval.engine_backend import EngineBackend
from cvgen.eval.inputs import prepare_inputs
from cvgen.eval.measurement import kl_against, neutral_scores, propensities
from cvgen.eval.settings import EvalSettings
from cvgen.eval.statistics import bootstrap_mean_band, bootstrap_slope
from cvgen.pack.manifest import load_manifest
from cvgen.vectors.control_vector import ControlVector
from cvgen.weights.gguf_copy import Edit, rewrite_gguf

DEFAULT_MODEL = Path.home() / ".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CHILD = """
import json, resource, sys, time
from pathlib import Path
from cvgen.weights.transfer import TransferSettings, transfer_model
base, donor, target, out, ratio = sys.argv[1:6]
started = time.perf_counter()
report = transfer_model({"base": Path(base), "donor": Path(donor), "target": Path(target)},
                        Path(out), TransferSettings(ratio=ratio))
print(json.dumps({"seconds": time.perf_counter() - started,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "changed": len(report.changed), "copied": report.copied}))
"""


def axis_directions(pack: Path, axis: str) -> dict[int, np.ndarray]:
    """block -> the axis's unit direction (positive file minus negative file, normalised)."""
    files = load_manifest(pack).axes[axis].files
    positive = ControlVector.from_gguf(pack / files.positive).directions
    negative = ControlVector.from_gguf(pack / files.negative).directions
    found = {}
    for block, vector in positive.items():
        difference = np.asarray(vector, np.float32) - np.asarray(negative[block], np.float32)
        found[block] = difference / np.float32(np.linalg.norm(difference))
    return found


def stand_in_enhance(model: Path, out: Path, directions: dict[int, np.ndarray], a: float) -> None:
    """STAND-IN for cvgen's directional enhancement (cvgen/weights/enhance.py, written in
    parallel; the lead replaces this): W' = W + a u (u^T W) on blk.N.attn_output.weight."""

    def edit(u: np.ndarray) -> Edit:
        return lambda w: w + np.float32(a) * np.outer(u, u @ w).astype(np.float32)

    edits = {f"blk.{block}.attn_output.weight": edit(u) for block, u in directions.items()}
    rewrite_gguf(model, out, fields={}, edits=edits)


def timed_transfer(paths: list[Path], ratio: str) -> dict[str, float]:
    """Run one transfer in a child process; its wall time, peak RSS and counts."""
    command = [sys.executable, "-c", CHILD, *map(str, paths), ratio]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_model(path: Path, classes: dict[str, tuple[str, str]], args: argparse.Namespace):
    """Per axis the per-prompt propensities, and the neutral scores (with distributions)."""
    settings = EvalSettings(
        prompts=args.prompts, probe_pairs=3, probe_tokens=16, neutral_texts=args.neutral
    )
    backend = EngineBackend(path, threads=args.threads)
    try:
        inputs = prepare_inputs(backend, classes, settings)
        with backend.session(Steering("none")) as session:
            found = {
                axis: propensities(session, inputs.prompt_ids, inputs.probe_ids[axis])
                for axis in classes
            }
            return found, neutral_scores(session, inputs)
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--pack", type=Path, default=Path("demo-pack"))
    parser.add_argument("--donor-axis", default="language")
    parser.add_argument("--target-axis", default="character_focus")
    parser.add_argument("--factor", type=float, default=3.0, help="a of the enhancement")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--neutral", type=int, default=4, help="neutral texts for the KL")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    manifest = load_manifest(args.pack)
    axes = (args.donor_axis, args.target_axis)
    classes = {axis: tuple(manifest.axes[axis].classes) for axis in axes}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as work:
        folder = Path(work)
        models = {"B": args.model, "D": folder / "donor.gguf", "T": folder / "target.gguf"}
        for name, axis in (("D", args.donor_axis), ("T", args.target_axis)):
            stand_in_enhance(
                args.model, models[name], axis_directions(args.pack, axis), args.factor
            )
        size = args.model.stat().st_size
        print(f"model {args.model.name}: {size / 2**20:.1f} MiB; enhancement a = {args.factor:g}")
        for ratio in ("sigmoid", "none"):
            models[f"O-{ratio}"] = folder / f"out-{ratio}.gguf"
            run = timed_transfer(
                [models["B"], models["D"], models["T"], models[f"O-{ratio}"]], ratio
            )
            print(
                f"transfer --ratio {ratio}: {run['seconds']:.1f} s, peak RSS "
                f"{run['peak_rss_kib'] / 1024:.0f} MiB ({run['changed']} tensors changed, "
                f"{run['copied']} copied)"
            )
        measured = {name: measure_model(path, classes, args) for name, path in models.items()}
    report(measured, axes)


def report(measured: dict, axes: tuple[str, str]) -> None:
    """Print the propensity shifts against B and the KL to T."""
    base = measured["B"][0]
    print(
        f"propensity shift vs B (mean over prompts [95% CI]); donor axis {axes[0]}, target {axes[1]}"
    )
    for name in ("D", "T", "O-sigmoid", "O-none"):
        cells = []
        for axis in axes:
            estimate = bootstrap_slope(
                np.array([0.0, 1.0]), np.stack([base[axis], measured[name][0][axis]], 1)
            )
            cells.append(
                f"{axis} {estimate.slope:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]"
            )
        print(f"  {name:<10} " + "   ".join(cells))
    reference = measured["T"][1]
    for name in ("O-sigmoid", "O-none", "D", "B"):
        kl = kl_against(reference, measured[name][1])
        low, high = bootstrap_mean_band(kl[:, None])
        print(
            f"KL(T || {name}) per token: {kl.mean():.5f} [{low[0]:.5f}, {high[0]:.5f}] over {kl.size} tokens"
        )


if __name__ == "__main__":
    main()
