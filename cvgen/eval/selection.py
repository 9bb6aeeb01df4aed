"""`cvgen generate --select`: each axis's method and block band picked from the eval, on one
half of the held-out prompts, and reported on the other half.

The candidates of an axis are solved from the run's own stored states: its own method (`auto`)
and the other of cross-covariance and mean-diff, on every block that got a direction, then the
better of the two (on half A) on three bands of those blocks (first half, middle third, last
half). Each candidate's files are measured at a matched KL (`cvgen.eval.matched`): per pole
the |scale| where the mean KL(unsteered || steered) on neutral text reaches the target, and
there the propensity of the axis's probes, per prompt. The figure is p(+s+) - p(-s-). The
candidate with the largest figure on half A (even prompts) among those that reached the target
on both poles is picked; half B (odd prompts) did not take part in the choice, so its figure is
the fair one. The pack records every candidate's figures on both halves.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.eval.backend import Backend, Steering
from cvgen.eval.inputs import axis_probes, prepare_inputs
from cvgen.eval.matched import (
    BANDS,
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
from cvgen.generate.choices import AxisChoice, Chooser, Solver
from cvgen.generate.prepare import PreparedRun
from cvgen.pack.names import ROLES
from cvgen.solve.direction import BlockDirection
from cvgen.solve.methods import DEFAULT_METHOD, axis_method
from cvgen.vectors.gguf_file import write_control_vector

log = logging.getLogger(__name__)

ALL_BLOCKS = "all blocks"
METHODS = (DEFAULT_METHOD, "mean-diff")  # the two the selection tries (the axis's own first)


class SelectError(CvgenError, ValueError):
    """`--select` cannot run on these inputs; the message names the axis or the setting."""


@dataclass(frozen=True)
class SelectSettings:
    """The held-out data and the search of `--select`: the first `prompts` held-out prompts
    (halves A and B), `probe_pairs` probe pairs scored on their first `probe_tokens` tokens,
    `neutral_texts` neutral replies of `kl_tokens` tokens for the KL, and the matched search."""

    prompts: int = 12
    probe_pairs: int = 3
    probe_tokens: int = 16
    neutral_texts: int = 4
    kl_tokens: int = 48
    search: MatchedSearch = field(default_factory=MatchedSearch)

    def eval_settings(self) -> EvalSettings:
        return EvalSettings(
            prompts=self.prompts,
            probe_pairs=self.probe_pairs,
            probe_tokens=self.probe_tokens,
            neutral_texts=self.neutral_texts,
            kl_tokens=self.kl_tokens,
            controls=False,
        )

    def to_dict(self) -> dict[str, Any]:
        search = self.search
        return {
            "prompts": self.prompts,
            "probe_pairs": self.probe_pairs,
            "probe_tokens": self.probe_tokens,
            "neutral_texts": self.neutral_texts,
            "kl_tokens": self.kl_tokens,
            "kl_target": search.kl_target,
            "kl_tolerance": search.kl_tolerance,
            "search_steps": search.search_steps,
            "max_factor": search.max_factor,
        }


def check_select_axes(axes: Mapping[str, tuple[str, str]]) -> None:
    """Refuse, before any model work, an axis without probes: there is nothing to select by."""
    for name, classes in axes.items():
        if axis_probes(name, classes) is None:
            raise SelectError(
                f"--select: axis '{name}' (classes {', '.join(classes)}) has no probes file "
                "(eval/probes/<axis>.json with the same classes), so no propensity to select by"
            )


def _finite(value: float) -> float | None:
    """A half-width for JSON: None where one prompt gives none (NaN)."""
    return value if math.isfinite(value) else None


def candidate_name(method: str, which: str) -> str:
    return f"{method}, {which}"


def select_axes(
    backend: Backend,
    axes: Mapping[str, tuple[str, str]],
    own_methods: Mapping[str, str],
    solve: Solver,
    settings: SelectSettings,
    *,
    model_hint: str,
    announce: Callable[[str], None] | None = None,
) -> dict[str, AxisChoice]:
    """Pick every axis's method and band on `backend` (the run's model), see the module
    docstring. `own_methods`: each axis's method under `auto`; `solve(axis, method)`: the
    blocks that method solves from the run's states."""
    say = announce or (lambda message: log.info("%s", message))
    inputs = prepare_inputs(backend, dict(axes), settings.eval_settings())
    halves = split_halves(len(inputs.prompt_ids))
    with backend.session(Steering("unsteered")) as session:
        reference = neutral_scores(session, inputs)
        unsteered = {
            axis: propensities(session, inputs.prompt_ids, inputs.probe_ids[axis]) for axis in axes
        }
    measurer = Measurer(backend, inputs, reference)
    choices = {}
    with tempfile.TemporaryDirectory(prefix="cvgen-select-") as scratch:
        for axis in axes:
            clock = time.perf_counter()
            trial = _AxisTrial(
                axis, measurer, unsteered[axis], settings.search, halves, Path(scratch), model_hint
            )
            choices[axis] = trial.run(own_methods[axis], solve)
            record = choices[axis].record
            record["seconds"] = round(time.perf_counter() - clock, 1)
            say(_summary_line(axis, record))
    for choice in choices.values():
        choice.record["settings"] = settings.to_dict()
        choice.record["halves"] = {"a": halves[0], "b": halves[1]}
    return choices


