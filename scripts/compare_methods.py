#!/usr/bin/env python
"""Compare solve methods and layer choices on the SAME collected states (issue 5, section 3).

    python scripts/compare_methods.py                 # the real SmolLM2-135M GGUF on llama.cpp
    python scripts/compare_methods.py --json out.json # also save every raw number

States are collected once with cvgen's own pipeline (`cvgen.generate.sharded.collected_states`) with
`--skip-last 0`, so the last block is stored too; a second run reuses the store and loads no
weights for collection. Every variant is solved from those states:

  cross-covariance   the default method on the default blocks (1..L-2), block k -> direction.k
  mean-diff          the same blocks, mean(B) - mean(A)
  pca-diff           the same blocks, top singular vector of B - A
  cc one block late  the cross-covariance vectors written as direction.(k+1), as the reference
                     tools do (an index past L-1 is dropped: llama.cpp ignores it)
  cc + last block    the cross-covariance method on blocks 1..L-1 (--skip-last 0)
  cc skip 10% ends   the cross-covariance method without the first and last 10% of blocks

Each variant's debias, negative and positive files are written per axis, then applied with
`cvgen.eval`'s machinery at every scale on both poles (debias at 1 plus the pole file at
|scale|; scale 0 is the debias file alone). Per configuration it measures the mean propensity
(log p(positive probe) - log p(negative probe), per token, over held-out prompts) and the mean
KL(unsteered || steered) per token on neutral text. Per pole, the scale at which the KL reaches
`--kl-target` is interpolated, and the propensity change toward the pole (vs scale 0) at that
scale is the "effect at matched KL". The table prints it per pole and per unit of KL, with a 95%
interval over prompts, and the paired difference from the default variant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.eval.backend import BACKENDS, Backend, Scored
from cvgen.eval.controls import AxisFiles
from cvgen.eval.hf_backend import HfBackend
from cvgen.eval.inputs import EvalInputs
from cvgen.eval.inputs import prepare_inputs as prepare_eval_inputs
from cvgen.eval.llamacpp_backend import LlamaCppBackend
from cvgen.eval.measurement import measure, neutral_scores
from cvgen.eval.settings import EvalSettings
from cvgen.extract.store import BlockStates, default_store_root
from cvgen.generate.settings import GenerateSettings, LayerSkip, select_blocks
from cvgen.solve.blocks import solve_blocks
from cvgen.solve.direction import BlockDirection, SolverOptions
from cvgen.solve.methods import DEFAULT_METHOD
from cvgen.vectors.gguf_file import write_control_vector

DEFAULT_MODEL = "~/.cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_AXES = ("language", "character_focus", "optimism")
DEFAULT_SCALES = (1.0, 2.0, 3.0)
DEFAULT_KL_TARGET = 0.1
ROLES = ("debias", "negative", "positive")
POLES = (("negative", -1.0), ("positive", 1.0))
Z95 = 1.96
V = TypeVar("V")


class CompareError(CvgenError, ValueError):
    """A bad option of the comparison; the message names the option and the value."""


# --- variants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to make an axis's vectors: a method, the blocks it solves, and the index shift
    at which block k's vector is written (0: direction.k, as cvgen; 1: one block late)."""

    name: str
    method: str
    blocks: tuple[int, ...]
    shift: int = 0


def default_variants(n_layer: int) -> list[Variant]:
    """The compared variants for a model with `n_layer` blocks (see the module docstring)."""

    def blocks(first: str, last: str) -> tuple[int, ...]:
        return tuple(select_blocks(n_layer, LayerSkip(first), LayerSkip(last)))

    default = blocks("1", "1")
    return [
        Variant("cross-covariance", DEFAULT_METHOD, default),
        Variant("mean-diff", "mean-diff", default),
        Variant("pca-diff", "pca-diff", default),
        Variant("cc one block late", DEFAULT_METHOD, default, shift=1),
        Variant("cc + last block", DEFAULT_METHOD, blocks("1", "0")),
        Variant("cc skip 10% ends", DEFAULT_METHOD, blocks("0.1", "0.1")),
    ]


def shift_blocks(vectors: Mapping[int, V], shift: int, n_layer: int) -> dict[int, V]:
    """Move block k's vector to index k + shift; drop those that land outside 1..n_layer-1
    (llama.cpp ignores an index past the last block and rejects direction.0)."""
    moved = {block + shift: vector for block, vector in vectors.items()}
    return {block: moved[block] for block in sorted(moved) if 1 <= block <= n_layer - 1}


