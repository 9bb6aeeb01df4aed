#!/usr/bin/env python
"""Beat the anchors per unit of damage: cvgen's default pack against the reference methods, per
axis, at a matched KL (issue 17, points 3 and 6).

    python scripts/compare_methods.py --json out.json --markdown out.md

States are collected once with cvgen's own pipeline (`cvgen.generate.sharded.collected_states`,
`--skip-last 0`, so every block is stored; a re-run reuses the store). cvgen's variants are
solved from those states; the anchors are made from the same samples:

  cvgen default        the axis's own method (`generate --method auto`: mean-diff for person,
                       else cross-covariance) on blocks 1..L-2, block k -> direction.k (the pack)
  cc first half, cc middle third, cc last half
                       the default method on a band of the default blocks
  mean-diff, pca-diff  the other solve methods on the default blocks
  cc no debias         the default's pole files applied without its debias file
  cc residual          the default method on the residual h_k instead of h_k - h_(k-1)
  cc equal norms       the default's directions, every block's pole vector at the same norm
  cc half samples      the default method on the first half of the samples
  anchors:
  cc one block late    the default's vectors written as direction.(k+1), as the reference tools do
  llama.cpp mean       llama.cpp's `llama-cvector-generator --method mean` (built from the pinned
                       source) on the same positive / negative prompts: one unit-norm vector a
                       block, written one block late, applied at +scale / -scale, no debias
  llama.cpp pca        its `--method pca`, as published (each block's sign is arbitrary)
  llama.cpp pca aligned  the same file, each block's sign turned toward the mean file's

Measured with the llama.cpp engine (`cvgen eval --backend llama.cpp`: one model, one context,
the vectors set on it), without generation: per configuration the mean KL(unsteered || steered)
per token on neutral replies and, at the scales it needs, the per-prompt propensity (log p of the
positive probe minus the negative one, per token). Per variant, axis and pole, the |scale| where
the KL reaches `--kl-target` is SEARCHED (scales are not shared: a unit-norm file needs other
scales than cvgen's), and the propensity and the KL are measured there. The figure of an axis is
p(+s+) - p(-s-), positive pole at its matched scale minus negative pole at its own: scale-free,
so fair to the unit-norm files too. Ratios are to the best anchor; a split of the held-out prompts
(even / odd) picks a variant per axis on one half and reports it on the other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/cvector_generator.py
from cvgen.common.errors import CvgenError
from cvgen.data.shipped import load_axis
from cvgen.eval.backend import Steering
from cvgen.eval.inputs import prepare_inputs as prepare_eval_inputs
from cvgen.eval.matched import (
    BANDS,
    AxisResult,
    MatchedError,
    MatchedSearch,
    Measurer,
    Recipe,
    band,
    figure_summary,
    measure_matched,
    split_halves,
)
from cvgen.eval.measurement import neutral_scores, propensities
from cvgen.eval.settings import EvalSettings
from cvgen.extract.store import BlockStates, default_store_root
from cvgen.generate.settings import GenerateSettings, LayerSkip, select_blocks
from cvgen.solve.blocks import solve_blocks
from cvgen.solve.direction import BlockDirection, SolverOptions
from cvgen.solve.methods import AUTO_METHOD, DEFAULT_METHOD, axis_method
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.gguf_file import write_control_vector

DEFAULT_MODEL = "~/.cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_KL_TARGET = 0.05
GOAL_RATIO = 1.25
ROLES = ("debias", "negative", "positive")
DEFAULT_VARIANT = "cvgen default"
V = TypeVar("V")


# a bad option of the comparison, or a search that cannot be made (one class for both: the
# matched-KL search lives in cvgen.eval.matched); the message names the option and the value
CompareError = MatchedError


# --- variants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to make an axis's vectors.

    generator None: solved by cvgen from the stored states with `method` on `blocks`, block
    k's vector written as direction.(k + shift), applied with its debias file unless `debias`
    is False; `features`, `samples` (the first n samples only, None: all) and `equal_norms`
    (every block's pole vectors at their mean norm) as named. generator "mean" / "pca":
    llama.cpp's cvector-generator file, one signed file (`align`: PCA signs turned toward the
    mean file's). `anchor`: a reference method that cvgen's variants are measured against."""

    name: str
    method: str = DEFAULT_METHOD
    blocks: tuple[int, ...] = ()
    shift: int = 0
    debias: bool = True
    features: str = "delta"
    samples: int | None = None
    equal_norms: bool = False
    generator: str | None = None
    align: bool = False
    anchor: bool = False

    @property
    def solved(self) -> bool:
        return self.generator is None