def _summary_line(axis: str, record: Mapping[str, Any]) -> str:
    picked = record["candidates"][record["picked"]]
    default = record["candidates"][record["default"]]
    return (
        f"select: {axis}: {record['picked']} (half A {picked['a']:.3f}, half B "
        f"{picked['b']:.3f}; {record['default']}: A {default['a']:.3f}, B {default['b']:.3f}) "
        f"in {record['seconds']:.0f} s"
    )


@dataclass
class _AxisTrial:
    """The candidates of one axis, measured one after the other."""

    axis: str
    measurer: Measurer
    unsteered: Any
    search: MatchedSearch
    halves: tuple[list[int], list[int]]
    folder: Path
    model_hint: str
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, own: str, solve: Solver) -> AxisChoice:
        methods = [own, *(m for m in METHODS if m != own)]
        solved = {method: solve(self.axis, method) for method in methods}
        default = candidate_name(own, ALL_BLOCKS)
        for method in methods:
            if solved[method]:
                self._measure(method, ALL_BLOCKS, solved[method])
        best = self._best([candidate_name(m, ALL_BLOCKS) for m in methods]) or default
        method = self.figures[best]["method"] if best in self.figures else own
        for which in BANDS:
            blocks = sorted(solved[method])
            if len(blocks) >= 2:
                self._measure(method, which, {b: solved[method][b] for b in band(blocks, which)})
        if not self.figures:
            raise SelectError(f"--select: axis '{self.axis}': no method solved a block")
        # none reached the target on both poles: the default, or the first that was measured
        fallback = default if default in self.figures else next(iter(self.figures))
        picked = self._best(list(self.figures)) or fallback
        entry = self.figures[picked]
        record = {
            "picked": picked,
            "method": entry["method"],
            "blocks": entry["blocks"],
            "default": default if default in self.figures else picked,
            "candidates": self.figures,
        }
        return AxisChoice(entry["method"], tuple(entry["blocks"]), record)

    def _best(self, names: Sequence[str]) -> str | None:
        reached = [n for n in names if n in self.figures and self.figures[n]["reached"]]
        return max(reached, key=lambda n: self.figures[n]["a"]) if reached else None

    def _measure(self, method: str, which: str, solved: Mapping[int, BlockDirection]) -> None:
        name = candidate_name(method, which)
        stem = f"{self.axis}-{method}-{which}".replace(" ", "_").replace(",", "")
        paths = {}
        for role in ROLES:
            paths[role] = self.folder / f"{stem}__{role}.gguf"
            write_control_vector(
                paths[role],
                {block: getattr(direction, role) for block, direction in solved.items()},
                model_hint=self.model_hint,
            )
        recipe = Recipe(paths["negative"], paths["positive"], paths["debias"])
        blocks = sorted(solved)
        result = measure_matched(
            self.measurer,
            recipe,
            self.axis,
            unsteered=self.unsteered,
            start=1.0,
            blocks=blocks,
            search=self.search,
        )
        summary = figure_summary(result, self.halves)
        self.figures[name] = {
            "method": method,
            "band": which,
            "blocks": blocks,
            "a": summary["effect_a"],
            "ci95_a": _finite(summary["ci95_a"]),
            "b": summary["effect_b"],
            "ci95_b": _finite(summary["ci95_b"]),
            "reached": summary["reached"],
            "matched": summary["matched"],
            "kl_at_matched": summary["kl_at_matched"],
        }


def chooser(settings: SelectSettings, *, announce: Callable[[str], None] | None = None) -> Chooser:
    """The `choose` of `cvgen.generate.pipeline.generate_pack` for `--select`: it opens the
    run's own model (the llama.cpp engine for a .gguf when its binding is installed, else
    transformers) after the collection and picks every axis's method and blocks."""

    def choose(run: PreparedRun, solve: Solver) -> dict[str, AxisChoice]:
        from cvgen.eval.pack_eval import ModelChoice, choose_backend, default_model, open_backend

        options = run.settings
        name = choose_backend("auto", options.model)
        choice = ModelChoice(
            device=options.device,
            trust_remote_code=options.trust_remote_code,
            threads=options.threads or None,
            gpu_layers=options.gpu_layers,
        )
        model = default_model(run.manifest, name)
        backend = open_backend(name, model, settings=settings.eval_settings(), choice=choice)
        try:
            return select_axes(
                backend,
                {axis.name: axis.classes for axis in run.inputs.axes},
                {axis.name: axis_method(options.method, axis.method) for axis in run.inputs.axes},
                solve,
                settings,
                model_hint=run.manifest.model.hint or "",
                announce=announce,
            )
        finally:
            backend.close()

    return choose