# --- solving -------------------------------------------------------------------------------


def solve_variant_blocks(
    arrays: Mapping[str, BlockStates],
    stored_blocks: Sequence[int],
    axis: str,
    method: str,
    blocks: Sequence[int],
    *,
    features: str = "delta",
    options: SolverOptions | None = None,
) -> dict[int, BlockDirection]:
    """Solve `blocks` of one axis with `method`, from the pipeline's stored states, by the
    same `cvgen.solve.blocks.solve_blocks` the pipeline uses. Blocks whose solver finds nothing are
    left out."""
    for block in blocks:
        if block not in stored_blocks or block - 1 not in stored_blocks:
            raise CompareError(
                f"block {block}: its states (and block {block - 1}'s) are not stored"
            )
    return solve_blocks(
        arrays[f"{axis}/negative"],
        arrays[f"{axis}/positive"],
        arrays["baseline"],
        blocks,
        features=features,
        method=method,
        options=options,
    )


def role_vectors(solved: Mapping[int, BlockDirection]) -> dict[str, dict[int, np.ndarray]]:
    """debias / negative / positive vectors per block, as the pipeline writes them."""
    return {
        role: {block: getattr(direction, role) for block, direction in solved.items()}
        for role in ROLES
    }


def write_variant_files(
    folder: Path,
    variant: Variant,
    axis: str,
    vectors: Mapping[str, Mapping[int, np.ndarray]],
    *,
    n_layer: int,
    model_hint: str,
) -> AxisFiles:
    """Write the variant's three files of one axis (shifted when the variant says so)."""
    paths = {}
    for role in ROLES:
        by_block = shift_blocks(vectors[role], variant.shift, n_layer)
        if not by_block:
            raise CompareError(f"variant '{variant.name}', axis '{axis}': no block left to write")
        slug = "".join(c if c.isalnum() else "_" for c in variant.name)
        path = folder / f"{slug}-{axis}__{role}.gguf"
        write_control_vector(
            path,
            by_block,
            model_hint=model_hint,
            metadata={"cvgen.axis": axis, "cvgen.role": role, "cvgen.method": variant.method},
        )
        paths[role] = path
    return AxisFiles(paths["debias"], paths["negative"], paths["positive"])


# --- matched KL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchedScale:
    """The |scale| at which the KL reaches the target (linear between measured points), or
    the largest measured scale when it never does (`reached` False)."""

    scale: float
    reached: bool


def matched_kl_scale(scales: Sequence[float], kl: Sequence[float], target: float) -> MatchedScale:
    """scales: ascending |scale| values starting at 0; kl: the mean KL at each. Returns the
    first crossing of `target`, interpolated linearly in KL between the two points around it."""
    if len(scales) != len(kl) or len(scales) < 2:
        raise CompareError(f"need matching scales and KL values (got {len(scales)}, {len(kl)})")
    if list(scales) != sorted(scales) or scales[0] != 0:
        raise CompareError(f"scales {list(scales)} must ascend from 0")
    if kl[0] >= target:
        return MatchedScale(0.0, True)
    for index in range(1, len(scales)):
        if kl[index] >= target:
            low, high = kl[index - 1], kl[index]
            fraction = (target - low) / (high - low)
            scale = scales[index - 1] + fraction * (scales[index] - scales[index - 1])
            return MatchedScale(float(scale), True)
    return MatchedScale(float(scales[-1]), False)


def effect_at(scales: Sequence[float], effects: np.ndarray, scale: float) -> np.ndarray:
    """effects: (len(scales), prompts), linearly interpolated in scale to `scale` -> (prompts,)."""
    values = np.asarray(effects, dtype=np.float64)
    return np.array(
        [np.interp(scale, scales, values[:, column]) for column in range(values.shape[1])]
    )


def interval(values: np.ndarray) -> tuple[float, float]:
    """The mean over prompts and its 95% half-width (normal approximation)."""
    mean = float(np.mean(values))
    if values.size < 2:
        return mean, math.nan
    return mean, float(Z95 * np.std(values, ddof=1) / math.sqrt(values.size))


# --- measuring -----------------------------------------------------------------------------


@dataclass
class AxisRun:
    """One variant on one axis: per signed scale, the per-prompt propensity and the mean KL."""

    blocks: list[int]
    propensity: dict[float, np.ndarray] = field(default_factory=dict)
    kl: dict[float, float] = field(default_factory=dict)


