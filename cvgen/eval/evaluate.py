"""`cvgen eval`: measure what each axis of a pack does, on held-out prompts, at a sweep of
scales, and calibrate a safe scale per pole.

For every axis and every scale s of the sweep, the axis is applied as `cvgen commands` applies
it (the debias file at 1 plus the pole file at |s|; s = 0 is the debias file alone), and:

- **propensity** (no generation): for each held-out prompt, the mean per-token log-probability
  of short positive-pole continuations minus negative-pole ones (`eval/probes/<axis>.json`).
  Its least-squares slope against s, with a bootstrap interval over prompts and the fraction
  of prompts whose own slope has the wrong sign;
- **generated text** (greedy, fixed maximum length): the axis's text statistics
  (those its axis file names in its `evaluation` field) and their Spearman correlation with s;
- **damage**: the mean per-token KL divergence KL(unsteered || steered) of the next-token
  distributions along neutral factual replies (`eval/neutral.json`), and the repeated-4-gram
  rate of the generations;
- **controls**: the debias file alone (s = 0), a random direction with the positive file's
  per-block norms (its slope should be near zero), and the negated positive vector (its slope
  should be the axis's, reversed).

The safe scale of each pole is the largest |s| whose KL stays under the budget and whose
repetition rate stays near the unsteered one (`cvgen.eval.calibration.calibrate_safe_scale`), judged on
the sweep plus the calibration scales beyond it (KL and generations only).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvgen.common.messages import plural
from cvgen.eval.backend import Backend, Scored, Steering
from cvgen.eval.controls import AxisFiles, axis_files
from cvgen.eval.inputs import EvalInputs, axis_statistics, prepare_inputs
from cvgen.eval.measurement import Measurement, measure, neutral_scores, propensities
from cvgen.eval.settings import EvalSettings
from cvgen.pack.records import PackManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One steering configuration to measure."""

    axis: str
    kind: str  # "axis", "random", "negated"
    scale: float
    probes: bool
    kl: bool
    generate: bool

    def cost(self, unit: Mapping[str, float], inputs: EvalInputs) -> float:
        """Estimated seconds, from the per-item costs measured on the unsteered run."""
        seconds = unit["start"]
        if self.probes:
            seconds += unit["probe"] * len(inputs.prompt_ids) * 2 * len(inputs.probe_ids[self.axis])
        if self.kl:
            seconds += unit["neutral"] * len(inputs.neutral)
        if self.generate:
            seconds += unit["generate"] * len(inputs.prompt_ids)
        return seconds


def plan_jobs(axes: Sequence[str], inputs: EvalInputs, settings: EvalSettings) -> list[Job]:
    """Every configuration: the axis at each scale (all metrics) and at each calibration scale
    on both poles (KL and generations, for the safe scale), and with controls the random
    direction at each control scale (propensity and KL) and the negated vector at each control
    scale (propensity); the controls share the axis's scale-0 run (the debias file alone)."""
    jobs = []
    for axis in axes:
        has_probes = bool(inputs.probe_ids[axis])
        for scale in settings.scales:
            jobs.append(Job(axis, "axis", scale, has_probes, True, True))
        for magnitude in settings.calibration_scales:
            for scale in (-magnitude, magnitude):
                jobs.append(Job(axis, "axis", scale, False, True, True))
        if settings.controls:
            for scale in settings.control_scales:
                jobs.append(Job(axis, "random", scale, has_probes, True, False))
            if has_probes:
                for scale in settings.control_scales:
                    jobs.append(Job(axis, "negated", scale, True, False, False))
    return jobs


@dataclass
class RawResults:
    """Every measurement of a run, before summarising."""

    unsteered: Measurement
    unsteered_propensity: dict[str, np.ndarray]
    reference: list[Scored]  # the unsteered model's neutral-text distributions
    measured: dict[tuple[str, str, float], Measurement] = field(default_factory=dict)
    seconds: float = 0.0
    estimate_seconds: float = 0.0