def default_variants(n_layer: int, samples: int) -> list[Variant]:
    """The compared variants for a model with `n_layer` blocks (see the module docstring)."""
    default = tuple(select_blocks(n_layer, LayerSkip("1"), LayerSkip("1")))
    cc = Variant(DEFAULT_VARIANT, DEFAULT_METHOD, default)
    return [
        replace(cc, method=AUTO_METHOD),  # `generate`'s default: each axis's own method
        *(replace(cc, name=f"cc {which}", blocks=band(default, which)) for which in BANDS),
        replace(cc, name="mean-diff", method="mean-diff"),
        replace(cc, name="pca-diff", method="pca-diff"),
        replace(cc, name="cc no debias", debias=False),
        replace(cc, name="cc residual", features="residual"),
        replace(cc, name="cc equal norms", equal_norms=True),
        replace(cc, name="cc half samples", samples=max(1, samples // 2)),
        replace(cc, name="cc one block late", shift=1, anchor=True),
        Variant("llama.cpp mean", generator="mean", anchor=True),
        Variant("llama.cpp pca", generator="pca", anchor=True),
        Variant("llama.cpp pca aligned", generator="pca", align=True, anchor=True),
    ]


def shift_blocks(vectors: Mapping[int, V], shift: int, n_layer: int) -> dict[int, V]:
    """Move block k's vector to index k + shift; drop those that land outside 1..n_layer-1
    (llama.cpp ignores an index past the last block and rejects direction.0)."""
    moved = {block + shift: vector for block, vector in vectors.items()}
    return {block: moved[block] for block in sorted(moved) if 1 <= block <= n_layer - 1}


def equal_norms(vectors: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Every block's vector rescaled to the mean of their norms (directions unchanged; a zero
    vector stays zero)."""
    norms = {b: float(np.linalg.norm(np.asarray(v, np.float64))) for b, v in vectors.items()}
    target = float(np.mean(list(norms.values()))) if norms else 0.0
    return {
        block: np.asarray(
            np.asarray(vector, np.float64) * (target / norms[block] if norms[block] else 0.0),
            dtype=np.float32,
        )
        for block, vector in sorted(vectors.items())
    }


# --- solving -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstRows:
    """The first `rows` samples of a stored array (the samples lever)."""

    states: BlockStates
    rows: int

    def block(self, block: int) -> np.ndarray:
        return np.asarray(self.states.block(block))[: self.rows]


def solve_variant_blocks(
    arrays: Mapping[str, BlockStates],
    stored_blocks: Sequence[int],
    axis: str,
    method: str,
    blocks: Sequence[int],
    *,
    features: str = "delta",
    samples: int | None = None,
    options: SolverOptions | None = None,
) -> dict[int, BlockDirection]:
    """Solve `blocks` of one axis with `method` (auto: the axis's own, as `generate`), from
    the pipeline's stored states, by the same `cvgen.solve.blocks.solve_blocks` the pipeline
    uses (on the first `samples` rows when given). Blocks whose solver finds nothing are left
    out."""
    method = axis_method(method, load_axis(axis).method)
    for block in blocks:
        if block not in stored_blocks or (features == "delta" and block - 1 not in stored_blocks):
            raise CompareError(
                f"block {block}: its states (and block {block - 1}'s) are not stored"
            )
    names = (f"{axis}/negative", f"{axis}/positive", "baseline")
    parts: list[Any] = [arrays[name] for name in names]
    if samples is not None:
        parts = [FirstRows(part, samples) for part in parts]
    return solve_blocks(
        parts[0], parts[1], parts[2], blocks, features=features, method=method, options=options
    )


def role_vectors(solved: Mapping[int, BlockDirection]) -> dict[str, dict[int, np.ndarray]]:
    """debias / negative / positive vectors per block, as the pipeline writes them."""
    return {
        role: {block: getattr(direction, role) for block, direction in solved.items()}
        for role in ROLES
    }


def variant_vectors(
    variant: Variant, solved: Mapping[int, BlockDirection], n_layer: int
) -> dict[str, dict[int, np.ndarray]]:
    """The variant's three files' vectors: the pipeline's roles, pole vectors at equal norms
    when it says so, then shifted."""
    roles = role_vectors(solved)
    if variant.equal_norms:
        roles = {
            role: (equal_norms(vectors) if role != "debias" else vectors)
            for role, vectors in roles.items()
        }
    return {role: shift_blocks(vectors, variant.shift, n_layer) for role, vectors in roles.items()}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


# --- applying --------------------------------------------------------------------------------


def write_solved_files(
    folder: Path,
    variant: Variant,
    axis: str,
    vectors: Mapping[str, Mapping[int, np.ndarray]],
    *,
    model_hint: str,
) -> Recipe:
    """Write the variant's files of one axis (the debias file only when it is applied)."""
    paths: dict[str, Path] = {}
    for role in ROLES:
        if role == "debias" and not variant.debias:
            continue
        if not vectors[role]:
            raise CompareError(f"variant '{variant.name}', axis '{axis}': no block left to write")
        path = folder / f"{_slug(variant.name)}-{axis}__{role}.gguf"
        write_control_vector(
            path,
            vectors[role],
            model_hint=model_hint,
            metadata={
                "cvgen.axis": axis,
                "cvgen.role": role,
                "cvgen.method": axis_method(variant.method, load_axis(axis).method),
            },
        )
        paths[role] = path
    return Recipe(paths["negative"], paths["positive"], paths.get("debias"))


def vector_description(directions: Mapping[int, np.ndarray]) -> dict[str, Any]:
    """Blocks and per-block norms of one file's vectors."""
    norms = [
        float(np.linalg.norm(np.asarray(v, np.float64))) for _, v in sorted(directions.items())
    ]
    blocks = sorted(directions)
    return {
        "blocks": blocks,
        "norms": norms,
        "norm_min": min(norms) if norms else None,
        "norm_median": float(np.median(norms)) if norms else None,
        "norm_max": max(norms) if norms else None,
    }


# --- the matched-KL search -------------------------------------------------------------------


# --- figures ---------------------------------------------------------------------------------


def ratio_interval(
    variant: np.ndarray, anchor: np.ndarray, *, draws: int = 2000, seed: int = 0
) -> tuple[float | None, float | None, float | None]:
    """mean(variant) / mean(anchor) and a 95% percentile interval from resampling the prompts
    (paired: one draw picks the same prompts for both). None where the anchor's mean is not
    positive (no ratio means anything then); the bounds are None with fewer than 2 prompts."""
    variant = np.asarray(variant, dtype=np.float64)
    anchor = np.asarray(anchor, dtype=np.float64)
    base = float(np.mean(anchor))
    if not base > 0:
        return None, None, None
    ratio = float(np.mean(variant)) / base
    if variant.size < 2:
        return ratio, None, None
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, variant.size, size=(draws, variant.size))
    denominators = anchor[picks].mean(axis=1)
    valid = denominators > 0
    ratios = variant[picks].mean(axis=1)[valid] / denominators[valid]
    if ratios.size < draws // 2:
        return ratio, None, None
    low, high = np.percentile(ratios, [2.5, 97.5])
    return ratio, float(low), float(high)


def best_anchor(
    figures: Mapping[str, Mapping[str, Any]], anchors: Sequence[str], key: str = "effect"
) -> str | None:
    """The anchor with the largest figure `key` among those that reached the target on both
    poles (None when none did)."""
    candidates = [name for name in anchors if name in figures and figures[name]["reached"]]
    if not candidates:
        return None
    return max(candidates, key=lambda name: figures[name][key])


def axis_steers(figures: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> bool:
    """An axis steers when one of `names` (the default and the best anchor) reached the target
    on both poles with a pole-to-pole figure whose 95% interval lies above 0."""
    for name in names:
        entry = figures.get(name)
        if entry and entry["reached"] and entry["effect"] - _finite(entry["ci95"]) > 0:
            return True
    return False


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def add_ratios(
    figures: dict[str, dict[str, Any]], anchors: Sequence[str], *, seed: int = 0
) -> str | None:
    """Each variant's ratio to the best anchor (over all prompts, with a resampled interval);
    returns that anchor's name."""
    anchor = best_anchor(figures, anchors)
    for entry in figures.values():
        entry["ratio"] = (None, None, None)
        if anchor is not None and entry["reached"]:
            entry["ratio"] = ratio_interval(
                np.array(entry["per_prompt"]), np.array(figures[anchor]["per_prompt"]), seed=seed
            )
    return anchor


def select_on_split(
    figures: Mapping[str, Mapping[str, Any]],
    candidates: Sequence[str],
    anchors: Sequence[str],
    default: str,
) -> dict[str, Any]:
    """Pick the candidate (cvgen's variants) and the anchor with the largest figure on half A,
    among those that reached the target on both poles, and give both halves' figures for the
    pick, the default and the anchor, and the ratios on half B (picked on A, so B is fair)."""
    reached = [name for name in candidates if name in figures and figures[name]["reached"]]
    picked = max(reached, key=lambda name: figures[name]["effect_a"]) if reached else None
    anchor = best_anchor(figures, anchors, key="effect_a")

    def halves(name: str | None) -> dict[str, float] | None:
        if name is None or name not in figures:
            return None
        return {"a": figures[name]["effect_a"], "b": figures[name]["effect_b"]}

    def ratio_b(name: str | None) -> float | None:
        if name is None or anchor is None or name not in figures:
            return None
        base = figures[anchor]["effect_b"]
        if not figures[name]["reached"] or not base > 0:
            return None
        return float(figures[name]["effect_b"] / base)

    return {
        "picked": picked,
        "picked_halves": halves(picked),
        "default": default,
        "default_halves": halves(default),
        "anchor": anchor,
        "anchor_halves": halves(anchor),
        "picked_ratio_b": ratio_b(picked),
        "default_ratio_b": ratio_b(default),
    }


# --- tables ----------------------------------------------------------------------------------


def figure(value: float | None) -> str:
    """3 significant digits, '–' for nothing."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3g}"


def _matched_cell(entry: Mapping[str, Any], pole: str) -> str:
    scale = entry["matched"][pole]
    if entry["reached_poles"][pole]:
        return f"{scale:.3g}"
    return f"not reached (KL {figure(entry['max_kl'][pole])} @{scale:.3g})"


def _ratio_cell(ratio: Sequence[float | None]) -> str:
    value, low, high = ratio
    if value is None:
        return "–"
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def render_axis_table(
    axis: str,
    figures: Mapping[str, Mapping[str, Any]],
    blocks: Mapping[str, Sequence[int]],
    anchors: Sequence[str],
    anchor: str | None,
) -> str:
    """One axis: a row per variant (anchors marked), the matched |scales|, the figure with its
    95% interval, and the ratio to the best anchor (with its resampled 95% interval)."""
    lines = [
        f"### {axis}",
        "",
        "| variant | blocks | s− | s+ | KL at s−, s+ | p(+s+) − p(−s−) (±95%) | ratio to "
        f"{anchor or 'best anchor'} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in figures.items():
        span = blocks.get(name) or []
        label = f"{name} (anchor)" if name in anchors else name
        effect = f"{figure(entry['effect'])} ±{figure(entry['ci95'])}"
        if not entry["reached"]:
            effect = f"({effect}, target not reached)"
        cells = [
            f"**{label}**" if name == anchor else label,
            f"{span[0]}..{span[-1]}" if span else "–",
            _matched_cell(entry, "negative"),
            _matched_cell(entry, "positive"),
            ", ".join(
                figure(entry["kl_at_matched"].get(pole)) for pole in ("negative", "positive")
            ),
            effect,
            _ratio_cell(entry.get("ratio", (None, None, None))),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_headline(summary: Mapping[str, Mapping[str, Any]], default: str) -> str:
    """Per axis: the default's figure, the best anchor's, their ratio and the goal."""
    lines = [
        f"| axis | steers | {default} (±95%) | best anchor | its figure (±95%) | ratio | "
        f"≥ {GOAL_RATIO:g}x |",
        "|---|---|---|---|---|---|---|",
    ]
    for axis, entry in summary.items():
        figures = entry["figures"]
        anchor = entry["best_anchor"]
        mine = figures.get(default)
        ratio = mine.get("ratio", (None, None, None)) if mine else (None, None, None)
        goal = "–"
        if entry["steers"] and ratio[0] is not None:
            goal = "yes" if ratio[0] >= GOAL_RATIO else "no"
        lines.append(
            "| "
            + " | ".join(
                [
                    axis,
                    "yes" if entry["steers"] else "no",
                    _figure_cell(mine),
                    anchor or "none reached the target",
                    _figure_cell(figures.get(anchor) if anchor else None),
                    _ratio_cell(ratio),
                    goal,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _figure_cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "–"
    text = f"{figure(entry['effect'])} ±{figure(entry['ci95'])}"
    return text if entry["reached"] else f"({text}, not reached)"


def render_selection(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Per axis: the variant picked on half A, its and the default's figures on A and B, the
    anchor picked on A, and the ratios on B."""
    lines = [
        "| axis | picked on A | A | B | default A | default B | anchor picked on A | "
        "anchor A | anchor B | picked/anchor on B | default/anchor on B |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for axis, entry in summary.items():
        chosen = entry["selection"]
        picked = chosen["picked_halves"] or {}
        default = chosen["default_halves"] or {}
        anchor = chosen["anchor_halves"] or {}
        cells = [
            axis,
            chosen["picked"] or "none reached",
            figure(picked.get("a")),
            figure(picked.get("b")),
            figure(default.get("a")),
            figure(default.get("b")),
            chosen["anchor"] or "none reached",
            figure(anchor.get("a")),
            figure(anchor.get("b")),
            _plain_ratio(chosen["picked_ratio_b"]),
            _plain_ratio(chosen["default_ratio_b"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plain_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_anchor_files(
    files: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Sequence[str]
) -> str:
    """What the files of `names` (the default and the anchors) hold: blocks and per-block
    norms (every variant's are in the JSON)."""
    lines = [
        "| variant | axis | file | blocks | norm min / median / max |",
        "|---|---|---|---|---|",
    ]
    for name, per_axis in files.items():
        if name not in names:
            continue
        for axis, roles in per_axis.items():
            for role, entry in roles.items():
                if role.startswith("_"):
                    continue
                blocks = entry["blocks"]
                lines.append(
                    f"| {name} | {axis} | {role} | "
                    f"{blocks[0]}..{blocks[-1]} ({len(blocks)}) | "
                    f"{figure(entry['norm_min'])} / {figure(entry['norm_median'])} / "
                    f"{figure(entry['norm_max'])} |"
                )
    return "\n".join(lines)


def render_report(report: Mapping[str, Any]) -> str:
    """Every table of a run, as Markdown."""
    settings = report["settings"]
    summary = report["summary"]
    default = report["default"]
    parts = [
        f"Figure: p(+s+) − p(−s−), the propensity (log p(positive probe) − log p(negative "
        f"probe), nats/token) at the positive pole's matched |scale| minus at the negative "
        f"pole's; a pole's matched |scale| is where the mean KL(unsteered ‖ steered) on "
        f"neutral text reaches {settings['kl_target']:g} nats/token. Ratios: to the best "
        f"anchor (bold) that reached the target on both poles, with a 95% interval from "
        f"resampling the prompts.",
        "",
        render_headline(summary, default),
        "",
    ]
    for axis, entry in summary.items():
        parts += [
            render_axis_table(
                axis, entry["figures"], entry["blocks"], report["anchors"], entry["best_anchor"]
            ),
            "",
        ]
    parts += [
        "### Selection on a split",
        "",
        "The held-out prompts split into A (even) and B (odd); per axis the variant (cvgen's "
        "side) and the anchor with the largest figure on A are picked, and B tells how they "
        "really do.",
        "",
        render_selection(summary),
        "",
        "### The files",
        "",
        render_anchor_files(report["files"], [default, *report["anchors"]]),
        "",
        f"{settings['model_name']}, llama.cpp engine, {settings['threads']} thread(s); "
        f"{settings['samples']} samples/class; {settings['prompts']} prompts x "
        f"{settings['probe_pairs']} probe pairs; {settings['neutral_texts']} neutral texts x "
        f"{settings['kl_tokens']} tokens; {report['counts']['kl']} KL and "
        f"{report['counts']['propensity']} propensity measurements "
        f"({report['counts']['seconds_per_measurement']:.2f} s each); wall time "
        f"{report['wall_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(parts) + "\n"


# --- measuring -----------------------------------------------------------------------------


def measure_variant_axis(
    measurer: Measurer,
    recipe: Recipe,
    axis: str,
    *,
    unsteered: np.ndarray,
    start: float,
    blocks: list[int],
    args: argparse.Namespace,
) -> AxisResult:
    """Both poles of one variant on one axis (`cvgen.eval.matched.measure_matched`) with the
    search the options give."""
    search = MatchedSearch(args.kl_target, args.kl_tolerance, args.search_steps, args.max_factor)
    return measure_matched(
        measurer, recipe, axis, unsteered=unsteered, start=start, blocks=blocks, search=search
    )


# --- the run ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="The model's .gguf file.")
    parser.add_argument(
        "--axis",
        action="append",
        help="Axis to compare (repeatable; default: every shipped axis with probes).",
    )
    parser.add_argument("--samples", type=int, default=128, help="Samples per class.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampler.")
    parser.add_argument("--store", type=Path, default=None, help="State store (default: cvgen's).")
    parser.add_argument(
        "--kl-target",
        type=float,
        default=DEFAULT_KL_TARGET,
        help="KL (nats/token) at which the poles are compared.",
    )
    parser.add_argument(
        "--kl-tolerance",
        type=float,
        default=0.1,
        help="The search stops when a point around the target is this close to it (relative).",
    )
    parser.add_argument(
        "--search-steps", type=int, default=7, help="KL measurements per pole, at most."
    )
    parser.add_argument(
        "--max-factor",
        type=float,
        default=64.0,
        help="The search gives up (target not reached) at this multiple of its start scale.",
    )
    parser.add_argument(
        "--prompts", type=int, default=16, help="Held-out prompts (split in two halves)."
    )
    parser.add_argument("--probe-pairs", type=int, default=3, help="Probe pairs per axis.")
    parser.add_argument("--probe-tokens", type=int, default=16, help="Tokens of each probe.")
    parser.add_argument("--neutral-texts", type=int, default=8, help="Neutral texts for the KL.")
    parser.add_argument("--kl-tokens", type=int, default=48, help="Tokens of each neutral reply.")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"Comma-separated variant names (default: all; '{DEFAULT_VARIANT}' is always run).",
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of llama.cpp.")
    parser.add_argument(
        "--generator-timeout",
        type=float,
        default=3600.0,
        help="Seconds one llama-cvector-generator run may take.",
    )
    parser.add_argument(
        "--pca-iterations",
        type=int,
        default=1000,
        help="llama-cvector-generator --pca-iter (its default; a multiple of 100).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write every raw number here.")
    parser.add_argument("--markdown", type=Path, default=None, help="Also write the tables here.")
    parser.add_argument(
        "--keep-files", type=Path, default=None, help="Keep every vector file in this folder."
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    positive = {
        "--kl-target": args.kl_target,
        "--kl-tolerance": args.kl_tolerance,
        "--max-factor": args.max_factor,
        "--generator-timeout": args.generator_timeout,
    }
    for option, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise CompareError(f"{option}: {value} must be a positive number")
    if args.max_factor < 1:
        raise CompareError(f"--max-factor: {args.max_factor} must be at least 1")
    for option, value in (
        ("--samples", args.samples),
        ("--search-steps", args.search_steps),
        ("--threads", args.threads),
        ("--neutral-texts", args.neutral_texts),
        ("--kl-tokens", args.kl_tokens),
    ):
        if value < 1:
            raise CompareError(f"{option}: {value} must be >= 1")
    if args.prompts < 2:
        raise CompareError(f"--prompts: {args.prompts}; the split needs at least 2")


def default_axes() -> list[str]:
    from cvgen.data.eval_data import shipped_probe_axes
    from cvgen.data.shipped import shipped_axis_names

    probed = set(shipped_probe_axes())
    return [name for name in shipped_axis_names() if name in probed]


def pick_variants(all_variants: Sequence[Variant], chosen: str | None) -> list[Variant]:
    if chosen is None:
        return list(all_variants)
    names = [name.strip() for name in chosen.split(",") if name.strip()]
    known = {v.name: v for v in all_variants}
    for name in names:
        if name not in known:
            raise CompareError(
                f"--variants: unknown variant '{name}'; choose from: {', '.join(known)}"
            )
    if DEFAULT_VARIANT not in names:
        names.insert(0, DEFAULT_VARIANT)  # the figures are the default's against the anchors
    return [known[name] for name in names]


def collect(args: argparse.Namespace, axes: Sequence[str]) -> tuple[Any, dict[str, list[str]]]:
    """The run's states (collected now only when missing from the store) and the rendered
    prompt text of every row of every array (what cvector-generator is given)."""
    from cvgen.generate.prepare import prepare_run
    from cvgen.generate.sharded import collected_states

    settings = GenerateSettings(
        model=args.model,
        axes=tuple(axes),
        samples=args.samples,
        seed=args.seed,
        skip_last=LayerSkip("0"),
        device="cpu",
        threads=args.threads,
    )
    states = collected_states(
        settings, store_root=args.store or default_store_root(), show_progress=False
    )
    return states, prepare_run(settings).rendered


def solve_all(
    states: Any, variants: Sequence[Variant], axes: Sequence[str]
) -> dict[str, dict[str, dict[int, BlockDirection]]]:
    """variant -> axis -> block -> direction for cvgen's variants; each (method, features,
    samples, block) is solved once."""
    cache: dict[tuple[str, str, int | None, str, int], BlockDirection | None] = {}
    out: dict[str, dict[str, dict[int, BlockDirection]]] = {}
    for variant in variants:
        if not variant.solved:
            continue
        out[variant.name] = {}
        for axis in axes:
            method = axis_method(variant.method, load_axis(axis).method)
            key = (method, variant.features, variant.samples, axis)
            missing = [b for b in variant.blocks if (*key, b) not in cache]
            solved = solve_variant_blocks(
                states.arrays,
                states.stored_blocks,
                axis,
                method,
                missing,
                features=variant.features,
                samples=variant.samples,
            )
            for block in missing:
                cache[(*key, block)] = solved.get(block)
            out[variant.name][axis] = {
                b: d for b in variant.blocks if (d := cache[(*key, b)]) is not None
            }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cvgen.eval.engine_backend import EngineBackend

    started = time.perf_counter()
    check_args(args)
    args.model = str(Path(os.path.expanduser(args.model)))
    axes = list(args.axis or default_axes())
    states, rendered = collect(args, axes)
    print(
        f"states: {len(states.axes)} axes x {args.samples} samples, blocks "
        f"{states.stored_blocks[0]}..{states.stored_blocks[-1]} "
        f"({states.collected_prompts} prompts collected now)",
        flush=True,
    )
    variants = pick_variants(default_variants(states.n_layer, args.samples), args.variants)
    anchors = [v.name for v in variants if v.anchor]
    solved = solve_all(states, variants, axes)
    eval_settings = EvalSettings(
        prompts=args.prompts,
        probe_pairs=args.probe_pairs,
        probe_tokens=args.probe_tokens,
        neutral_texts=args.neutral_texts,
        kl_tokens=args.kl_tokens,
        controls=False,
    )
    backend = EngineBackend(Path(args.model), threads=args.threads)
    generator_runs: dict[str, Any] = {}
    try:
        classes = {axis.name: axis.classes for axis in states.axes}
        inputs = prepare_eval_inputs(backend, classes, eval_settings)
        for axis in axes:
            if not inputs.probe_ids[axis]:
                raise CompareError(f"--axis {axis}: no shipped probes, so no propensity to compare")
        with backend.session(Steering("unsteered")) as session:
            reference = neutral_scores(session, inputs)
            unsteered = {
                axis: propensities(session, inputs.prompt_ids, inputs.probe_ids[axis])
                for axis in axes
            }
        measurer = Measurer(backend, inputs, reference)
        with tempfile.TemporaryDirectory(prefix="cvgen-compare-") as scratch:
            folder = args.keep_files or Path(scratch)
            folder.mkdir(parents=True, exist_ok=True)
            recipes, files, blocks, starts = make_files(
                folder,
                variants,
                solved,
                axes,
                rendered,
                backend,
                args,
                n_layer=states.n_layer,
                generator_runs=generator_runs,
            )
            results = measure_all(
                measurer, variants, axes, recipes, blocks, starts, unsteered, args
            )
    finally:
        backend.close()
    halves = split_halves(len(inputs.prompt_ids))
    summary = summarise(results, variants, axes, anchors, halves)
    wall = time.perf_counter() - started
    measurements = measurer.counts["kl"] + measurer.counts["propensity"]
    return {
        "settings": {
            "model": args.model,
            "model_name": Path(args.model).name,
            "axes": axes,
            "samples": args.samples,
            "seed": args.seed,
            "backend": "llama.cpp engine",
            "kl_target": args.kl_target,
            "kl_tolerance": args.kl_tolerance,
            "search_steps": args.search_steps,
            "max_factor": args.max_factor,
            "prompts": len(inputs.prompt_ids),
            "halves": {"a": halves[0], "b": halves[1]},
            "probe_pairs": args.probe_pairs,
            "probe_tokens": args.probe_tokens,
            "neutral_texts": len(inputs.neutral),
            "kl_tokens": args.kl_tokens,
            "threads": args.threads,
            "pca_iterations": args.pca_iterations,
        },
        "variants": {
            v.name: {
                "method": (
                    f"llama-cvector-generator --method {v.generator}" if v.generator else v.method
                ),
                "blocks": list(v.blocks),
                "shift": v.shift,
                "debias": v.debias and v.solved,
                "features": v.features if v.solved else None,
                "samples": v.samples,
                "equal_norms": v.equal_norms,
                "align": v.align,
                "anchor": v.anchor,
            }
            for v in variants
        },
        "anchors": anchors,
        "default": DEFAULT_VARIANT,
        "unsteered_propensity": {axis: unsteered[axis].tolist() for axis in axes},
        "files": files,
        "generator_runs": generator_runs,
        "raw": {
            name: {axis: raw_result(result) for axis, result in per_axis.items()}
            for name, per_axis in results.items()
        },
        "summary": summary,
        "counts": {
            **measurer.counts,
            "measure_seconds": measurer.seconds,
            "seconds_per_measurement": measurer.seconds / measurements if measurements else 0.0,
        },
        "wall_seconds": wall,
        "collection": {"prompts_collected": states.collected_prompts, **states.timings},
    }


def make_files(
    folder: Path,
    variants: Sequence[Variant],
    solved: Mapping[str, Mapping[str, Mapping[int, BlockDirection]]],
    axes: Sequence[str],
    rendered: Mapping[str, Sequence[str]],
    backend: Any,
    args: argparse.Namespace,
    *,
    n_layer: int,
    generator_runs: dict[str, Any],
) -> tuple[
    dict[str, dict[str, Recipe]],
    dict[str, dict[str, dict[str, Any]]],
    dict[str, dict[str, list[int]]],
    dict[str, dict[str, float]],
]:
    """Every variant's files per axis, how they are applied, their blocks and the scale each
    search starts at (the default's mean pole norm over the variant's: about the same size)."""
    from cvector_generator import align_signs, run_generator

    model_hint = Path(args.model).stem
    recipes: dict[str, dict[str, Recipe]] = {}
    files: dict[str, dict[str, dict[str, Any]]] = {}
    blocks: dict[str, dict[str, list[int]]] = {}
    for variant in variants:
        recipes[variant.name], files[variant.name], blocks[variant.name] = {}, {}, {}
        for axis in axes:
            if not variant.solved:
                continue
            vectors = variant_vectors(variant, solved[variant.name][axis], n_layer)
            recipe = write_solved_files(folder, variant, axis, vectors, model_hint=model_hint)
            recipes[variant.name][axis] = recipe
            files[variant.name][axis] = {
                role: vector_description(vectors[role])
                for role in ROLES
                if role != "debias" or variant.debias
            }
            blocks[variant.name][axis] = sorted(vectors["positive"])
    generators = sorted({v.generator for v in variants if v.generator})
    if "pca" in generators and any(v.align for v in variants):
        generators = sorted({*generators, "mean"})
    bos_text = _bos_text(backend)
    made: dict[tuple[str, str], Any] = {}
    for axis in axes:
        for method in generators:
            print(f"  llama-cvector-generator --method {method}, axis {axis} ...", flush=True)
            done = run_generator(
                Path(args.model),
                rendered[f"{axis}/positive"],
                rendered[f"{axis}/negative"],
                folder,
                method=method,
                n_layer=n_layer,
                n_embd=backend.n_embd,
                threads=args.threads,
                stem=f"llama_cpp-{axis}",
                bos_text=bos_text,
                timeout=args.generator_timeout,
                pca_iterations=args.pca_iterations,
            )
            made[(axis, method)] = done
            generator_runs[f"{axis}/{method}"] = {
                "arguments": done.arguments,
                "seconds": done.seconds,
                "pairs": len(rendered[f"{axis}/positive"]),
                "bos_stripped": bool(bos_text),
            }
    for variant in variants:
        if variant.solved:
            continue
        for axis in axes:
            assert variant.generator is not None
            done = made[(axis, variant.generator)]
            directions = dict(done.vector.directions)
            path = done.path
            if variant.align:
                directions, flipped = align_signs(
                    directions, made[(axis, "mean")].vector.directions
                )
                path = folder / f"llama_cpp-{axis}.pca-aligned.gguf"
                ControlVector(directions, done.vector.model_hint).to_gguf(path)
                generator_runs[f"{axis}/pca"]["flipped_against_mean"] = flipped
            recipes[variant.name][axis] = Recipe(path, path, None, signed=True)
            files[variant.name][axis] = {"signed": vector_description(directions)}
            if variant.generator == "pca":
                files[variant.name][axis]["_cosine_to_mean"] = (
                    _cosines(directions, made[(axis, "mean")].vector.directions)
                    if (axis, "mean") in made
                    else None
                )
            blocks[variant.name][axis] = sorted(directions)
    starts = start_scales(files, axes)
    return recipes, files, blocks, starts


def _cosines(
    vectors: Mapping[int, np.ndarray], reference: Mapping[int, np.ndarray]
) -> dict[str, float]:
    out = {}
    for block, vector in sorted(vectors.items()):
        other = np.asarray(reference[block], np.float64)
        value = np.asarray(vector, np.float64)
        out[str(block)] = float(value @ other / (np.linalg.norm(value) * np.linalg.norm(other)))
    return out


def _bos_text(backend: Any) -> str | None:
    """The BOS token's text when llama.cpp adds BOS itself (cvector-generator then adds it to
    every prompt line), else None."""
    model = backend.model
    llama = model.llama
    if not llama.llama_vocab_get_add_bos(model.vocab):
        return None
    token = int(llama.llama_vocab_bos(model.vocab))
    if token < 0:
        return None
    return str(model.piece(token, special=True).decode("utf-8", "replace")) or None


def start_scales(
    files: Mapping[str, Mapping[str, Mapping[str, Any]]], axes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per variant and axis, the |scale| its search starts at: the default's mean pole-vector
    norm over this variant's (1 for the default; about 1 for its levers; the default's norm for
    a unit-norm file)."""
    out: dict[str, dict[str, float]] = {}
    for name, per_axis in files.items():
        out[name] = {}
        for axis in axes:
            if axis not in per_axis:
                continue
            default = files[DEFAULT_VARIANT][axis]["positive"]["norms"]
            entry = per_axis[axis]
            own = (entry.get("positive") or entry["signed"])["norms"]
            ratio = float(np.mean(default)) / float(np.mean(own)) if np.mean(own) > 0 else 1.0
            out[name][axis] = float(f"{ratio:.3g}")
    return out


def measure_all(
    measurer: Measurer,
    variants: Sequence[Variant],
    axes: Sequence[str],
    recipes: Mapping[str, Mapping[str, Recipe]],
    blocks: Mapping[str, Mapping[str, list[int]]],
    starts: Mapping[str, Mapping[str, float]],
    unsteered: Mapping[str, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, dict[str, AxisResult]]:
    total = len(variants) * len(axes)
    clock = time.perf_counter()
    results: dict[str, dict[str, AxisResult]] = {}
    done = 0
    for variant in variants:
        results[variant.name] = {}
        for axis in axes:
            result = measure_variant_axis(
                measurer,
                recipes[variant.name][axis],
                axis,
                unsteered=unsteered[axis],
                start=starts[variant.name][axis],
                blocks=blocks[variant.name][axis],
                args=args,
            )
            results[variant.name][axis] = result
            done += 1
            spent = time.perf_counter() - clock
            print(
                f"  {done}/{total} {variant.name} / {axis}: s− {result.poles['negative'].matched:.3g}"
                f", s+ {result.poles['positive'].matched:.3g}"
                f"{'' if result.reached else ' (target not reached)'}; "
                f"{spent / 60:.1f} min, about {spent / done * (total - done) / 60:.1f} min left",
                flush=True,
            )
    return results


def summarise(
    results: Mapping[str, Mapping[str, AxisResult]],
    variants: Sequence[Variant],
    axes: Sequence[str],
    anchors: Sequence[str],
    halves: tuple[list[int], list[int]],
) -> dict[str, dict[str, Any]]:
    """Per axis: every variant's figures and ratio, the best anchor, whether it steers, and
    the selection on the split."""
    candidates = [v.name for v in variants if not v.anchor]
    out: dict[str, dict[str, Any]] = {}
    for axis in axes:
        figures = {
            name: figure_summary(per_axis[axis], halves) for name, per_axis in results.items()
        }
        anchor = add_ratios(figures, anchors)
        out[axis] = {
            "figures": figures,
            "blocks": {name: per_axis[axis].blocks for name, per_axis in results.items()},
            "best_anchor": anchor,
            "steers": axis_steers(figures, [DEFAULT_VARIANT, *([anchor] if anchor else [])]),
            "selection": select_on_split(figures, candidates, anchors, DEFAULT_VARIANT),
        }
    return out


def raw_result(result: AxisResult) -> dict[str, Any]:
    return {
        "blocks": result.blocks,
        "start": result.start,
        "zero_kl": result.zero_kl,
        "poles": {
            pole: {
                "points": [[p.scale, p.kl] for p in sorted(search.points, key=lambda p: p.scale)],
                "lower": [search.lower.scale, search.lower.kl],
                "upper": None if search.upper is None else [search.upper.scale, search.upper.kl],
                "matched": search.matched,
                "reached": search.reached,
                "matched_propensity": result.matched_propensity[pole].tolist(),
                "matched_kl": result.matched_kl.get(pole),
            }
            for pole, search in result.poles.items()
        },
        "propensity": {f"{s:+.6g}": v.tolist() for s, v in sorted(result.propensity.items())},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except CvgenError as error:
        print(f"compare_methods: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    text = render_report(report)
    print()
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
        print(f"tables: {args.markdown}")
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
