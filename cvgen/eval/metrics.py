"""The metrics of ``cvgen eval``: pure numpy functions on plain arrays, no model.

A sweep measures a control vector at several scales on the same items (writing prompts):

- **Effect.** A text statistic (``TEXT_STATISTICS``) of each generation gives a matrix
  ``values`` of shape (items, scales). :func:`bootstrap_slope` fits the slope of its per-scale
  mean against the scale, with a bootstrap interval over items and the fraction of items that
  move the wrong way; :func:`bootstrap_mean_band` gives the band drawn around the mean curve.
- **Damage.** :func:`kl_divergence` (full distributions) or :func:`coarse_kl` (llama.cpp's
  top-K lists) measure how far the steered next-token distribution is from the unsteered one;
  :func:`text_repetition` measures degenerate loops in the generations.
- **Calibration.** :func:`calibrate_safe_scale` turns the damage curves of one pole into the
  largest scale that stays within a KL budget and a repetition tolerance.

Every function validates its input and raises :class:`MetricError` with a one-line message
naming the argument and the value. Arithmetic is float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata

from cvgen.common.errors import CvgenError
from cvgen.eval.textstats import (
    mean_word_length,
    mean_zipf_frequency,
    quoted_fraction,
    sentiment,
    words,
)

__all__ = [
    "AXIS_STATISTICS",
    "TEXT_STATISTICS",
    "MetricError",
    "SafeScale",
    "SlopeEstimate",
    "TextStatistic",
    "bootstrap_mean_band",
    "bootstrap_slope",
    "calibrate_safe_scale",
    "coarse_kl",
    "expected_sign",
    "get_statistic",
    "item_slopes",
    "kl_divergence",
    "least_squares_slope",
    "repeated_ngram_rate",
    "spearman",
    "statistics_for_axis",
    "text_repetition",
]

# A row of log-probabilities whose total mass is off by more than this is not a distribution.
_NORMALISATION_TOLERANCE = 1e-3
# Top-K probabilities may sum a little past 1 from float32 rounding; more is bad input.
_MASS_TOLERANCE = 1e-4
# The probability given to an empty bucket of Q that P still puts mass on (coarse_kl).
_Q_FLOOR = 1e-12
# Rows of kl_divergence processed at once, to bound float64 temporaries on large vocabularies.
_KL_ROW_CHUNK = 64

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


class MetricError(CvgenError, ValueError):
    """Invalid input to a metric (shape, value, option) or an unknown statistic name."""


# --- validation --------------------------------------------------------------------------


def _vector(name: str, values: Sequence[float] | np.ndarray, *, minimum: int = 1) -> FloatArray:
    """``values`` as a finite float64 1-D array of at least ``minimum`` entries."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise MetricError(f"{name}: expected a 1-D sequence, got shape {array.shape}")
    if array.size < minimum:
        raise MetricError(f"{name}: needs at least {minimum} values, got {array.size}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise MetricError(f"{name}: value {array[bad[0]]} at index {bad[0]} is not finite")
    return array


def _scale_axis(x: Sequence[float] | np.ndarray) -> FloatArray:
    """The scales ``x`` as a float64 vector with at least two distinct values."""
    array = _vector("x", x, minimum=2)
    if np.unique(array).size < 2:
        raise MetricError(f"x: needs at least 2 distinct values, got {array.tolist()}")
    return array


def _matrix(name: str, values: np.ndarray, *, columns: int | None = None) -> FloatArray:
    """``values`` as a finite float64 (items, scales) array with at least one row."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1:
        raise MetricError(f"{name}: expected a 2-D (items, scales) array, got shape {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise MetricError(
            f"{name}: has {array.shape[1]} scales (columns) but x has {columns} values"
        )
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        item, scale = (int(i) for i in bad[0])
        raise MetricError(
            f"{name}: item {item} has a non-finite value {array[item, scale]} at scale index {scale}"
        )
    return array


def _check_bootstrap_options(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise MetricError(f"resamples: {resamples!r} must be an integer >= 1")
    if not (0.0 < level < 1.0):
        raise MetricError(f"level: {level!r} must lie strictly between 0 and 1")


# --- slopes and their uncertainty ---------------------------------------------------------


@dataclass(frozen=True)
class SlopeEstimate:
    """The effect of the scale on a statistic, over items.

    slope: least-squares slope of the per-scale MEAN over items against the scale.
    low, high: bootstrap percentile interval (at ``level``) of that slope, items resampled.
    wrong_sign_fraction: fraction of items whose OWN least-squares slope is <= 0. The intended
        sign is positive: negate the values of a statistic that the axis should lower.
    n_items: number of items (rows).
    """

    slope: float
    low: float
    high: float
    wrong_sign_fraction: float
    n_items: int


def _centred_slopes(x: FloatArray, values: FloatArray) -> FloatArray:
    """Least-squares slope of each row of ``values`` (items, scales) against ``x`` (scales,).

    A constant row gets exactly 0, not a rounding residue of either sign."""
    dx = x - x.mean()
    dy = values - values.mean(axis=1, keepdims=True)
    slopes: FloatArray = dy @ dx / (dx @ dx)
    slopes[np.ptp(values, axis=1) == 0.0] = 0.0
    return slopes


def least_squares_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Ordinary least-squares slope of ``y`` against ``x``, both 1-D of the same length n.

    Needs at least 2 distinct x values; every value must be finite."""
    xs = _scale_axis(x)
    ys = _vector("y", y)
    if ys.size != xs.size:
        raise MetricError(f"y: has {ys.size} values but x has {xs.size}")
    return float(_centred_slopes(xs, ys[np.newaxis, :])[0])


def item_slopes(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The least-squares slope of each item: ``x`` (scales,), ``values`` (items, scales) ->
    (items,) float64. Vectorised; a constant item has slope exactly 0."""
    xs = _scale_axis(x)
    return _centred_slopes(xs, _matrix("values", values, columns=xs.size))


def _percentile_interval(samples: FloatArray, level: float) -> tuple[FloatArray, FloatArray]:
    """The central ``level`` percentile interval of ``samples`` along axis 0."""
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    return low, high


def _resampled_means(rows: FloatArray, resamples: int, seed: int) -> FloatArray:
    """Means of ``rows`` (items, ...) over ``resamples`` bootstrap resamples of the items:
    (resamples, ...). Each resample draws n items with replacement, which is the same as
    multinomial counts over the items; the mean is then counts @ rows / n."""
    n_items = rows.shape[0]
    counts = np.random.default_rng(seed).multinomial(
        n_items, np.full(n_items, 1.0 / n_items), size=resamples
    )
    flat = rows.reshape(n_items, -1)
    means: FloatArray = (counts @ flat) / n_items
    return means.reshape((resamples, *rows.shape[1:]))


def bootstrap_slope(
    x: np.ndarray,
    values: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> SlopeEstimate:
    """The slope of the mean curve with a bootstrap interval over items.

    x: (scales,) the tested scales, at least 2 distinct. values: (items, scales) a statistic
    of each item's generation at each scale; every value finite (a NaN row is an error).
    The point estimate is the least-squares slope of ``values.mean(axis=0)`` against ``x``.
    Items (rows) are resampled with replacement ``resamples`` times (seeded); since the slope
    is linear in the values, the slope of a resample's mean curve is the mean of its items'
    slopes. ``low``/``high`` are the central ``level`` percentiles of those slopes.
    """
    _check_bootstrap_options(resamples, level)
    xs = _scale_axis(x)
    matrix = _matrix("values", values, columns=xs.size)
    slopes = _centred_slopes(xs, matrix)
    low, high = _percentile_interval(_resampled_means(slopes, resamples, seed), level)
    return SlopeEstimate(
        slope=least_squares_slope(xs, matrix.mean(axis=0)),
        low=float(low),
        high=float(high),
        wrong_sign_fraction=float(np.mean(slopes <= 0.0)),
        n_items=int(matrix.shape[0]),
    )


def bootstrap_mean_band(
    values: np.ndarray, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Per-scale bootstrap band of the mean over items, for the plot.

    values: (items, scales), finite. Items (rows) are resampled with replacement
    ``resamples`` times (seeded); returns ``(low, high)``, each (scales,), the central
    ``level`` percentile interval of the resampled mean at each scale (column)."""
    _check_bootstrap_options(resamples, level)
    matrix = _matrix("values", values)
    return _percentile_interval(_resampled_means(matrix, resamples, seed), level)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two 1-D sequences of the same length (>= 2), in [-1, 1].

    Ties get their average rank; the result is the Pearson correlation of the ranks. NaN when
    either side is constant (the correlation is undefined)."""
    xs = _vector("x", x, minimum=2)
    ys = _vector("y", y, minimum=2)
    if ys.size != xs.size:
        raise MetricError(f"y: has {ys.size} values but x has {xs.size}")
    rank_x = rankdata(xs) - (xs.size + 1) / 2.0
    rank_y = rankdata(ys) - (ys.size + 1) / 2.0
    norm = math.sqrt(float(rank_x @ rank_x) * float(rank_y @ rank_y))
    if norm == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float(rank_x @ rank_y) / norm))


# --- divergence from the unsteered model -------------------------------------------------


def _log_distribution(name: str, log_probs: np.ndarray, first_row: int) -> FloatArray:
    """Rows ``first_row``... of a (positions, vocabulary) array of log-probabilities, as
    float64 with each row renormalised to total mass exactly 1.

    Entries must be finite or -inf (probability 0); a row whose mass is off by more than
    ``_NORMALISATION_TOLERANCE`` (logits passed by mistake) is an error."""
    array = np.asarray(log_probs, dtype=np.float64)
    bad = np.argwhere(np.isnan(array) | (array == np.inf))
    if bad.size:
        row, column = int(bad[0][0]), int(bad[0][1])
        raise MetricError(
            f"{name}: entry [{first_row + row}, {column}] is {array[row, column]}, "
            "not a log-probability"
        )
    with np.errstate(divide="ignore"):
        totals = logsumexp(array, axis=1, keepdims=True)
    off = np.flatnonzero(~(np.abs(totals[:, 0]) <= _NORMALISATION_TOLERANCE))
    if off.size:
        row = int(off[0])
        raise MetricError(
            f"{name}: row {first_row + row} has total probability "
            f"{float(np.exp(totals[row, 0])):.6g}, not 1 (pass log-softmax outputs, not logits)"
        )
    normalised: FloatArray = array - totals
    return normalised


def _kl_rows(log_p: FloatArray, log_q: FloatArray) -> FloatArray:
    """Per row: sum of p * (log p - log q), with 0 where p == 0."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0.0, p * (log_p - log_q), 0.0)
    divergences: FloatArray = np.maximum(terms.sum(axis=1), 0.0)
    return divergences


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(P || Q) in nats at each position.

    log_p, log_q: (positions, vocabulary) natural-log probabilities, each row a full
    distribution; entries finite or -inf. Returns (positions,) float64, computed as
    ``sum exp(log_p) * (log_p - log_q)`` with 0 where p == 0, in float64 after renormalising
    each row to mass 1 (float32 log-softmax rows are off by ~1e-6; a row off by more than
    1e-3 is an error). +inf where Q gives 0 to a token that P does not. Rounding residues
    below 0 become 0. Rows are processed in chunks, so float64 temporaries stay small.
    """
    p_array = np.asarray(log_p)
    q_array = np.asarray(log_q)
    if p_array.ndim != 2 or p_array.shape[1] < 1:
        raise MetricError(
            f"log_p: expected a (positions, vocabulary) array, got shape {p_array.shape}"
        )
    if q_array.shape != p_array.shape:
        raise MetricError(f"log_q: shape {q_array.shape} differs from log_p's {p_array.shape}")
    divergences = np.zeros(p_array.shape[0])
    for start in range(0, p_array.shape[0], _KL_ROW_CHUNK):
        stop = start + _KL_ROW_CHUNK
        divergences[start:stop] = _kl_rows(
            _log_distribution("log_p", p_array[start:stop], start),
            _log_distribution("log_q", q_array[start:stop], start),
        )
    return divergences


def _top_probabilities(name: str, top: Mapping[int, float]) -> dict[int, float]:
    """Token id -> probability from a top-K map of natural-log probabilities, validated."""
    probabilities: dict[int, float] = {}
    for token, log_prob in top.items():
        value = float(log_prob)
        if math.isnan(value) or value > _MASS_TOLERANCE:
            raise MetricError(f"{name}: token {token} has log-probability {log_prob!r}")
        probabilities[token] = math.exp(value)
    mass = math.fsum(probabilities.values())
    if mass > 1.0 + _MASS_TOLERANCE:
        raise MetricError(f"{name}: the listed probabilities sum to {mass:.6g}, more than 1")
    return probabilities


def _bucket_kl(p: float, q: float) -> float:
    """One bucket's p * log(p / q): 0 when p == 0, Q floored at ``_Q_FLOOR``."""
    if p <= 0.0:
        return 0.0
    return p * (math.log(p) - math.log(max(q, _Q_FLOOR)))


def coarse_kl(p_top: Mapping[int, float], q_top: Mapping[int, float]) -> float:
    """KL(P || Q) in nats from the top-K lists of two distributions (llama.cpp's n_probs).

    p_top, q_top: token id -> natural-log probability of the K most likely tokens of P and Q.
    The vocabulary is partitioned into each id present in BOTH lists plus one "rest" bucket:
    ``p_rest = 1 - sum p over the shared ids``, likewise ``q_rest``. The KL of this coarse
    partition is a lower bound on the true KL (coarse-graining never increases KL) and is
    exact when both lists hold all the mass. A rest slightly below 0 from rounding counts as
    0; a bucket that P fills and Q leaves empty gets Q = 1e-12, so the result is finite.
    """
    p = _top_probabilities("p_top", p_top)
    q = _top_probabilities("q_top", q_top)
    shared = sorted(p.keys() & q.keys())
    p_rest = max(0.0, 1.0 - math.fsum(p[token] for token in shared))
    q_rest = max(0.0, 1.0 - math.fsum(q[token] for token in shared))
    terms = [_bucket_kl(p[token], q[token]) for token in shared]
    terms.append(_bucket_kl(p_rest, q_rest))
    return max(0.0, math.fsum(terms))


# --- repetition --------------------------------------------------------------------------


def repeated_ngram_rate(tokens: Sequence[str] | Sequence[int], n: int = 4) -> float:
    """The fraction of the n-grams of ``tokens`` that already occurred EARLIER in it.

    A sequence of L >= n tokens has L - n + 1 n-grams (overlapping); one counts as repeated
    when the same n tokens started at an earlier position. Returns a value in [0, 1): 0.0
    for a sequence with no repeat, and 0.0 when L < n (no n-gram at all)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MetricError(f"n: {n!r} must be an integer >= 1")
    if isinstance(tokens, str):
        raise MetricError("tokens: got a string, not a sequence of tokens (use text_repetition)")
    items: list[str | int] = list(tokens)
    total = len(items) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[str | int, ...]] = set()
    repeated = 0
    for start in range(total):
        gram = tuple(items[start : start + n])
        if gram in seen:
            repeated += 1
        seen.add(gram)
    return repeated / total


def text_repetition(text: str, n: int = 4) -> float:
    """:func:`repeated_ngram_rate` over the lower-cased words of ``text``
    (``cvgen.eval.textstats.words``): the share of its word n-grams that repeat an earlier one."""
    return repeated_ngram_rate([word.lower() for word in words(text)], n)


# --- text statistics ---------------------------------------------------------------------


@dataclass(frozen=True)
class TextStatistic:
    """A number computed from one generated text, registered under ``name``."""

    name: str
    description: str
    function: Callable[[str], float]


TEXT_STATISTICS: dict[str, TextStatistic] = {
    stat.name: stat
    for stat in (
        TextStatistic("word_length", "mean word length in letters", mean_word_length),
        TextStatistic(
            "zipf_frequency",
            "mean Zipf frequency of the words (wordfreq; lower = rarer)",
            mean_zipf_frequency,
        ),
        TextStatistic(
            "quoted_fraction", "share of characters inside double quotes", quoted_fraction
        ),
        TextStatistic("sentiment", "VADER compound sentiment score, -1 to 1", sentiment),
    )
}

# axis -> (statistic, the sign of its change when the scale rises toward the SECOND class)
_AXIS_TABLE: dict[str, tuple[tuple[str, int], ...]] = {
    "language": (("word_length", +1), ("zipf_frequency", -1)),  # simple -> ornate
    "character_focus": (("quoted_fraction", +1),),  # narration -> dialogue
    "optimism": (("sentiment", -1),),  # optimism -> nihilism
    # not compassion: VADER rates its sadistic pole kindly ("delight", "savour"); it ordered
    # only 6 of the 10 compassion probe pairs right, against 9 of 10 for optimism and empathy
    "empathy": (("sentiment", -1),),  # empathy -> sociopathy
}

AXIS_STATISTICS: dict[str, tuple[str, ...]] = {
    axis: tuple(name for name, _ in pairs) for axis, pairs in _AXIS_TABLE.items()
}


def get_statistic(name: str) -> TextStatistic:
    """The text statistic registered under ``name``; MetricError listing the valid names."""
    try:
        return TEXT_STATISTICS[name]
    except KeyError:
        valid = ", ".join(sorted(TEXT_STATISTICS))
        raise MetricError(f"unknown statistic {name!r}; choose one of: {valid}") from None


def statistics_for_axis(axis: str) -> tuple[str, ...]:
    """Names of the statistics that show ``axis`` at work; () for an axis with none."""
    return AXIS_STATISTICS.get(axis, ())


def expected_sign(axis: str, statistic: str) -> int:
    """+1 if ``statistic`` should rise as the scale of ``axis`` rises (toward its second
    class), -1 if it should fall. Multiply the values by it before :func:`bootstrap_slope`,
    whose ``wrong_sign_fraction`` takes a positive slope as intended."""
    for name, sign in _AXIS_TABLE.get(axis, ()):
        if name == statistic:
            return sign
    raise MetricError(
        f"statistic {statistic!r} is not measured on axis {axis!r}; "
        f"its statistics: {', '.join(statistics_for_axis(axis)) or 'none'}"
    )


# --- calibration -------------------------------------------------------------------------


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
    grid = _vector("scales", scales, minimum=1)
    kl_curve = _vector("kl", kl, minimum=1)
    repetition_curve = _vector("repetition", repetition, minimum=1)
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
