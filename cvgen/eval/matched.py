"""Effect at a matched damage: the |scale| toward each pole where the mean KL(unsteered ||
steered) on neutral text reaches a target is searched, and the propensity is read there. The
figure of a pair of pole files is p(+s+) - p(-s-), per prompt: the positive pole at its matched
scale minus the negative pole at its own. It is scale-free, so it compares files of any norm
(cvgen's, whose scale 1 is the class's mean projection, and unit-norm ones alike).

`cvgen generate --select` picks each axis's method and block band with it on one half of the
held-out prompts and reports the other half; `scripts/compare_methods.py` compares cvgen's
packs with the reference methods by it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.eval.backend import Backend, Scored, Steering
from cvgen.eval.inputs import EvalInputs
from cvgen.eval.measurement import kl_against, neutral_scores, propensities

POLES = (("negative", -1), ("positive", 1))
Z95 = 1.96
BANDS = ("first half", "middle third", "last half")


class MatchedError(CvgenError, ValueError):
    """A matched-KL search or figure that cannot be made; the message names the value."""


@dataclass(frozen=True)
class MatchedSearch:
    """How a pole's matched |scale| is searched: the KL target (nats/token), the relative
    tolerance at which the search stops, the KL measurements per pole at most, and the
    multiple of its start scale at which it gives up (target not reached)."""

    kl_target: float = 0.05
    kl_tolerance: float = 0.1
    search_steps: int = 7
    max_factor: float = 64.0


def band(blocks: Sequence[int], which: str) -> tuple[int, ...]:
    """A band of the default blocks: "first half", "middle third" or "last half"."""
    count = len(blocks)
    if which == "first half":
        chosen = blocks[: count // 2]
    elif which == "last half":
        chosen = blocks[count // 2 :]
    elif which == "middle third":
        chosen = blocks[count // 3 : count - count // 3]
    else:
        raise MatchedError(f"unknown band '{which}'")
    if not chosen:
        raise MatchedError(f"band '{which}' of blocks {list(blocks)} is empty")
    return tuple(chosen)


@dataclass(frozen=True)
class Recipe:
    """How a variant's files of one axis are applied at a signed scale s. Two pole files
    (cvgen): the debias file at 1 (when there is one) plus the pole file of s's sign at |s|;
    scale 0 is the debias file alone. One signed file (cvector-generator): that file at s."""

    negative: Path
    positive: Path
    debias: Path | None = None
    signed: bool = False

    def steering(self, scale: float) -> Steering:
        label = f"{self.positive.stem}@{scale:+.4g}"
        files: list[tuple[Path, float]] = []
        if self.debias is not None:
            files.append((self.debias, 1.0))
        if scale != 0:
            if self.signed:
                files.append((self.positive, float(scale)))
            else:
                files.append((self.positive if scale > 0 else self.negative, abs(float(scale))))
        return Steering(label, tuple(files))


@dataclass(frozen=True)
class KlPoint:
    scale: float  # |scale| toward the pole
    kl: float


@dataclass
class PoleSearch:
    """The |scales| tried toward one pole and their KL (scale 0 first), the two around the
    target (`lower` below it, `upper` at or above it; None when it was never reached) and the
    interpolated matched |scale| (the largest tried when never reached)."""

    points: list[KlPoint]
    lower: KlPoint
    upper: KlPoint | None
    matched: float

    @property
    def reached(self) -> bool:
        return self.upper is not None


def _excess(point: KlPoint, zero_kl: float) -> float:
    return point.kl - zero_kl


def matched_between(lower: KlPoint, upper: KlPoint, target: float, zero_kl: float) -> float:
    """The |scale| where the KL reaches `target` between two points around it. The KL above
    the scale-0 value is taken as a power of the scale (exact for KL = kl0 + c s^p) when both
    points are above scale 0 and above kl0; from scale 0, as the square of the scale (KL ~ s^2
    near 0); else linear in KL."""
    low, high = _excess(lower, zero_kl), _excess(upper, zero_kl)
    goal = target - zero_kl
    if lower.scale > 0 and low > 0 and high > low and goal > 0:
        power = math.log(high / low) / math.log(upper.scale / lower.scale)
        return float(lower.scale * (goal / low) ** (1.0 / power))
    if lower.scale == 0 and high > 0 and 0 < goal <= high:
        return float(upper.scale * math.sqrt(goal / high))
    if upper.kl == lower.kl:
        return upper.scale
    fraction = (target - lower.kl) / (upper.kl - lower.kl)
    return float(lower.scale + fraction * (upper.scale - lower.scale))


def next_scale(
    points: Sequence[KlPoint],
    target: float,
    zero_kl: float,
    *,
    max_scale: float,
    grow: tuple[float, float] = (1.25, 16.0),
) -> float:
    """The next |scale| to try. Below the target so far: grow from the largest point by the
    power law that the last two points give (a square law from one point: KL ~ s^2 near 0), 10%
    past it so that the next point likely brackets the target, within `grow`, at most
    `max_scale`. Bracketed: the power-law interpolation between the two points around the
    target, kept 10% (in log scale) inside them."""
    ordered = sorted(points, key=lambda p: p.scale)
    above = [p for p in ordered if p.kl >= target and p.scale > 0]
    goal = target - zero_kl
    if not above:
        top = ordered[-1]
        factor = grow[1]
        excess = _excess(top, zero_kl)
        if top.scale > 0 and excess > 0 and goal > 0:
            power = 2.0
            below = [p for p in ordered if 0 < p.scale < top.scale and _excess(p, zero_kl) > 0]
            if below:
                previous = below[-1]
                slope = math.log(excess / _excess(previous, zero_kl)) / math.log(
                    top.scale / previous.scale
                )
                if slope > 0.5:
                    power = min(slope, 4.0)
            factor = 1.1 * (goal / excess) ** (1.0 / power)
        factor = min(max(factor, grow[0]), grow[1])
        return float(min(top.scale * factor, max_scale))
    upper = above[0]
    lower = [p for p in ordered if p.scale < upper.scale][-1]
    guess = matched_between(lower, upper, target, zero_kl)
    if lower.scale > 0:
        low, high = math.log(lower.scale), math.log(upper.scale)
        margin = 0.1 * (high - low)
        return float(math.exp(min(max(math.log(guess), low + margin), high - margin)))
    margin = 0.1 * upper.scale
    return float(min(max(guess, margin), upper.scale - margin))


def search_pole(
    kl_at: Callable[[float], float],
    target: float,
    *,
    zero_kl: float,
    start: float,
    max_scale: float,
    steps: int,
    tolerance: float,
) -> PoleSearch:
    """Find the |scale| where `kl_at` (the mean KL at a |scale| toward the pole) reaches
    `target`, in at most `steps` evaluations: from `start`, grow until it is reached (or
    `max_scale` is), then refine between the two points around it until one of them is within
    `tolerance` (relative) of the target. `zero_kl`: the KL at scale 0 (the debias file alone,
    or 0). A target already reached at scale 0 gives a matched scale of 0."""
    if not (start > 0 and max_scale >= start and steps >= 1 and tolerance > 0):
        raise MatchedError(
            f"search: start {start}, max scale {max_scale}, steps {steps} and tolerance "
            f"{tolerance} must be positive, with max scale >= start"
        )
    zero = KlPoint(0.0, zero_kl)
    points = [zero]
    if zero_kl >= target:
        return PoleSearch(points, zero, zero, 0.0)
    scale = start
    for _ in range(steps):
        points.append(KlPoint(scale, float(kl_at(scale))))
        lower, upper = _bracket(points, target)
        if upper is not None and _close(lower, upper, target, tolerance):
            break
        if upper is None and points[-1].scale >= max_scale:
            break
        scale = next_scale(points, target, zero_kl, max_scale=max_scale)
        if any(math.isclose(scale, p.scale, rel_tol=1e-9) for p in points):
            break
    lower, upper = _bracket(points, target)
    if upper is None:
        return PoleSearch(points, lower, None, lower.scale)
    return PoleSearch(points, lower, upper, matched_between(lower, upper, target, zero_kl))


def _bracket(points: Sequence[KlPoint], target: float) -> tuple[KlPoint, KlPoint | None]:
    """The first point at or above the target (by scale) and the point just below it; without
    one, the largest point and None."""
    ordered = sorted(points, key=lambda p: p.scale)
    for index, point in enumerate(ordered):
        if point.kl >= target and index > 0:
            return ordered[index - 1], point
    return ordered[-1], None


def _close(lower: KlPoint, upper: KlPoint, target: float, tolerance: float) -> bool:
    near = any(abs(p.kl - target) <= tolerance * target for p in (lower, upper))
    tight = lower.scale > 0 and upper.scale / lower.scale <= 1 + tolerance / 2
    return near or tight


def pole_to_pole(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Per prompt: p at the positive pole's matched scale minus p at the negative pole's."""
    return np.asarray(positive, dtype=np.float64) - np.asarray(negative, dtype=np.float64)


