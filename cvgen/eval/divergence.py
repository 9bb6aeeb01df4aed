"""How far a steered model's next-token distributions are from the unsteered model's:
KL(P || Q) in nats, from full distributions (:func:`kl_divergence`, transformers) or from the
top-K lists llama.cpp reports (:func:`coarse_kl`, a lower bound). Terms are
`scipy.special.rel_entr`; errors are `MetricError`s naming the argument and the value."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.special import logsumexp, rel_entr

from cvgen.eval.statistics import FloatArray, MetricError

# A row of log-probabilities whose total mass is off by more than this is not a distribution.
_NORMALISATION_TOLERANCE = 1e-3
# Top-K probabilities may sum a little past 1 from float32 rounding; more is bad input.
_MASS_TOLERANCE = 1e-4
# The probability given to an empty bucket of Q that P still puts mass on (coarse_kl).
_Q_FLOOR = 1e-12
# Rows of kl_divergence processed at once, to bound float64 temporaries on large vocabularies.
_KL_ROW_CHUNK = 64


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
    """Per row: sum of `rel_entr(p, q)` = p * log(p / q), 0 where p == 0, +inf where q == 0 < p.
    (A q below exp(-745) underflows to 0 and counts as 0: a float32 log-softmax never gets
    there.)"""
    terms = rel_entr(np.exp(log_p), np.exp(log_q))
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
    p_buckets = np.array([*(p[token] for token in shared), p_rest], dtype=np.float64)
    q_buckets = np.array([*(q[token] for token in shared), q_rest], dtype=np.float64)
    terms = rel_entr(p_buckets, np.maximum(q_buckets, _Q_FLOOR))
    return max(0.0, math.fsum(terms.tolist()))
