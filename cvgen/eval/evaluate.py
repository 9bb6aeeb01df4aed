"""`cvgen eval`: measure what each axis of a pack does, on held-out prompts, at a sweep of
scales, and calibrate a safe scale per pole.

For every axis and every scale s of the sweep, the axis is applied as `cvgen commands` applies
it (the debias file at 1 plus the pole file at |s|; s = 0 is the debias file alone), and:

- **propensity** (no generation): for each held-out prompt, the mean per-token log-probability
  of short positive-pole continuations minus negative-pole ones (`eval/probes/<axis>.json`).
  Its least-squares slope against s, with a bootstrap interval over prompts and the fraction
  of prompts whose own slope has the wrong sign;
- **generated text** (greedy, fixed maximum length): the axis's text statistics
  (`cvgen.eval.metrics.AXIS_STATISTICS`) and their Spearman correlation with s;
- **damage**: the mean per-token KL divergence KL(unsteered || steered) of the next-token
  distributions along neutral factual replies (`eval/neutral.json`), and the repeated-4-gram
  rate of the generations;
- **controls**: the debias file alone (s = 0), a random direction with the positive file's
  per-block norms (its slope should be near zero), and the negated positive vector (its slope
  should be the axis's, reversed).

The safe scale of each pole is the largest |s| whose KL stays under the budget and whose
repetition rate stays near the unsteered one (`cvgen.eval.metrics.calibrate_safe_scale`), judged on
the sweep plus the calibration scales beyond it (KL and generations only).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.common.messages import plural
from cvgen.data.eval_data import (
    Probes,
    find_probes,
    load_eval_prompts,
    load_neutral_texts,
    load_probes,
)
from cvgen.eval.backends import Backend, Scored, Session, Steering
from cvgen.generate.settings import check_seed
from cvgen.pack.records import PackManifest
from cvgen.vectors.control_vector import ControlVector

log = logging.getLogger(__name__)

DEFAULT_SCALES = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
# The KL budget (nats per token, unsteered || steered, on neutral factual text); see the
# README's "Evaluating a pack" section for the measurements behind it.
DEFAULT_KL_BUDGET = 0.1
DEFAULT_REPETITION_TOLERANCE = 0.05


class EvalError(CvgenError, ValueError):
    """Bad evaluation settings or a pack that cannot be evaluated; the message names it."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides an evaluation's numbers (recorded in eval.json)."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    prompts: int = 10
    probe_pairs: int = 3  # 0: every pair in the axis's probes file
    probe_tokens: int = 16  # 0: whole probes
    max_tokens: int = 64
    neutral_texts: int = 8
    kl_tokens: int = 48
    kl_budget: float = DEFAULT_KL_BUDGET
    repetition_tolerance: float = DEFAULT_REPETITION_TOLERANCE
    controls: bool = True
    control_scales: tuple[float, ...] = (-1.0, 1.0)
    calibration_scales: tuple[float, ...] = (2.0, 3.0)
    seed: int = 0
    bootstrap: int = 2000
    top_k: int = 256

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in self.scales)
        object.__setattr__(self, "scales", scales)
        if any(not math.isfinite(s) for s in scales):
            raise EvalError(f"--scales: {list(scales)} holds a value that is not finite")
        if list(scales) != sorted(set(scales)):
            raise EvalError(f"--scales: {list(scales)} must be ascending without repeats")
        if 0.0 not in scales or not any(s < 0 for s in scales) or not any(s > 0 for s in scales):
            raise EvalError(
                f"--scales: {list(scales)} must hold 0 and at least one scale of each sign"
            )
        for name in ("prompts", "max_tokens", "neutral_texts", "kl_tokens", "bootstrap", "top_k"):
            if getattr(self, name) < 1:
                raise EvalError(f"--{name.replace('_', '-')}: {getattr(self, name)} must be >= 1")
        check_seed(self.seed, option="--seed")
        for name in ("probe_pairs", "probe_tokens"):
            if getattr(self, name) < 0:
                raise EvalError(f"--{name.replace('_', '-')}: {getattr(self, name)} must be >= 0")
        calibration = tuple(float(s) for s in self.calibration_scales)
        object.__setattr__(self, "calibration_scales", calibration)
        if list(calibration) != sorted(set(calibration)) or not all(
            math.isfinite(s) and s > max(scales) and -s < min(scales) for s in calibration
        ):
            raise EvalError(
                f"--calibration-scales: {list(calibration)} must be ascending and beyond the "
                f"sweep's largest |scale| on both sides"
            )
        controls = tuple(float(s) for s in self.control_scales)
        object.__setattr__(self, "control_scales", controls)
        if (
            not controls
            or list(controls) != sorted(set(controls))
            or not all(math.isfinite(s) and s != 0 for s in controls)
        ):
            raise EvalError(
                f"--control-scales: {list(controls)} must be non-zero, finite and ascending"
            )
        if not (math.isfinite(self.kl_budget) and self.kl_budget > 0):
            raise EvalError(f"--kl-budget: {self.kl_budget} must be a positive number")
        if not (math.isfinite(self.repetition_tolerance) and self.repetition_tolerance >= 0):
            raise EvalError(f"--repetition-tolerance: {self.repetition_tolerance} must be >= 0")

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> EvalSettings:
        """Settings from CLI option values (`--scales` as comma-separated text)."""
        known = {f.name for f in fields(cls)}
        chosen = {k: v for k, v in values.items() if k in known and v is not None}
        for name in ("scales", "control_scales", "calibration_scales"):
            if isinstance(chosen.get(name), str):
                text = chosen[name].strip()
                chosen[name] = parse_scales(text, option=name) if text else ()
        return cls(**chosen)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["scales"] = list(self.scales)
        return values