def interval(values: np.ndarray) -> tuple[float, float]:
    """The mean over prompts and its 95% half-width (normal approximation; NaN for one)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(values))
    if values.size < 2:
        return mean, math.nan
    return mean, float(Z95 * np.std(values, ddof=1) / math.sqrt(values.size))


def split_halves(count: int) -> tuple[list[int], list[int]]:
    """The held-out prompts' two halves: even indices (A) and odd ones (B)."""
    if count < 2:
        raise MatchedError(f"--prompts: {count} prompts cannot be split in two halves (need 2)")
    return list(range(0, count, 2)), list(range(1, count, 2))


@dataclass
class AxisResult:
    """One variant on one axis: per pole the search and the per-prompt propensity at its
    matched scale, and the propensity measured at each signed scale."""

    blocks: list[int]
    start: float
    zero_kl: float
    poles: dict[str, PoleSearch] = field(default_factory=dict)
    matched_propensity: dict[str, np.ndarray] = field(default_factory=dict)
    matched_kl: dict[str, float] = field(default_factory=dict)
    propensity: dict[float, np.ndarray] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return all(search.reached for search in self.poles.values())

    def per_prompt(self) -> np.ndarray:
        return pole_to_pole(
            self.matched_propensity["positive"], self.matched_propensity["negative"]
        )


