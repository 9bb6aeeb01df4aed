"""cvgen.eval.calibration: the safe scale of one pole on hand-made damage curves."""

from __future__ import annotations

import math

import pytest

from cvgen.eval.calibration import SafeScale, calibrate_safe_scale
from cvgen.eval.statistics import MetricError

GRID = [0.0, 0.5, 1.0, 1.5]
FLAT = [0.01, 0.01, 0.01, 0.01]


def calibrate(kl: list[float], repetition: list[float], **options: float) -> SafeScale:
    settings = {"kl_budget": 0.2, "repetition_baseline": 0.02, "repetition_tolerance": 0.1}
    settings.update(options)
    return calibrate_safe_scale(GRID, kl, repetition, **settings)


def test_quadratic_kl_reaches_the_budget_at_one() -> None:
    kl = [0.2 * s**2 for s in GRID]
    assert calibrate(kl, FLAT) == SafeScale(scale=1.0, limited_by="kl")


def test_repetition_jump_is_interpolated() -> None:
    # limit 0.02 + 0.1 = 0.12, reached between 0.5 (0.02) and 1.0 (0.30)
    result = calibrate([0.0, 0.01, 0.02, 0.03], [0.02, 0.02, 0.30, 0.5])
    assert result.limited_by == "repetition"
    assert result.scale == pytest.approx(0.5 + 0.5 * 0.10 / 0.28, rel=1e-12)


def test_the_first_limit_reached_wins() -> None:
    # KL reaches 0.2 at 1.25; repetition reaches 0.12 at 0.75
    kl = [0.0, 0.05, 0.1, 0.3]
    assert calibrate(kl, [0.02, 0.02, 0.22, 0.22]) == SafeScale(0.75, "repetition")
    assert calibrate(kl, [0.02, 0.02, 0.02, 0.22]) == SafeScale(1.25, "kl")
    # a curve that rises past the limit and falls back still stopped at its first crossing
    assert calibrate([0.0, 0.4, 0.0, 0.0], FLAT) == SafeScale(0.25, "kl")


def test_all_scales_pass_gives_the_largest_scale() -> None:
    assert calibrate([0.0, 0.01, 0.05, 0.19], FLAT) == SafeScale(1.5, "sweep")


def test_scale_zero_failing_gives_zero() -> None:
    assert calibrate([0.25, 0.3, 0.4, 0.5], FLAT) == SafeScale(0.0, "kl")
    assert calibrate([0.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2]) == SafeScale(0.0, "repetition")
    assert calibrate([0.0] * 4, FLAT, kl_budget=0.0) == SafeScale(0.0, "kl")


@pytest.mark.parametrize(
    ("scales", "kl", "repetition", "budget", "message"),
    [
        (GRID, [0.0] * 3, FLAT, 0.2, r"^kl: has 3 values but scales has 4$"),
        (GRID, [0.0] * 4, FLAT[:2], 0.2, r"^repetition: has 2 values but scales has 4$"),
        ([0.5, 1.0, 1.5, 2.0], [0.0] * 4, FLAT, 0.2, r"^scales: must start with 0.0, got 0.5$"),
        (
            [0.0, 1.0, 0.5, 1.5],
            [0.0] * 4,
            FLAT,
            0.2,
            r"^scales: must be strictly ascending, got 1.0 then 0.5$",
        ),
        (GRID, [0.0, math.inf, 0.0, 0.0], FLAT, 0.2, r"^kl: value inf at index 1 is not finite$"),
        (GRID, [0.0] * 4, FLAT, -0.1, r"^kl_budget: -0.1 must be a finite number >= 0$"),
    ],
)
def test_calibration_rejects_bad_input(
    scales: list[float], kl: list[float], repetition: list[float], budget: float, message: str
) -> None:
    with pytest.raises(MetricError, match=message):
        calibrate_safe_scale(
            scales,
            kl,
            repetition,
            kl_budget=budget,
            repetition_baseline=0.02,
            repetition_tolerance=0.1,
        )