def run_evaluation(
    backend: Backend,
    pack: Path,
    manifest: PackManifest,
    axes: Sequence[str],
    settings: EvalSettings,
    *,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    probe_files: Mapping[str, Path] | None = None,
) -> tuple[EvalInputs, RawResults]:
    """Measure the unsteered model, then every planned configuration (see `plan_jobs`)."""
    say = announce or (lambda message: log.info("%s", message))
    started = time.perf_counter()
    classes = {axis: manifest.axes[axis].classes for axis in axes}
    statistics = {axis: axis_statistics(axis, manifest.axes[axis]) for axis in axes}
    inputs = prepare_inputs(
        backend, classes, settings, probe_files=probe_files, statistics=statistics
    )
    with tempfile.TemporaryDirectory(prefix="cvgen-eval-") as scratch:
        controls_dir = Path(scratch) if settings.controls else None
        files = {
            axis: axis_files(
                pack, manifest, axis, controls_dir=controls_dir, seed=settings.seed + index
            )
            for index, axis in enumerate(axes)
        }
        jobs = plan_jobs(axes, inputs, settings)
        say(
            f"eval: {plural(len(axes), 'axis', 'axes')}, {plural(len(settings.scales), 'scale')}, "
            f"{plural(len(inputs.prompt_ids), 'prompt')}, "
            f"{plural(len(inputs.neutral), 'neutral text')}; "
            f"{plural(len(jobs) + 1, 'configuration')} on {backend.name}"
        )
        raw, unit = _measure_unsteered(backend, inputs, settings)
        raw.estimate_seconds = sum(job.cost(unit, inputs) for job in jobs)
        say(
            f"eval: unsteered model measured; {plural(len(jobs), 'steered configuration')} will "
            f"take {_duration(raw.estimate_seconds)}"
        )
        _measure_jobs(backend, jobs, files, inputs, settings, raw, progress=progress)
    raw.seconds = time.perf_counter() - started
    return inputs, raw


def _measure_jobs(
    backend: Backend,
    jobs: Sequence[Job],
    files: Mapping[str, AxisFiles],
    inputs: EvalInputs,
    settings: EvalSettings,
    raw: RawResults,
    *,
    progress: bool,
) -> None:
    """Open a session per job and store its `Measurement` in `raw.measured`, with a bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="eval", unit="config", disable=not progress)
    try:
        for job in jobs:
            bar.set_postfix_str(f"{job.axis} {job.kind} {job.scale:+g}")
            steering = files[job.axis].steering(job.kind, job.scale)
            with backend.session(steering) as session:
                raw.measured[(job.axis, job.kind, job.scale)] = measure(
                    session,
                    inputs,
                    settings,
                    probe_pairs=inputs.probe_ids[job.axis] if job.probes else (),
                    reference=raw.reference if job.kl else None,
                    generate=job.generate,
                )
            bar.update(1)
    finally:
        bar.close()


def _measure_unsteered(
    backend: Backend, inputs: EvalInputs, settings: EvalSettings
) -> tuple[RawResults, dict[str, float]]:
    """The unsteered model: reference distributions, generations and each axis's propensity,
    timed item by item so the rest of the run can be estimated."""
    clock = time.perf_counter()
    with backend.session(Steering("unsteered")) as session:
        unit = {"start": time.perf_counter() - clock}
        clock = time.perf_counter()
        reference = neutral_scores(session, inputs)
        unit["neutral"] = (time.perf_counter() - clock) / max(1, len(inputs.neutral))
        clock = time.perf_counter()
        texts = session.generate(list(inputs.prompt_ids), max_tokens=settings.max_tokens)
        unit["generate"] = (time.perf_counter() - clock) / max(1, len(inputs.prompt_ids))
        propensity: dict[str, np.ndarray] = {}
        items = 0
        clock = time.perf_counter()
        for axis, pairs in inputs.probe_ids.items():
            if pairs:
                propensity[axis] = propensities(session, inputs.prompt_ids, pairs)
                items += len(inputs.prompt_ids) * 2 * len(pairs)
        unit["probe"] = (time.perf_counter() - clock) / max(1, items)
    return RawResults(Measurement(texts=texts), propensity, reference), unit


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.1f} min"