def signed_scales(scales: Sequence[float]) -> list[float]:
    """-largest .. -smallest, 0, smallest .. largest."""
    return [-s for s in reversed(scales)] + [0.0] + list(scales)


def measure_axis(
    backend: Backend,
    files: AxisFiles,
    inputs: EvalInputs,
    eval_settings: EvalSettings,
    axis: str,
    scales: Sequence[float],
    reference: Sequence[Scored],
    tick: Callable[[], None],
) -> tuple[dict[float, np.ndarray], dict[float, float]]:
    """Propensity (per prompt) and mean neutral KL at every signed scale of one axis."""
    propensity: dict[float, np.ndarray] = {}
    kl: dict[float, float] = {}
    for scale in signed_scales(scales):
        with backend.session(files.steering("axis", scale)) as session:
            result = measure(
                session,
                inputs,
                eval_settings,
                probe_pairs=inputs.probe_ids[axis],
                reference=reference,
            )
        assert result.propensity is not None and result.kl is not None
        propensity[scale] = result.propensity
        kl[scale] = float(np.mean(result.kl))
        tick()
    return propensity, kl


# --- summarising -----------------------------------------------------------------------------


def pole_summary(
    run: AxisRun, scales: Sequence[float], sign: float, kl_target: float
) -> dict[str, Any]:
    """One pole: the matched-KL scale, the per-prompt effect toward the pole there, and its
    mean and 95% half-width."""
    grid = [0.0, *scales]
    base = run.propensity[0.0]
    effects = np.stack([sign * (run.propensity[sign * s if s else 0.0] - base) for s in grid])
    kl = [run.kl[sign * s if s else 0.0] for s in grid]
    matched = matched_kl_scale(grid, kl, kl_target)
    per_prompt = effect_at(grid, effects, matched.scale)
    mean, half = interval(per_prompt)
    return {
        "matched_scale": matched.scale,
        "reached": matched.reached,
        "effect": mean,
        "effect_ci95": half,
        "effect_per_kl": mean / kl_target,
        "per_prompt": per_prompt.tolist(),
        "kl": kl,
    }


def axis_summary(run: AxisRun, scales: Sequence[float], kl_target: float) -> dict[str, Any]:
    poles = {name: pole_summary(run, scales, sign, kl_target) for name, sign in POLES}
    both = (
        np.array(poles["negative"]["per_prompt"]) + np.array(poles["positive"]["per_prompt"])
    ) / 2
    mean, half = interval(both)
    slope = None
    if 1.0 in run.propensity and -1.0 in run.propensity:
        slope = float(np.mean(run.propensity[1.0] - run.propensity[-1.0]) / 2)
    return {
        "blocks": run.blocks,
        "poles": poles,
        "effect": mean,
        "effect_ci95": half,
        "effect_per_kl": mean / kl_target,
        "reached": all(p["reached"] for p in poles.values()),
        "per_prompt": both.tolist(),
        "slope_pm1": slope,
        "kl_at_1": {name: run.kl.get(sign) for name, sign in POLES},
    }


