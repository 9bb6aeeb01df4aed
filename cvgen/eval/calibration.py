"""The safe scale of one pole: the largest scale whose damage stays within a KL budget and a
repetition tolerance, read off the damage curves measured at the tested scales."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cvgen.eval.statistics import FloatArray, MetricError, finite_vector


@dataclass(frozen=True)
class SafeScale:
    """The calibrated scale of one pole.

    scale: the largest safe |scale| (0.0 when even scale 0 fails).
    limited_by: "kl", "repetition", or "sweep" (every tested scale passed; scale is the
        largest tested).
    """

    scale: float
    limited_by: str


def _check_calibration(
    scales: FloatArray,
    kl: FloatArray,
    repetition: FloatArray,
    kl_budget: float,
    repetition_baseline: float,
    repetition_tolerance: float,
) -> None:
    for name, curve in (("kl", kl), ("repetition", repetition)):
        if curve.size != scales.size:
            raise MetricError(f"{name}: has {curve.size} values but scales has {scales.size}")
    if scales[0] != 0.0:
        raise MetricError(f"scales: must start with 0.0, got {scales[0]}")
    steps = np.flatnonzero(np.diff(scales) <= 0.0)
    if steps.size:
        i = int(steps[0])
        raise MetricError(
            f"scales: must be strictly ascending, got {scales[i]} then {scales[i + 1]}"
        )
    for name, value in (
        ("kl_budget", kl_budget),
        ("repetition_baseline", repetition_baseline),
        ("repetition_tolerance", repetition_tolerance),
    ):
        if not (math.isfinite(value) and value >= 0.0):
            raise MetricError(f"{name}: {value!r} must be a finite number >= 0")


def _first_crossing(scales: FloatArray, curve: FloatArray, limit: float) -> float | None:
    """Smallest s at which the piecewise-linear ``curve`` reaches ``limit``, or None."""
    if curve[0] >= limit:
        return 0.0
    for i in range(1, scales.size):
        if curve[i] >= limit:
            fraction = (limit - curve[i - 1]) / (curve[i] - curve[i - 1])
            return float(scales[i - 1] + fraction * (scales[i] - scales[i - 1]))
    return None


def calibrate_safe_scale(
    scales: Sequence[float],
    kl: Sequence[float],
    repetition: Sequence[float],
    *,
    kl_budget: float,
    repetition_baseline: float,
    repetition_tolerance: float,
) -> SafeScale:
    """The largest safe |scale| of one pole, from its damage curves.

    scales: the tested |scale| values of the pole, strictly ascending, starting with 0.0
    (scale 0 = the debias file alone). kl: mean per-token KL(unsteered || steered) at each
    scale. repetition: repeated-4-gram rate of the generations at each scale. All finite and
    of the same length; the budget, baseline and tolerance finite and >= 0.

    Rule: walking up from 0, KL(s) and repetition(s) are interpolated linearly between the
    tested scales. The safe scale is the smallest s at which KL reaches ``kl_budget`` or
    repetition reaches ``repetition_baseline + repetition_tolerance``, whichever comes first
    (``limited_by`` = "kl" or "repetition"; KL wins a tie). If neither is reached within the
    sweep, it is the largest tested scale ("sweep"). If scale 0 already reaches a limit, 0.0.
    """
    grid = finite_vector("scales", scales, minimum=1)
    kl_curve = finite_vector("kl", kl, minimum=1)
    repetition_curve = finite_vector("repetition", repetition, minimum=1)
    _check_calibration(
        grid, kl_curve, repetition_curve, kl_budget, repetition_baseline, repetition_tolerance
    )
    kl_limit = _first_crossing(grid, kl_curve, kl_budget)
    repetition_limit = _first_crossing(
        grid, repetition_curve, repetition_baseline + repetition_tolerance
    )
    reached = [
        (limit, name)
        for limit, name in ((kl_limit, "kl"), (repetition_limit, "repetition"))
        if limit is not None
    ]
    if not reached:
        return SafeScale(scale=float(grid[-1]), limited_by="sweep")
    scale, limited_by = min(reached, key=lambda pair: pair[0])  # min keeps "kl" on a tie
    return SafeScale(scale=scale, limited_by=limited_by)


# The suggested scale of a pole is where its KL reaches this share of the budget: far enough
# for the change to show in generated text, half the damage the budget allows.
SUGGESTED_KL_SHARE = 0.5


def suggested_scale(
    scales: Sequence[float], kl: Sequence[float], *, kl_target: float, cap: float
) -> float:
    """The |scale| of one pole at which the KL curve first reaches `kl_target` (interpolated
    linearly between the tested scales, as `calibrate_safe_scale` does), never above `cap`
    (the pole's safe scale); `cap` when the curve stays below the target."""
    grid = finite_vector("scales", scales, minimum=1)
    curve = finite_vector("kl", kl, minimum=1)
    if curve.size != grid.size:
        raise MetricError(f"kl: has {curve.size} values but scales has {grid.size}")
    reached = _first_crossing(grid, curve, kl_target)
    return float(cap if reached is None else min(reached, cap))
