"""Measure `cvgen transfer` on the small model: sigmoid ratios against task arithmetic ("none").

Two variants of the donor D and the target T, each made from a base B:

- `--variant enhance` (the issue's own): B is the model; D is B with the donor axis enhanced on
  attn_output, T is B with the target axis enhanced (cvgen.weights.enhance.enhance_model:
  W' = W + a u (u^T W) per block, u the axis's unit direction from the pack).
- `--variant bias` (behavioural): B is the model with a zero blk.N.ffn_down.bias on every block
  (so it runs exactly as the model); D is B with the donor axis at `--scale` baked into those
  biases (cvgen.weights.bake.bake_vectors, which adds to a bias already there), T is B with
  the target axis baked likewise. The bias is an exact control vector, so D and T move their
  axes' propensity as a control vector does, and the transfer has a behaviour to carry.
  The untouched model is measured too, as a check that B runs as it does.

O = transfer(B, D, T) for each ratio. Printed (as Markdown tables): the wall time and peak RSS
of each transfer (run in a child process, so the RSS is its own) against the model's size and
largest tensor; each axis's propensity shift (mean over prompts of the model's propensity
minus B's, bootstrap 95% interval over prompts) for D, T and each O; and KL(X || O) per token
on neutral text for X = T and B (mean and a bootstrap 95% interval over tokens).

    python scripts/measure_transfer.py --variant bias|enhance [--model M.gguf] [--pack P]
        [--factor 3] [--scale 1] [--prompts 16] [--neutral 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvgen.eval.backend import Steering
from cvgen.eval.engine_backend import EngineBackend
from cvgen.eval.inputs import prepare_inputs
from cvgen.eval.measurement import kl_against, neutral_scores, propensities
from cvgen.eval.settings import EvalSettings
from cvgen.eval.statistics import bootstrap_mean_band, bootstrap_slope
from cvgen.pack.steering import PackSteering
from cvgen.vectors.model_header import read_gguf_layout
from cvgen.weights.bake import bake_vectors
from cvgen.weights.enhance import enhance_model
from cvgen.weights.gguf_copy import NewTensor, rewrite_gguf

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
RATIOS = ("sigmoid", "none")


def zero_biases(model: Path, out: Path) -> None:
    """`model` with a zero blk.N.ffn_down.bias after each block's ffn_down.weight."""
    layout = read_gguf_layout(model)
    arch = layout.fields["general.architecture"]
    n_embd, n_layer = (
        layout.fields[f"{arch}.embedding_length"],
        layout.fields[f"{arch}.block_count"],
    )
    added = {
        f"blk.{n}.ffn_down.bias": NewTensor(
            np.zeros(n_embd, np.float32), after=f"blk.{n}.ffn_down.weight"
        )
        for n in range(n_layer)
    }
    rewrite_gguf(model, out, fields={}, added=added)


