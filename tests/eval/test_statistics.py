"""cvgen.eval.statistics: slopes, bootstrap intervals and Spearman on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from cvgen.eval.statistics import (
    MetricError,
    bootstrap_mean_band,
    bootstrap_slope,
    item_slopes,
    least_squares_slope,
    spearman,
)

SWEEP = np.linspace(-1.5, 1.5, 7)


def noisy_items(
    n_items: int, *, slope: float = 2.0, noise: float = 0.5, seed: int = 0
) -> np.ndarray:
    """(n_items, 7) values: slope * x plus a per-item offset plus independent noise."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, 3.0, size=(n_items, 1))
    return slope * SWEEP + offsets + rng.normal(0.0, noise, size=(n_items, SWEEP.size))


def test_slope_of_an_exact_line_is_exact() -> None:
    assert least_squares_slope(SWEEP, 3.0 * SWEEP - 1.0) == 3.0
    assert least_squares_slope([0.0, 1.0, 2.0, 3.0], [-1.0, 2.0, 5.0, 8.0]) == 3.0


def test_slope_matches_numpy_polyfit_on_noisy_data() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=20), rng.normal(size=20)
    assert least_squares_slope(x, y) == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-12)


def test_item_slopes_are_exact_per_item() -> None:
    values = np.vstack([3.0 * SWEEP - 1.0, -2.0 * SWEEP + 4.0, 0.5 * SWEEP, np.full(7, 0.1)])
    slopes = item_slopes(SWEEP, values)
    assert slopes.shape == (4,)
    assert slopes.tolist() == [3.0, -2.0, 0.5, 0.0]


def test_item_slopes_match_a_loop_of_least_squares_slopes() -> None:
    values = noisy_items(9)
    expected = [least_squares_slope(SWEEP, row) for row in values]
    np.testing.assert_allclose(item_slopes(SWEEP, values), expected, rtol=1e-12)


def test_slope_errors_name_the_argument_and_value() -> None:
    with pytest.raises(MetricError, match=r"^y: has 3 values but x has 4$"):
        least_squares_slope([0, 1, 2, 3], [1, 2, 3])
    with pytest.raises(
        MetricError, match=r"^x: needs at least 2 distinct values, got \[1.0, 1.0, 1.0\]$"
    ):
        least_squares_slope([1, 1, 1], [1, 2, 3])
    with pytest.raises(MetricError, match=r"^x: value nan at index 1 is not finite$"):
        least_squares_slope([0, math.nan, 2], [1, 2, 3])
    with pytest.raises(MetricError, match=r"^y: expected a 1-D sequence, got shape \(2, 2\)$"):
        least_squares_slope([0, 1], [[1, 2], [3, 4]])
    with pytest.raises(MetricError, match=r"^values: has 3 scales \(columns\) but x has 7 values$"):
        item_slopes(SWEEP, np.zeros((2, 3)))


# --- bootstrap ---------------------------------------------------------------------------


def test_identical_items_give_a_zero_width_interval_at_the_slope() -> None:
    estimate = bootstrap_slope(SWEEP, np.vstack([3.0 * SWEEP - 1.0] * 6))
    assert (estimate.slope, estimate.low, estimate.high) == (3.0, 3.0, 3.0)
    assert estimate.wrong_sign_fraction == 0.0
    assert estimate.n_items == 6


def test_bootstrap_interval_contains_the_true_slope_and_narrows_with_more_items() -> None:
    few = bootstrap_slope(SWEEP, noisy_items(20, seed=2))
    many = bootstrap_slope(SWEEP, noisy_items(320, seed=3))
    for estimate in (few, many):
        assert estimate.low < 2.0 < estimate.high
        assert estimate.low < estimate.slope < estimate.high
    # 16 times the items: the width should shrink about 4 times
    ratio = (few.high - few.low) / (many.high - many.low)
    assert 2.5 < ratio < 6.0


def test_bootstrap_width_matches_the_standard_error_of_the_item_slopes() -> None:
    values = noisy_items(400, noise=2.0, seed=4)
    slopes = item_slopes(SWEEP, values)
    standard_error = slopes.std(ddof=1) / math.sqrt(slopes.size)
    estimate = bootstrap_slope(SWEEP, values, resamples=4000, seed=5)
    assert estimate.slope == pytest.approx(slopes.mean(), rel=1e-12)
    normal_width = 2 * scipy.stats.norm.ppf(0.975) * standard_error
    assert estimate.high - estimate.low == pytest.approx(normal_width, rel=0.1)


