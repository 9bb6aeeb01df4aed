"""Tests for cvgen.eval.metrics on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from cvgen.data.shipped import load_axis, shipped_axis_names
from cvgen.eval.metrics import (
    AXIS_STATISTICS,
    TEXT_STATISTICS,
    MetricError,
    SafeScale,
    bootstrap_mean_band,
    bootstrap_slope,
    calibrate_safe_scale,
    coarse_kl,
    expected_sign,
    get_statistic,
    item_slopes,
    kl_divergence,
    least_squares_slope,
    repeated_ngram_rate,
    spearman,
    statistics_for_axis,
    text_repetition,
)

# The default sweep of cvgen eval: -1.5..+1.5 in 7 steps (every value exact in binary).
SWEEP = np.linspace(-1.5, 1.5, 7)


def noisy_items(
    n_items: int, *, slope: float = 2.0, noise: float = 0.5, seed: int = 0
) -> np.ndarray:
    """(n_items, 7) values: slope * x plus a per-item offset plus independent noise."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, 3.0, size=(n_items, 1))
    return slope * SWEEP + offsets + rng.normal(0.0, noise, size=(n_items, SWEEP.size))


# --- slopes ------------------------------------------------------------------------------


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
    assert spearman(x, np.exp(x)) == 1.0
    assert spearman(x, [-(v**3) for v in x]) == -1.0


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


# --- KL ----------------------------------------------------------------------------------


def log(rows: list[list[float]]) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.array(rows, dtype=np.float64))


def test_kl_of_identical_distributions_is_zero() -> None:
    rng = np.random.default_rng(12)
    log_p = np.log(rng.dirichlet(np.ones(50), size=4))
    np.testing.assert_allclose(kl_divergence(log_p, log_p), 0.0, atol=1e-12)


def test_kl_of_hand_made_distributions_and_its_asymmetry() -> None:
    p, q = [[0.5, 0.25, 0.25]], [[0.8, 0.1, 0.1]]
    forward = kl_divergence(log(p), log(q))
    backward = kl_divergence(log(q), log(p))
    assert forward.shape == (1,)
    # 0.5 ln(0.5/0.8) + 2 * 0.25 ln(0.25/0.1) = ln 1.25
    assert forward[0] == pytest.approx(math.log(1.25), rel=1e-12)
    assert backward[0] == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4), rel=1e-12)
    assert abs(forward[0] - backward[0]) > 0.03


def test_kl_handles_zero_probabilities() -> None:
    p, q = [[0.5, 0.5, 0.0]], [[0.25, 0.25, 0.5]]
    assert kl_divergence(log(p), log(q))[0] == pytest.approx(math.log(2.0), rel=1e-12)
    assert kl_divergence(log(q), log(p))[0] == math.inf


def test_kl_accepts_float32_log_softmax_and_checks_rows() -> None:
    rng = np.random.default_rng(13)
    logits = rng.normal(size=(3, 1000))
    log_p = scipy.special.log_softmax(logits, axis=1)
    log_q = scipy.special.log_softmax(logits + rng.normal(scale=0.3, size=logits.shape), axis=1)
    exact = kl_divergence(log_p, log_q)
    from_float32 = kl_divergence(log_p.astype(np.float32), log_q.astype(np.float32))
    np.testing.assert_allclose(from_float32, exact, rtol=1e-4)
    with pytest.raises(MetricError, match=r"^log_p: row 0 has total probability .*not logits\)$"):
        kl_divergence(logits, log_q)


def test_kl_renormalises_rows_that_are_off_by_rounding() -> None:
    log_q = np.log(np.array([[0.5, 0.3, 0.2]]))
    heavy = log_q + 5e-4  # mass 1.0005, within the tolerance: the same distribution
    np.testing.assert_allclose(kl_divergence(heavy, log_q), 0.0, atol=1e-12)


def test_kl_errors_report_the_row_beyond_the_first_chunk() -> None:
    log_p = np.log(np.full((100, 4), 0.25))
    log_q = log_p.copy()
    log_q[70, 1] = math.nan
    with pytest.raises(
        MetricError, match=r"^log_q: entry \[70, 1\] is nan, not a log-probability$"
    ):
        kl_divergence(log_p, log_q)
    log_q[70, 1] = 0.0
    with pytest.raises(MetricError, match=r"^log_q: row 70 has total probability 1.75, not 1"):
        kl_divergence(log_p, log_q)
    with pytest.raises(
        MetricError, match=r"^log_q: shape \(100, 3\) differs from log_p's \(100, 4\)$"
    ):
        kl_divergence(log_p, log_q[:, :3])


# --- coarse KL from top-K lists ----------------------------------------------------------


def top(log_probs: np.ndarray, k: int) -> dict[int, float]:
    order = np.argsort(log_probs)[::-1][:k]
    return {int(token): float(log_probs[token]) for token in order}


def test_coarse_kl_is_exact_when_the_lists_hold_all_the_mass() -> None:
    rng = np.random.default_rng(14)
    log_p, log_q = np.log(rng.dirichlet(np.ones(20), size=2))
    exact = kl_divergence(log_p[None], log_q[None])[0]
    assert coarse_kl(top(log_p, 20), top(log_q, 20)) == pytest.approx(exact, rel=1e-12)