def figure_summary(result: AxisResult, halves: tuple[list[int], list[int]]) -> dict[str, Any]:
    """The pole-to-pole figure of one variant on one axis: over all prompts and each half."""
    per_prompt = result.per_prompt()
    mean, half = interval(per_prompt)
    a_mean, a_half = interval(per_prompt[halves[0]])
    b_mean, b_half = interval(per_prompt[halves[1]])
    return {
        "effect": mean,
        "ci95": half,
        "effect_a": a_mean,
        "ci95_a": a_half,
        "effect_b": b_mean,
        "ci95_b": b_half,
        "reached": result.reached,
        "matched": {pole: search.matched for pole, search in result.poles.items()},
        "reached_poles": {pole: search.reached for pole, search in result.poles.items()},
        "max_kl": {pole: max(p.kl for p in search.points) for pole, search in result.poles.items()},
        "kl_at_matched": dict(result.matched_kl),
        "per_prompt": per_prompt.tolist(),
    }


class Measurer:
    """KL and propensity of steering configurations on one backend, counted and timed."""

    def __init__(self, backend: Backend, inputs: EvalInputs, reference: Sequence[Scored]):
        self.backend = backend
        self.inputs = inputs
        self.reference = reference
        self.counts = {"kl": 0, "propensity": 0}
        self.seconds = 0.0

    def kl(self, steering: Steering) -> float:
        clock = time.perf_counter()
        with self.backend.session(steering) as session:
            value = float(np.mean(kl_against(self.reference, neutral_scores(session, self.inputs))))
        self.seconds += time.perf_counter() - clock
        self.counts["kl"] += 1
        return value

    def propensity(self, steering: Steering, axis: str) -> np.ndarray:
        clock = time.perf_counter()
        with self.backend.session(steering) as session:
            value = propensities(session, self.inputs.prompt_ids, self.inputs.probe_ids[axis])
        self.seconds += time.perf_counter() - clock
        self.counts["propensity"] += 1
        return value


def measure_matched(
    measurer: Measurer,
    recipe: Recipe,
    axis: str,
    *,
    unsteered: np.ndarray,
    start: float,
    blocks: list[int],
    search: MatchedSearch,
) -> AxisResult:
    """Both poles of one variant on one axis: the KL at scale 0, a search per pole, then at
    each pole's matched |scale| the propensity and (a check of the interpolation) the KL. A
    pole that never reached the target is read at the largest |scale| tried."""
    has_zero = recipe.debias is not None
    zero_kl = measurer.kl(recipe.steering(0.0)) if has_zero else 0.0
    result = AxisResult(blocks=blocks, start=start, zero_kl=zero_kl)

    def propensity(signed: float) -> np.ndarray:
        if signed not in result.propensity:
            if signed == 0 and not has_zero:
                result.propensity[signed] = np.asarray(unsteered)
            else:
                result.propensity[signed] = measurer.propensity(recipe.steering(signed), axis)
        return result.propensity[signed]

    for pole, sign in POLES:

        def kl_at(scale: float, sign: int = sign) -> float:
            return measurer.kl(recipe.steering(sign * scale))

        found = search_pole(
            kl_at,
            search.kl_target,
            zero_kl=zero_kl,
            start=start,
            max_scale=start * search.max_factor,
            steps=search.search_steps,
            tolerance=search.kl_tolerance,
        )
        result.poles[pole] = found
        signed = sign * found.matched
        result.matched_propensity[pole] = propensity(signed)
        tried = {p.scale: p.kl for p in found.points}
        result.matched_kl[pole] = (
            tried[found.matched] if found.matched in tried else kl_at(found.matched)
        )
    return result
