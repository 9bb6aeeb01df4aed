"""The statistics of an evaluation sweep: slopes against the scale, their bootstrap intervals
over items, and rank correlation. Pure functions on plain arrays, no model.

A sweep measures a control vector at several scales on the same items (writing prompts): a
statistic of each item at each scale gives a matrix ``values`` of shape (items, scales).
:func:`bootstrap_slope` fits the slope of its per-scale mean against the scale, with a
bootstrap interval over items and the fraction of items that move the wrong way;
:func:`bootstrap_mean_band` gives the band drawn around the mean curve; :func:`spearman` the
rank correlation of pooled values with the scale. The resampling is `scipy.stats.bootstrap`
(percentile intervals), the correlation `scipy.stats.spearmanr`, a single slope
`scipy.stats.linregress`.

Every function validates its input and raises :class:`MetricError` with a one-line message
naming the argument and the value. Arithmetic is float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

from cvgen.common.errors import CvgenError

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


class MetricError(CvgenError, ValueError):
    """Invalid input to a metric (shape, value, option) or an unknown statistic name."""


# --- validation --------------------------------------------------------------------------


def finite_vector(
    name: str, values: Sequence[float] | np.ndarray, *, minimum: int = 1
) -> FloatArray:
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
    array = finite_vector("x", x, minimum=2)
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

    One matrix product for all items (`scipy.stats.linregress` fits one line per call). A
    constant row gets exactly 0, not a rounding residue of either sign."""
    dx = x - x.mean()
    dy = values - values.mean(axis=1, keepdims=True)
    slopes: FloatArray = dy @ dx / (dx @ dx)
    slopes[np.ptp(values, axis=1) == 0.0] = 0.0
    return slopes


def least_squares_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Ordinary least-squares slope of ``y`` against ``x`` (`scipy.stats.linregress`), both
    1-D of the same length n. Needs at least 2 distinct x values; every value must be finite."""
    xs = _scale_axis(x)
    ys = finite_vector("y", y)
    if ys.size != xs.size:
        raise MetricError(f"y: has {ys.size} values but x has {xs.size}")
    if np.ptp(ys) == 0.0:
        return 0.0  # exactly flat, not a rounding residue
    return float(scipy.stats.linregress(xs, ys).slope)


def item_slopes(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The least-squares slope of each item: ``x`` (scales,), ``values`` (items, scales) ->
    (items,) float64. Vectorised; a constant item has slope exactly 0."""
    xs = _scale_axis(x)
    return _centred_slopes(xs, _matrix("values", values, columns=xs.size))


def _bootstrap_mean_interval(
    rows: FloatArray, resamples: int, seed: int, level: float
) -> tuple[FloatArray, FloatArray]:
    """The central ``level`` percentile interval of the mean of ``rows`` (items, ...) over
    items, from ``resamples`` bootstrap resamples of the items (seeded), for each trailing
    entry: two arrays shaped ``rows.shape[1:]``. One item, or identical items, give the mean
    itself at both ends."""
    means = rows.mean(axis=0)
    if rows.shape[0] < 2 or bool(np.all(rows == rows[0])):
        return means.copy(), means.copy()  # nothing varies: scipy refuses a single item
    result = scipy.stats.bootstrap(
        (rows,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        axis=0,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low = np.asarray(result.confidence_interval.low, dtype=np.float64)
    high = np.asarray(result.confidence_interval.high, dtype=np.float64)
    return low, high


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
    low, high = _bootstrap_mean_interval(slopes, resamples, seed, level)
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
    return _bootstrap_mean_interval(matrix, resamples, seed, level)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two 1-D sequences of the same length (>= 2), in [-1, 1]
    (`scipy.stats.spearmanr`: ties get their average rank). NaN when either side is constant
    (the correlation is undefined)."""
    xs = finite_vector("x", x, minimum=2)
    ys = finite_vector("y", y, minimum=2)
    if ys.size != xs.size:
        raise MetricError(f"y: has {ys.size} values but x has {xs.size}")
    if np.ptp(xs) == 0.0 or np.ptp(ys) == 0.0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        correlation = float(scipy.stats.spearmanr(xs, ys).statistic)
    return max(-1.0, min(1.0, correlation))