def test_coarse_kl_of_truncated_lists_is_a_lower_bound() -> None:
    rng = np.random.default_rng(15)
    for _ in range(50):
        log_p, log_q = np.log(rng.dirichlet(np.full(40, 0.3), size=2))
        exact = kl_divergence(log_p[None], log_q[None])[0]
        for k in (1, 5, 10):
            assert coarse_kl(top(log_p, k), top(log_q, k)) <= exact + 1e-12


def test_coarse_kl_rest_bucket_by_hand() -> None:
    p = {0: math.log(0.5), 1: math.log(0.3)}
    q = {0: math.log(0.4), 2: math.log(0.5)}
    # shared {0}: p 0.5 vs q 0.4; rest: p 0.5 vs q 0.6
    expected = 0.5 * math.log(0.5 / 0.4) + 0.5 * math.log(0.5 / 0.6)
    assert coarse_kl(p, q) == pytest.approx(expected, rel=1e-12)


def test_coarse_kl_empty_q_rest_is_floored_and_tiny_negative_rests_clamped() -> None:
    expected = 0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12)
    assert coarse_kl({0: math.log(0.5)}, {0: 0.0}) == pytest.approx(expected, rel=1e-12)
    over = {0: math.log(0.6), 1: math.log(0.4 + 1e-9)}
    assert coarse_kl(over, over) == 0.0


def test_coarse_kl_rejects_lists_with_too_much_mass() -> None:
    with pytest.raises(
        MetricError, match=r"^p_top: the listed probabilities sum to 1.2, more than 1$"
    ):
        coarse_kl({0: math.log(0.6), 1: math.log(0.6)}, {})
    with pytest.raises(MetricError, match=r"^q_top: token 3 has log-probability nan$"):
        coarse_kl({}, {3: math.nan})


# --- repetition --------------------------------------------------------------------------


def test_repeated_ngram_rate_by_hand() -> None:
    # 4-grams: abcd bcda cdab dabc abcd -> the last repeats the first: 1 of 5
    assert repeated_ngram_rate(["a", "b", "c", "d", "a", "b", "c", "d"], n=4) == 0.2
    assert repeated_ngram_rate([1, 2, 3, 4, 5, 6, 7], n=4) == 0.0
    assert repeated_ngram_rate(["a", "a", "a", "a", "a"], n=2) == 0.75  # overlapping repeats count
    assert repeated_ngram_rate(["a", "a", "a"], n=4) == 0.0  # fewer than n tokens: no n-gram


def test_repeated_ngram_rate_rejects_bad_input() -> None:
    with pytest.raises(MetricError, match=r"^n: 0 must be an integer >= 1$"):
        repeated_ngram_rate(["a"], n=0)
    with pytest.raises(MetricError, match=r"^tokens: got a string"):
        repeated_ngram_rate("abcabc", n=2)


def test_text_repetition_uses_lower_cased_words() -> None:
    # words: the cat sat the cat sat -> bigrams: (the cat) (cat sat) (sat the) (the cat) (cat sat)
    assert text_repetition('The cat sat. "the CAT sat!"', n=2) == 0.4
    assert text_repetition("Every word here differs from the others.") == 0.0


# --- text statistics ---------------------------------------------------------------------


def test_quoted_fraction_on_a_fixed_string() -> None:
    text = 'He said "hi" to me'
    assert get_statistic("quoted_fraction").function(text) == 4 / len(text)


def test_word_statistics() -> None:
    assert get_statistic("word_length").function("a bb ccc") == 2.0
    zipf = get_statistic("zipf_frequency").function
    assert zipf("perspicacious obfuscation") < zipf("the and of")


def test_sentiment_sign() -> None:
    sentiment = get_statistic("sentiment").function
    assert sentiment("What a wonderful, happy day; I love my kind friends.") > 0.5
    assert sentiment("This is a horrible, hateful disaster and I am miserable.") < -0.5
    assert sentiment("The table has four legs.") == 0.0


def test_unknown_statistic_lists_the_valid_names() -> None:
    with pytest.raises(
        MetricError,
        match=r"^unknown statistic 'rhyme'; choose one of: "
        r"quoted_fraction, sentiment, word_length, zipf_frequency$",
    ):
        get_statistic("rhyme")


def test_axis_statistics_name_shipped_axes_and_registered_statistics() -> None:
    assert statistics_for_axis("language") == ("word_length", "zipf_frequency")
    assert statistics_for_axis("character_focus") == ("quoted_fraction",)
    assert statistics_for_axis("honesty") == ()
    assert set(AXIS_STATISTICS) <= set(shipped_axis_names())
    for names in AXIS_STATISTICS.values():
        assert set(names) <= set(TEXT_STATISTICS)
    assert expected_sign("language", "zipf_frequency") == -1
    with pytest.raises(
        MetricError,
        match=r"^statistic 'sentiment' is not measured on axis 'language'; "
        r"its statistics: word_length, zipf_frequency$",
    ):
        expected_sign("language", "sentiment")


@pytest.mark.parametrize(
    ("axis", "statistic"),
    [
        ("language", "word_length"),
        ("language", "zipf_frequency"),
        ("optimism", "sentiment"),
    ],
)
def test_expected_sign_agrees_with_the_axis_own_class_descriptions(
    axis: str, statistic: str
) -> None:
    """The second class's continuations, scored by the statistic, move the expected way."""
    function = get_statistic(statistic).function
    pairs = load_axis(axis).pairs
    change = np.mean([function(second) - function(first) for first, second in pairs])
    assert np.sign(change) == expected_sign(axis, statistic)


# --- calibration -------------------------------------------------------------------------

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