SETTING_HELP = {
    "scales": "Comma-separated scales of the sweep (must hold 0 and both signs).",
    "prompts": "Held-out prompts used (from eval/prompts.txt).",
    "probe_pairs": "Probe pairs per axis for the propensity (0: all in the axis's probes file).",
    "probe_tokens": "Tokens of each probe text that are scored (0: the whole text).",
    "control_scales": "Comma-separated scales of the random and negated controls.",
    "calibration_scales": "Comma-separated |scales| beyond the sweep, run on both poles for the "
    "safe scale only (KL and repetition); empty: none.",
    "max_tokens": "Tokens generated (greedy) per prompt and scale.",
    "neutral_texts": "Neutral texts used for the KL divergence (from eval/neutral.json).",
    "kl_tokens": "Tokens of each neutral reply at which the KL divergence is measured.",
    "kl_budget": "KL budget (nats per token) for the safe scale; see the README.",
    "repetition_tolerance": "How far the repeated-4-gram rate may rise above the unsteered one "
    "within the safe scale.",
    "controls": "Also run the controls (random direction, negated vector).",
    "seed": "Seed of the random control and the bootstrap.",
    "bootstrap": "Bootstrap resamples for the intervals.",
    "top_k": "llama.cpp backend: top-k log-probabilities per position for the KL divergence.",
}


def parse_scales(text: str, *, option: str = "scales") -> tuple[float, ...]:
    """`-1.5,-1,0,1,1.5` -> the scales; a bad item names itself and the option."""
    scales = []
    for item in text.split(","):
        try:
            scales.append(float(item.strip()))
        except ValueError:
            flag = "--" + option.replace("_", "-")
            raise EvalError(f"{flag}: '{item.strip()}' is not a number (in '{text}')") from None
    return tuple(scales)


@dataclass(frozen=True)
class EvalInputs:
    """The held-out data, tokenised once per backend."""

    prompts: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    neutral: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (prompt ids, reply ids)
    probes: Mapping[str, Probes | None]
    probe_ids: Mapping[str, tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]]  # (neg, pos)


