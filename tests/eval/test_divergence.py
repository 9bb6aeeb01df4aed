"""cvgen.eval.divergence: KL from full distributions and from top-K lists, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special

from cvgen.eval.divergence import coarse_kl, kl_divergence
from cvgen.eval.statistics import MetricError


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