def make_models(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """The models of the variant: B, D, T (and, for `bias`, the untouched model as "model")."""
    models = {"D": folder / "donor.gguf", "T": folder / "target.gguf"}
    steering = PackSteering(args.pack)
    pairs = (("D", args.donor_axis), ("T", args.target_axis))
    if args.variant == "enhance":
        models["B"] = args.model
        for name, axis in pairs:
            enhance_model(steering, args.model, models[name], {axis: args.factor}, threads=1)
        return models
    models["B"] = folder / "base-zero-bias.gguf"
    zero_biases(args.model, models["B"])
    for name, axis in pairs:
        assignment = f"{axis}={args.scale:g}"
        vectors = steering.block_vectors(steering.parse_assignments((assignment,), None))
        record = {"pack": str(args.pack), "set": assignment}
        bake_vectors(models["B"], models[name], vectors, record=record)
    models["model"] = args.model
    return models


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


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("enhance", "bias"), default="enhance")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--pack", type=Path, default=Path("demo-pack"))
    parser.add_argument("--donor-axis", default="language")
    parser.add_argument("--target-axis", default="character_focus")
    parser.add_argument("--factor", type=float, default=3.0, help="a of the enhancement")
    parser.add_argument("--scale", type=float, default=1.0, help="the baked axes' scale (bias)")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--neutral", type=int, default=4, help="neutral texts for the KL")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    steering = PackSteering(args.pack)
    axes = (args.donor_axis, args.target_axis)
    classes = {axis: tuple(steering.manifest.axes[axis].classes) for axis in axes}
    layout = read_gguf_layout(args.model)
    largest = max(tensor.nbytes for tensor in layout.tensors)
    edit = f"a = {args.factor:g}" if args.variant == "enhance" else f"scale {args.scale:g}"
    print(
        f"variant {args.variant} ({edit}), model {args.model.name}: "
        f"{args.model.stat().st_size / 2**20:.1f} MiB, largest tensor {largest / 2**20:.1f} MiB; "
        f"donor axis {axes[0]}, target axis {axes[1]}; {args.threads} thread(s)\n"
    )
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as work:
        folder = Path(work)
        models = make_models(args, folder)
        print(
            "| transfer | wall time | peak RSS | tensors changed | copied |\n|---|---|---|---|---|"
        )
        for ratio in RATIOS:
            models[f"O-{ratio}"] = folder / f"out-{ratio}.gguf"
            run = timed_transfer(
                [models["B"], models["D"], models["T"], models[f"O-{ratio}"]], ratio
            )
            print(
                f"| --ratio {ratio} | {run['seconds']:.1f} s | {run['peak_rss_kib'] / 1024:.0f} MiB "
                f"| {run['changed']} | {run['copied']} |"
            )
        measured = {name: measure_model(path, classes, args) for name, path in models.items()}
    report(measured, axes)
    print(f"\n(whole run: {time.perf_counter() - started:.0f} s)")


def shift(before: np.ndarray, after: np.ndarray) -> str:
    """The mean per-prompt change from `before` to `after`, with its bootstrap 95% interval."""
    estimate = bootstrap_slope(np.array([0.0, 1.0]), np.stack([before, after], 1))
    return f"{estimate.slope:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]"


def report(measured: dict, axes: tuple[str, str]) -> None:
    """Print the propensity shifts against B (and O-sigmoid against O-none), and the KLs."""
    base = measured["B"][0]
    print(f"\n| propensity shift [95% CI] | {axes[0]} | {axes[1]} |\n|---|---|---|")
    names = ["D", "T", "O-sigmoid", "O-none"] + (["model"] if "model" in measured else [])
    for name in names:
        cells = [shift(base[axis], measured[name][0][axis]) for axis in axes]
        print(f"| {name} vs B | " + " | ".join(cells) + " |")
    paired = [shift(measured["O-none"][0][a], measured["O-sigmoid"][0][a]) for a in axes]
    print("| O-sigmoid vs O-none (paired) | " + " | ".join(paired) + " |")
    print("\n| KL per token on neutral text [95% CI] | mean | tokens |\n|---|---|---|")
    pairs = [("T", n) for n in ("O-sigmoid", "O-none", "D", "B")]
    pairs += [("B", n) for n in ("O-sigmoid", "O-none", "D", "T")]
    pairs += [("B", "model")] if "model" in measured else []
    kls = {pair: kl_against(measured[pair[0]][1], measured[pair[1]][1]) for pair in pairs}
    for (reference, name), kl in kls.items():
        print(f"| KL({reference} ‖ {name}) | {band(kl)} | {kl.size} |")
    difference = kls["T", "O-sigmoid"] - kls["T", "O-none"]
    print(
        f"| KL(T ‖ O-sigmoid) − KL(T ‖ O-none), paired | {band(difference, '+.5f')} | "
        f"{difference.size} |"
    )


def band(values: np.ndarray, form: str = ".5f") -> str:
    """The mean of `values` and its bootstrap 95% interval (over the values)."""
    low, high = bootstrap_mean_band(values[:, None])
    return f"{values.mean():{form}} [{low[0]:{form}}, {high[0]:{form}}]"


if __name__ == "__main__":
    main()