def axis_probes(
    axis: str, classes: tuple[str, str], probe_file: Path | None = None
) -> Probes | None:
    """The probes of `axis`: from `probe_file` (its classes must be the pack's), else the shipped
    ones when their classes match, else None (propensity is then not measured)."""
    if probe_file is None:
        return find_probes(axis, classes)
    probes = load_probes(axis, probe_file)
    if probes.classes != classes:
        raise EvalError(
            f"{probe_file}: field 'classes' is {list(probes.classes)}, but axis '{axis}' of the "
            f"pack has classes {list(classes)}"
        )
    return probes


def prepare_inputs(
    backend: Backend,
    axes: Mapping[str, tuple[str, str]],
    settings: EvalSettings,
    *,
    probe_files: Mapping[str, Path] | None = None,
) -> EvalInputs:
    """Load and tokenise the held-out prompts, the neutral texts and each axis's probes."""
    prompts = load_eval_prompts()[: settings.prompts]
    neutral = []
    for text in load_neutral_texts()[: settings.neutral_texts]:
        reply = backend.continuation_ids(text.reply)[: settings.kl_tokens]
        neutral.append((tuple(backend.prompt_ids(text.request)), tuple(reply)))
    probes: dict[str, Probes | None] = {}
    probe_ids: dict[str, tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]] = {}
    for axis, classes in axes.items():
        found = axis_probes(axis, classes, (probe_files or {}).get(axis))
        if found is None:
            log.warning(
                "axis '%s': no shipped probes for classes %s; propensity is not measured",
                axis,
                list(classes),
            )
        probes[axis] = found
        pairs = found.pairs if found is not None else ()
        if settings.probe_pairs:
            pairs = pairs[: settings.probe_pairs]
        limit = settings.probe_tokens or None
        probe_ids[axis] = tuple(
            (
                tuple(backend.continuation_ids(neg)[:limit]),
                tuple(backend.continuation_ids(pos)[:limit]),
            )
            for neg, pos in pairs
        )
    return EvalInputs(
        prompts=tuple(prompts),
        prompt_ids=tuple(tuple(backend.prompt_ids(p)) for p in prompts),
        neutral=tuple(neutral),
        probes=probes,
        probe_ids=probe_ids,
    )


# --- one steering configuration ----------------------------------------------------------------


@dataclass
class Measurement:
    """What one steering configuration did: per-prompt propensity (prompts,), per-position
    KL against the unsteered model, and the greedy generations."""

    propensity: np.ndarray | None = None
    kl: np.ndarray | None = None
    texts: list[str] | None = None
    seconds: float = 0.0