def paired_difference(variant: Sequence[float], default: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width of the per-prompt difference variant - default."""
    return interval(np.asarray(variant, dtype=np.float64) - np.asarray(default, dtype=np.float64))


def figure(value: float | None, *, at_least: bool = False) -> str:
    """3 significant digits; '≥' marks an effect taken at the largest scale (KL target unmet)."""
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value:.3g}"
    return f"≥{text}" if at_least else text


def render_table(
    summary: Mapping[str, Mapping[str, Any]], axes: Sequence[str], default: str, kl_target: float
) -> str:
    """One markdown table: variant x axis rows and a mean row per variant."""
    head = (
        "| variant | axis | blocks | KL@−1 | KL@+1 | slope ±1 | effect@KL − pole | "
        f"effect@KL + pole | effect/KL (±95%) | Δ vs {default} (±95%) |"
    )
    lines = [head, "|" + "---|" * 10]
    for name, per_axis in summary.items():
        for axis in [*axes, "mean"]:
            entry = per_axis[axis]
            blocks = entry["blocks"]
            span = f"{blocks[0]}..{blocks[-1]}" if blocks else "–"
            kl1 = entry.get("kl_at_1") or {}
            poles = entry.get("poles") or {}
            cells = [
                f"**{name}**" if axis == "mean" else name,
                axis,
                span,
                figure(kl1.get("negative")),
                figure(kl1.get("positive")),
                figure(entry.get("slope_pm1")),
                _pole_cell(poles.get("negative")),
                _pole_cell(poles.get("positive")),
                f"{figure(entry['effect_per_kl'], at_least=not entry['reached'])} "
                f"±{figure(entry['effect_ci95'] / kl_target)}",
                _delta_cell(entry.get("delta"), kl_target),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pole_cell(pole: Mapping[str, Any] | None) -> str:
    if pole is None:
        return "–"
    return f"{figure(pole['effect'], at_least=not pole['reached'])} @{pole['matched_scale']:.2g}"


def _delta_cell(delta: tuple[float, float] | None, kl_target: float) -> str:
    if delta is None:
        return "–"
    return f"{figure(delta[0] / kl_target)} ±{figure(delta[1] / kl_target)}"


def summarise(
    runs: Mapping[str, Mapping[str, AxisRun]],
    axes: Sequence[str],
    scales: Sequence[float],
    kl_target: float,
    default: str,
) -> dict[str, dict[str, Any]]:
    """Per variant: each axis's summary and a mean over axes (per prompt, so that intervals and
    the paired differences from the default variant stay paired by prompt)."""
    out: dict[str, dict[str, Any]] = {}
    for name, per_axis in runs.items():
        entries: dict[str, Any] = {
            axis: axis_summary(per_axis[axis], scales, kl_target) for axis in axes
        }
        stacked = np.mean([entries[axis]["per_prompt"] for axis in axes], axis=0)
        mean, half = interval(stacked)
        slopes = [entries[a]["slope_pm1"] for a in axes if entries[a]["slope_pm1"] is not None]
        entries["mean"] = {
            "blocks": entries[axes[0]]["blocks"],
            "effect": mean,
            "effect_ci95": half,
            "effect_per_kl": mean / kl_target,
            "reached": all(entries[a]["reached"] for a in axes),
            "per_prompt": stacked.tolist(),
            "poles": {
                pole: {
                    "effect": float(np.mean([entries[a]["poles"][pole]["effect"] for a in axes])),
                    "reached": all(entries[a]["poles"][pole]["reached"] for a in axes),
                    "matched_scale": float(
                        np.mean([entries[a]["poles"][pole]["matched_scale"] for a in axes])
                    ),
                }
                for pole, _ in POLES
            },
            "slope_pm1": float(np.mean(slopes)) if slopes else None,
            "kl_at_1": {
                pole: _mean_or_none([entries[a]["kl_at_1"][pole] for a in axes])
                for pole, _ in POLES
            },
        }
        out[name] = entries
    if default in out:
        for name, entries in out.items():
            if name == default:
                continue
            for axis in [*axes, "mean"]:
                entries[axis]["delta"] = paired_difference(
                    entries[axis]["per_prompt"], out[default][axis]["per_prompt"]
                )
    return out


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if len(present) == len(values) and present else None


# --- the run ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="The model (.gguf for llama.cpp).")
    parser.add_argument(
        "--axis",
        action="append",
        help=f"Axis to compare (repeatable; default: {', '.join(DEFAULT_AXES)}).",
    )
    parser.add_argument("--samples", type=int, default=128, help="Samples per class.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampler.")
    parser.add_argument("--store", type=Path, default=None, help="State store (default: cvgen's).")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="llama.cpp", help="Where vectors are applied."
    )
    parser.add_argument(
        "--kl-target",
        type=float,
        default=DEFAULT_KL_TARGET,
        help="KL (nats/token) at which effects are compared.",
    )
    parser.add_argument(
        "--scales",
        default=",".join(f"{s:g}" for s in DEFAULT_SCALES),
        help="|scale| values, applied on both poles.",
    )
    parser.add_argument(
        "--prompts", type=int, default=6, help="Held-out prompts for the propensity."
    )
    parser.add_argument("--probe-pairs", type=int, default=3, help="Probe pairs per axis.")
    parser.add_argument("--neutral-texts", type=int, default=4, help="Neutral texts for the KL.")
    parser.add_argument("--kl-tokens", type=int, default=32, help="Tokens of each neutral reply.")
    parser.add_argument(
        "--top-k", type=int, default=256, help="llama.cpp: top-k log-probs per position for the KL."
    )
    parser.add_argument(
        "--variants", default=None, help="Comma-separated variant names to run (default: all)."
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch and llama.cpp).")
    parser.add_argument("--json", type=Path, default=None, help="Also write every raw number here.")
    return parser.parse_args(argv)


def parse_positive_scales(text: str) -> list[float]:
    """'0.25,0.5,1' -> ascending distinct positive scales; a bad item names itself."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise CompareError(
                f"--scales: '{item.strip()}' is not a number (in '{text}')"
            ) from None
        if not (math.isfinite(value) and value > 0):
            raise CompareError(
                f"--scales: '{item.strip()}' must be a positive number (both poles are run)"
            )
        values.append(value)
    return sorted(set(values))