def test_bootstrap_is_seeded_and_level_sets_the_width() -> None:
    values = noisy_items(30, seed=6)
    assert bootstrap_slope(SWEEP, values, seed=7) == bootstrap_slope(SWEEP, values, seed=7)
    assert bootstrap_slope(SWEEP, values, seed=7) != bootstrap_slope(SWEEP, values, seed=8)
    wide = bootstrap_slope(SWEEP, values, level=0.95)
    narrow = bootstrap_slope(SWEEP, values, level=0.5)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_wrong_sign_fraction_counts_decreasing_and_flat_items() -> None:
    rising = [SWEEP, 2.0 * SWEEP, 0.1 * SWEEP + 5.0]
    one_falling = np.vstack([*rising, -SWEEP])
    assert bootstrap_slope(SWEEP, one_falling).wrong_sign_fraction == 0.25
    one_flat = np.vstack([*rising, np.full(7, 0.1)])
    assert bootstrap_slope(SWEEP, one_flat).wrong_sign_fraction == 0.25


def test_a_flat_item_has_slope_exactly_zero_not_a_rounding_residue() -> None:
    # on this grid the mean of ten copies of 1/3 rounds above 1/3, which would leave a
    # slope of +2.7e-33 and count the flat item as rising
    grid = np.linspace(-1.5, 1.5, 10)
    values = np.vstack([grid, np.full(10, 1.0 / 3.0)])
    rising, flat = item_slopes(grid, values)
    assert rising == pytest.approx(1.0, rel=1e-12)
    assert flat == 0.0
    assert bootstrap_slope(grid, values).wrong_sign_fraction == 0.5


def test_bootstrap_rejects_nan_rows_and_bad_options() -> None:
    values = noisy_items(4)
    values[2, 3] = math.nan
    with pytest.raises(
        MetricError, match=r"^values: item 2 has a non-finite value nan at scale index 3$"
    ):
        bootstrap_slope(SWEEP, values)
    with pytest.raises(MetricError, match=r"^level: 1.0 must lie strictly between 0 and 1$"):
        bootstrap_slope(SWEEP, noisy_items(4), level=1.0)
    with pytest.raises(MetricError, match=r"^resamples: 0 must be an integer >= 1$"):
        bootstrap_mean_band(noisy_items(4), resamples=0)
    with pytest.raises(
        MetricError, match=r"^values: expected a 2-D \(items, scales\) array, got shape \(7,\)$"
    ):
        bootstrap_mean_band(SWEEP)


def test_mean_band_of_identical_items_is_the_curve_itself() -> None:
    low, high = bootstrap_mean_band(np.vstack([3.0 * SWEEP - 1.0] * 5))
    assert low.tolist() == high.tolist() == (3.0 * SWEEP - 1.0).tolist()


def test_mean_band_covers_the_mean_and_widens_with_the_noise_of_its_column() -> None:
    rng = np.random.default_rng(9)
    spread = np.array([0.1, 0.5, 1.0, 2.0, 4.0])
    values = rng.normal(0.0, 1.0, size=(200, 5)) * spread + np.arange(5)
    low, high = bootstrap_mean_band(values, seed=10)
    assert low.shape == high.shape == (5,)
    mean = values.mean(axis=0)
    assert np.all(low < mean) and np.all(mean < high)
    widths = high - low
    assert np.all(np.diff(widths) > 0)
    standard_errors = values.std(axis=0, ddof=1) / math.sqrt(200)
    np.testing.assert_allclose(widths, 2 * 1.96 * standard_errors, rtol=0.15)


# --- Spearman ----------------------------------------------------------------------------


def test_spearman_of_monotone_relations() -> None:
    x = [0.1, 0.5, 1.0, 2.0, 3.5]
    # scipy's Pearson of the ranks lands within an ulp of +-1
    assert spearman(x, np.exp(x)) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, [-(v**3) for v in x]) == pytest.approx(-1.0, abs=1e-12)


def test_spearman_with_ties_uses_average_ranks() -> None:
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): centred dot 4.5, squared norms 4.5 and 5
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    rng = np.random.default_rng(11)
    x, y = rng.integers(0, 4, size=30), rng.integers(0, 5, size=30)
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_is_nan_for_constant_input() -> None:
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([2, 2], [1, 3]))
    with pytest.raises(MetricError, match=r"^y: has 2 values but x has 3$"):
        spearman([1, 2, 3], [1, 2])