def propensities(
    session: Session,
    prompt_ids: Sequence[Sequence[int]],
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> np.ndarray:
    """(prompts,): per prompt, the mean over probe pairs of mean log p(positive tokens) minus
    mean log p(negative tokens)."""
    items = [(prompt, text) for prompt in prompt_ids for pair in pairs for text in pair]
    scored = session.score(items)
    means = np.array([float(np.mean(s.token_logprobs)) for s in scored], dtype=np.float64)
    per_pair = means.reshape(len(prompt_ids), len(pairs), 2)
    return np.asarray((per_pair[:, :, 1] - per_pair[:, :, 0]).mean(axis=1), dtype=np.float64)


def neutral_scores(session: Session, inputs: EvalInputs) -> list[Scored]:
    """The next-token distributions along every neutral reply."""
    return session.score(list(inputs.neutral), distributions=True)


def kl_against(reference: Sequence[Scored], steered: Sequence[Scored]) -> np.ndarray:
    """Per-position KL(reference || steered), all neutral positions concatenated."""
    parts = []
    for ref, got in zip(reference, steered, strict=True):
        if ref.distributions is None or got.distributions is None:
            raise EvalError("neutral scores were taken without their distributions")
        parts.append(got.distributions.kl_from(ref.distributions))
    return np.concatenate(parts) if parts else np.zeros(0)


def measure(
    session: Session,
    inputs: EvalInputs,
    settings: EvalSettings,
    *,
    probe_pairs: Sequence[tuple[Sequence[int], Sequence[int]]] = (),
    reference: Sequence[Scored] | None = None,
    generate: bool = False,
) -> Measurement:
    """Measure one configuration: propensity when `probe_pairs` are given, KL when the
    unsteered `reference` scores are given, generations when `generate`."""
    started = time.perf_counter()
    result = Measurement()
    if probe_pairs:
        result.propensity = propensities(session, inputs.prompt_ids, probe_pairs)
    if reference is not None:
        result.kl = kl_against(reference, neutral_scores(session, inputs))
    if generate:
        result.texts = session.generate(list(inputs.prompt_ids), max_tokens=settings.max_tokens)
    result.seconds = time.perf_counter() - started
    return result


# --- control files ---------------------------------------------------------------------------


def random_directions(positive: Mapping[int, np.ndarray], *, seed: int) -> dict[int, np.ndarray]:
    """Per block, a random direction (Gaussian, seeded) with the positive vector's norm."""
    generator = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for block in sorted(positive):
        vector = np.asarray(positive[block], dtype=np.float64)
        draw = generator.standard_normal(vector.shape[0])
        scaled = draw / np.linalg.norm(draw) * np.linalg.norm(vector)
        out[block] = np.asarray(scaled, dtype=np.float32)
    return out


@dataclass(frozen=True)
class AxisFiles:
    """An axis's files, and the control files written for it (absent without controls)."""

    debias: Path
    negative: Path
    positive: Path
    random: Path | None = None
    negated: Path | None = None

    def steering(self, kind: str, scale: float) -> Steering:
        """The files of one configuration: kind "axis" (the pole file by the sign of `scale`,
        as `cvgen commands` chooses), "random" or "negated" (the control at `scale`)."""
        label = f"{self.positive.stem}-{kind}-{scale:+g}"
        if kind == "axis":
            if scale == 0:
                return Steering(label, ((self.debias, 1.0),))
            pole = self.positive if scale > 0 else self.negative
            return Steering(label, ((self.debias, 1.0), (pole, abs(scale))))
        control = {"random": self.random, "negated": self.negated}[kind]
        if control is None:
            raise EvalError(f"no {kind} control file was written")
        return Steering(label, ((self.debias, 1.0), (control, scale)))


def axis_files(
    pack: Path, manifest: PackManifest, axis: str, *, controls_dir: Path | None, seed: int
) -> AxisFiles:
    """The axis's pack files, plus its random and negated control files in `controls_dir`."""
    names = manifest.axes[axis].files
    files = {role: Path(pack) / names.of(role) for role in ("debias", "negative", "positive")}
    for role, path in files.items():
        if not path.is_file():
            raise EvalError(f"{pack}: axis '{axis}': {role} file {path.name} is missing")
    if controls_dir is None:
        return AxisFiles(files["debias"], files["negative"], files["positive"])
    positive = ControlVector.from_gguf(files["positive"])
    stem = files["positive"].stem
    random_path = controls_dir / f"{stem}__random-control.gguf"
    negated_path = controls_dir / f"{stem}__negated-control.gguf"
    random_vector = random_directions(positive.directions, seed=seed)
    control = ControlVector(random_vector, positive.model_hint, {"cvgen.role": "random-control"})
    control.to_gguf(random_path)
    replace(-positive, metadata={"cvgen.role": "negated-control"}).to_gguf(negated_path)
    return AxisFiles(
        files["debias"], files["negative"], files["positive"], random_path, negated_path
    )


# --- the whole run ---------------------------------------------------------------------------


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
    from tqdm.auto import tqdm

    say = announce or (lambda message: log.info("%s", message))
    started = time.perf_counter()
    classes = {axis: manifest.axes[axis].classes for axis in axes}
    inputs = prepare_inputs(backend, classes, settings, probe_files=probe_files)
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
    raw.seconds = time.perf_counter() - started
    return inputs, raw


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