def collect(args: argparse.Namespace, axes: Sequence[str]) -> Any:
    """The run's states (collected now only when missing from the store)."""
    from cvgen.generate.sharded import collected_states

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = GenerateSettings(
        model=args.model,
        axes=tuple(axes),
        samples=args.samples,
        seed=args.seed,
        skip_last=LayerSkip("0"),
        device="cpu",
    )
    return collected_states(
        settings, store_root=args.store or default_store_root(), show_progress=False
    )


def open_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "llama.cpp":
        return LlamaCppBackend(Path(args.model), top_k=args.top_k, threads=args.threads)
    return HfBackend.load(args.model, device="cpu", threads=args.threads)


def pick_variants(all_variants: Sequence[Variant], chosen: str | None) -> list[Variant]:
    if chosen is None:
        return list(all_variants)
    names = [name.strip() for name in chosen.split(",")]
    known = {v.name: v for v in all_variants}
    for name in names:
        if name not in known:
            raise CompareError(
                f"--variants: unknown variant '{name}'; choose from: {', '.join(known)}"
            )
    return [known[name] for name in names]


def solve_all(
    states: Any, variants: Sequence[Variant], axes: Sequence[str]
) -> dict[str, dict[str, dict[int, BlockDirection]]]:
    """variant -> axis -> block -> direction; each (method, block) is solved once."""
    cache: dict[tuple[str, str, int], BlockDirection | None] = {}
    out: dict[str, dict[str, dict[int, BlockDirection]]] = {}
    for variant in variants:
        out[variant.name] = {}
        for axis in axes:
            missing = [b for b in variant.blocks if (variant.method, axis, b) not in cache]
            solved = solve_variant_blocks(
                states.arrays, states.stored_blocks, axis, variant.method, missing
            )
            for block in missing:
                cache[(variant.method, axis, block)] = solved.get(block)
            out[variant.name][axis] = {
                b: d for b in variant.blocks if (d := cache[(variant.method, axis, b)]) is not None
            }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    args.model = str(Path(os.path.expanduser(args.model)))
    axes = list(args.axis or DEFAULT_AXES)
    scales = parse_positive_scales(args.scales)
    if not (math.isfinite(args.kl_target) and args.kl_target > 0):
        raise CompareError(f"--kl-target: {args.kl_target} must be a positive number")
    states = collect(args, axes)
    print(
        f"states: {len(states.axes)} axes x {args.samples} samples, blocks "
        f"{states.stored_blocks[0]}..{states.stored_blocks[-1]} "
        f"({states.collected_prompts} prompts collected now)",
        flush=True,
    )
    variants = pick_variants(default_variants(states.n_layer), args.variants)
    solved = solve_all(states, variants, axes)
    eval_settings = EvalSettings(
        prompts=args.prompts,
        probe_pairs=args.probe_pairs,
        neutral_texts=args.neutral_texts,
        kl_tokens=args.kl_tokens,
        top_k=args.top_k,
        controls=False,
    )
    backend = open_backend(args)
    try:
        classes = {axis.name: axis.classes for axis in states.axes}
        inputs = prepare_eval_inputs(backend, classes, eval_settings)
        for axis in axes:
            if not inputs.probe_ids[axis]:
                raise CompareError(f"--axis {axis}: no shipped probes, so no propensity to compare")
        runs, unsteered = measure_variants(
            backend,
            inputs,
            eval_settings,
            variants,
            solved,
            axes,
            scales,
            states.n_layer,
            Path(args.model).stem,
        )
    finally:
        backend.close()
    default = variants[0].name
    summary = summarise(runs, axes, scales, args.kl_target, default)
    wall = time.perf_counter() - started
    return {
        "settings": {
            "model": args.model,
            "axes": axes,
            "samples": args.samples,
            "seed": args.seed,
            "backend": args.backend,
            "kl_target": args.kl_target,
            "scales": scales,
            "prompts": len(inputs.prompt_ids),
            "probe_pairs": args.probe_pairs,
            "neutral_texts": len(inputs.neutral),
            "kl_tokens": args.kl_tokens,
            "top_k": args.top_k,
            "threads": args.threads,
        },
        "variants": {
            v.name: {"method": v.method, "blocks": list(v.blocks), "shift": v.shift}
            for v in variants
        },
        "unsteered_propensity": unsteered,
        "raw": {
            name: {
                axis: {
                    "blocks": r.blocks,
                    "propensity": {f"{s:g}": v.tolist() for s, v in r.propensity.items()},
                    "kl": {f"{s:g}": v for s, v in r.kl.items()},
                }
                for axis, r in per_axis.items()
            }
            for name, per_axis in runs.items()
        },
        "summary": summary,
        "default": default,
        "wall_seconds": wall,
        "collection": {"prompts_collected": states.collected_prompts, **states.timings},
    }


def measure_variants(
    backend: Backend,
    inputs: EvalInputs,
    eval_settings: EvalSettings,
    variants: Sequence[Variant],
    solved: Mapping[str, Mapping[str, Mapping[int, BlockDirection]]],
    axes: Sequence[str],
    scales: Sequence[float],
    n_layer: int,
    model_hint: str,
) -> tuple[dict[str, dict[str, AxisRun]], dict[str, float]]:
    """The unsteered reference once, then every variant x axis x signed scale."""
    from cvgen.eval.backend import Steering
    from cvgen.eval.measurement import propensities

    total = len(variants) * len(axes) * len(signed_scales(scales))
    clock = time.perf_counter()
    with backend.session(Steering("unsteered")) as session:
        reference = neutral_scores(session, inputs)
        unsteered = {
            axis: float(np.mean(propensities(session, inputs.prompt_ids, inputs.probe_ids[axis])))
            for axis in axes
        }
    first = time.perf_counter() - clock
    print(f"unsteered measured in {first:.0f} s; {total} steered configurations to go", flush=True)
    done = 0
    measure_clock = time.perf_counter()

    def tick() -> None:
        nonlocal done
        done += 1
        if done in (3, total) or done % 13 == 0:
            spent = time.perf_counter() - measure_clock
            left = spent / done * (total - done)
            print(
                f"  {done}/{total} configurations, {spent / 60:.1f} min, about {left / 60:.1f} min left",
                flush=True,
            )

    runs: dict[str, dict[str, AxisRun]] = {}
    with tempfile.TemporaryDirectory(prefix="cvgen-compare-") as scratch:
        for variant in variants:
            runs[variant.name] = {}
            for axis in axes:
                directions = solved[variant.name][axis]
                files = write_variant_files(
                    Path(scratch),
                    variant,
                    axis,
                    role_vectors(directions),
                    n_layer=n_layer,
                    model_hint=model_hint,
                )
                result = AxisRun(blocks=sorted(shift_blocks(directions, variant.shift, n_layer)))
                result.propensity, result.kl = measure_axis(
                    backend, files, inputs, eval_settings, axis, scales, reference, tick
                )
                runs[variant.name][axis] = result
    return runs, unsteered


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except CvgenError as error:
        print(f"compare_methods: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    settings = report["settings"]
    print()
    print(
        f"effect = propensity change toward the pole (log p(pole probe) - log p(other), nats/token) "
        f"at the scale where the neutral KL reaches {settings['kl_target']:g} nats/token; "
        "'≥': the KL target was not reached, effect at the largest scale; @s: that scale"
    )
    print(
        render_table(report["summary"], settings["axes"], report["default"], settings["kl_target"])
    )
    print(
        f"\n{settings['backend']}, {settings['samples']} samples/class, scales ±{settings['scales']}, "
        f"{settings['prompts']} prompts x {settings['probe_pairs']} probe pairs, "
        f"{settings['neutral_texts']} neutral texts x {settings['kl_tokens']} tokens; "
        f"wall time {report['wall_seconds'] / 60:.1f} min"
    )
    if args.json:
        write_json_atomically(args.json, report)
        print(f"raw numbers: {args.json}")
    return 0


def write_json_atomically(path: Path, report: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
