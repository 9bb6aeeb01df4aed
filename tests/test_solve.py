"""Tests for cvgen.solve on synthetic data with planted directions, and against numpy.eigh."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from cvgen import solve
from cvgen.solve import (
    DEFAULT_METHOD,
    METHODS,
    BlockDirection,
    SolverError,
    SolverOptions,
    extreme_eigenvectors,
    fisher_ratio,
    get_method,
    paired_differences,
    solve_blocks,
    solve_cross_covariance,
)

# (n, d, noise): a well-sampled case and a rank-limited one (2n < d).
PLANTED_CASES = [(200, 64, 0.25), (20, 256, 0.05)]
# (n, d): both regimes (2n < d and 2n > d) at d = 64 and d = 300.
ORACLE_CASES = [(20, 64), (100, 64), (60, 300), (200, 300)]


def planted(
    n: int, d: int, *, alpha: float = 2.0, noise: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A = c - alpha p + noise, B = c + alpha p + noise, float32; returns (A, B, p).

    c is a common shift (both prompts move the state that way), orthogonal to the unit
    trait axis p so that p is exactly an eigenvector of the noise-free M.
    """
    rng = np.random.default_rng(seed)
    trait = rng.standard_normal(d)
    trait /= np.linalg.norm(trait)
    shift = rng.standard_normal(d)
    shift -= (shift @ trait) * trait
    shift *= 3.0 / np.linalg.norm(shift)
    negative = shift - alpha * trait + noise * rng.standard_normal((n, d))
    positive = shift + alpha * trait + noise * rng.standard_normal((n, d))
    return negative.astype(np.float32), positive.astype(np.float32), trait


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    u64, v64 = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return float(u64 @ v64 / (np.linalg.norm(u64) * np.linalg.norm(v64)))


def reference_cross_covariance(a: np.ndarray, b: np.ndarray, tau: float) -> np.ndarray | None:
    """ALGORITHM.md §3 written out directly, scoring ALL eigenvectors of the explicit M."""
    a, b = a.astype(np.float64), b.astype(np.float64)

    def ratio(v: np.ndarray) -> float:
        pa, pb = a @ v, b @ v
        mu = np.concatenate([pa, pb]).mean()
        num = len(pa) * (pa.mean() - mu) ** 2 + len(pb) * (pb.mean() - mu) ** 2
        den = ((pa - pa.mean()) ** 2).sum() + ((pb - pb.mean()) ** 2).sum()
        return float(num / den) if den > 0 else 0.0

    c = a.T @ b
    _, vectors = np.linalg.eigh((c + c.T) / 2)
    scored = [(ratio(v), (b @ v).mean() * v) for v in vectors.T]
    passing = sorted((item for item in scored if item[0] >= tau), key=lambda item: -item[0])
    total, best = np.zeros(a.shape[1]), 0.0
    for _, s in passing:
        trial = total + s
        r = ratio(trial / np.linalg.norm(trial))
        if r > best + tau:
            total, best = trial, r
    return None if best == 0.0 else total / np.linalg.norm(total)


# --- planted directions ------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(("n", "d", "noise"), PLANTED_CASES)
def test_every_method_recovers_planted_direction_with_sign(
    method: str, n: int, d: int, noise: float
) -> None:
    a, b, trait = planted(n, d, noise=noise)
    found = get_method(method)(a, b, SolverOptions())
    assert found is not None
    u = found.direction
    assert u.dtype == np.float32 and u.shape == (d,)
    assert np.linalg.norm(u.astype(np.float64)) == pytest.approx(1.0, abs=1e-6)
    assert cosine(u, trait) > 0.99  # sign included: not abs
    projection = u.astype(np.float64)
    assert found.mean_positive == pytest.approx(float((b @ projection).mean()), rel=1e-5)
    assert found.mean_negative == pytest.approx(float((a @ projection).mean()), rel=1e-5)
    assert found.mean_positive > found.mean_negative
    assert found.mean_positive == pytest.approx(2.0, rel=0.05)  # alpha
    assert found.mean_negative == pytest.approx(-2.0, rel=0.05)
    assert found.fisher_ratio > 10


@pytest.mark.parametrize("method", sorted(METHODS))
def test_swapping_classes_flips_the_direction(method: str) -> None:
    a, b, trait = planted(200, 64)
    found = get_method(method)(b, a, SolverOptions())
    assert found is not None
    assert cosine(found.direction, trait) < -0.99


def test_debias_positive_negative_arithmetic() -> None:
    a, b, _ = planted(200, 64)
    found = solve_cross_covariance(a, b, SolverOptions())
    assert found is not None
    u = found.direction.astype(np.float64)
    assert found.debias.dtype == found.positive.dtype == found.negative.dtype == np.float32
    np.testing.assert_allclose(found.debias + found.positive, found.mean_positive * u, atol=1e-6)
    np.testing.assert_allclose(found.debias + found.negative, found.mean_negative * u, atol=1e-6)
    np.testing.assert_array_equal(found.negative, -found.positive)
    mid = (found.mean_negative + found.mean_positive) / 2
    np.testing.assert_allclose(found.debias, mid * u, atol=1e-7)


def test_direction_is_read_only() -> None:
    a, b, _ = planted(200, 64)
    found = solve_cross_covariance(a, b, SolverOptions())
    assert found is not None
    with pytest.raises(ValueError, match="read-only"):
        found.direction[0] = 1.0


# --- oracle: partial eigensolver against numpy.linalg.eigh -------------------------------


@pytest.mark.parametrize("k", [4, 16])
@pytest.mark.parametrize(("n", "d"), ORACLE_CASES)
def test_extreme_eigenvectors_match_full_eigh(n: int, d: int, k: int) -> None:
    a, b, _ = planted(n, d, noise=1.0, seed=n + d)
    values, vectors = extreme_eigenvectors(a, b, k)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    all_values, all_vectors = np.linalg.eigh((a64.T @ b64 + b64.T @ a64) / 2)
    ends = np.r_[0:k, d - k : d]
    assert values.shape == (2 * k,) and vectors.shape == (d, 2 * k)
    scale = np.abs(all_values).max()
    np.testing.assert_allclose(values, all_values[ends], rtol=0, atol=1e-9 * scale)
    cosines = np.abs(np.sum(vectors * all_vectors[:, ends], axis=0))
    assert cosines.min() > 0.9999


@pytest.mark.parametrize(("n", "d"), ORACLE_CASES)
def test_cross_covariance_matches_reference_over_all_eigenvectors(n: int, d: int) -> None:
    a, b, trait = planted(n, d, noise=1.0, alpha=2.0, seed=7 * n + d)
    expected = reference_cross_covariance(a, b, tau=0.5)
    found = solve_cross_covariance(a, b, SolverOptions(tau=0.5))
    assert expected is not None and found is not None
    assert cosine(found.direction, expected) > 0.9999
    # noise 1.0 overfits at small n; this only checks that the trait was there to be found
    assert cosine(found.direction, trait) > 0.6


def test_default_route_never_runs_a_full_d_by_d_eigh(monkeypatch: pytest.MonkeyPatch) -> None:
    d = 300
    original = scipy.linalg.eigh

    def guarded_eigh(matrix: np.ndarray, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        if matrix.shape[0] >= d and kwargs.get("subset_by_index") is None:
            raise AssertionError(f"full eigh of a {matrix.shape} matrix")
        return original(matrix, **kwargs)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("numpy.linalg.eigh called")

    monkeypatch.setattr(solve.scipy.linalg, "eigh", guarded_eigh)
    monkeypatch.setattr(np.linalg, "eigh", refuse)
    for n in (60, 200):  # the exact 2n route and the Krylov route
        a, b, trait = planted(n, d, noise=0.5)
        found = solve_cross_covariance(a, b, SolverOptions())
        assert found is not None and cosine(found.direction, trait) > 0.9


def test_compounding_combines_two_candidates() -> None:
    # The trait moves 60% of the samples along e0 and 40% along e1. M then has two separate
    # negative eigenvectors, e0 and e1; each alone separates the classes (r about 1.3),
    # their weighted sum s0 + s1 = 0.6 e0 + 0.4 e1 far better (r about 9 > 1.3 + tau).
    rng = np.random.default_rng(3)
    n, d = 300, 64
    e0, e1 = np.linalg.qr(rng.standard_normal((d, 2)))[0].T
    moves = np.where((np.arange(n) < 0.6 * n)[:, None], e0, e1)
    a = -moves + 0.2 * rng.standard_normal((n, d))
    b = moves + 0.2 * rng.standard_normal((n, d))
    found = solve_cross_covariance(a, b, SolverOptions(tau=0.5))
    expected = reference_cross_covariance(a, b, tau=0.5)
    assert found is not None and expected is not None
    assert cosine(found.direction, expected) > 0.9999
    assert cosine(found.direction, 0.6 * e0 + 0.4 * e1) > 0.99
    assert found.fisher_ratio > 5


def test_compounding_rejects_a_step_that_gains_less_than_tau() -> None:
    # 60% of the samples move along e0, 40% along 0.3 e1; noise 0.05. Then r(e0) ~ 1.49,
    # r(e1) ~ 0.60 and r(normalise(s0 + s1)) ~ 1.81: a gain of ~ 0.33, below tau = 0.5 but
    # above tau = 0.2.
    rng = np.random.default_rng(4)
    n, d = 400, 32
    e0, e1 = np.linalg.qr(rng.standard_normal((d, 2)))[0].T
    moves = np.where((np.arange(n) < 0.6 * n)[:, None], e0, 0.3 * e1)
    a = -moves + 0.05 * rng.standard_normal((n, d))
    b = moves + 0.05 * rng.standard_normal((n, d))
    single = solve_cross_covariance(a, b, SolverOptions(tau=0.5))
    assert single is not None
    assert cosine(single.direction, e0) > 0.999
    assert single.fisher_ratio == pytest.approx(1.49, abs=0.1)
    combined = solve_cross_covariance(a, b, SolverOptions(tau=0.2))
    assert combined is not None
    assert cosine(combined.direction, 0.6 * e0 + 0.12 * e1) > 0.999
    assert combined.fisher_ratio == pytest.approx(1.81, abs=0.1)
    for tau, found in ((0.5, single), (0.2, combined)):
        expected = reference_cross_covariance(a, b, tau=tau)
        assert expected is not None and cosine(found.direction, expected) > 0.9999


# --- Fisher ratio ------------------------------------------------------------------------


def test_fisher_ratio_hand_computed() -> None:
    # Column 0: a = [1, 3], b = [5, 6, 7]; mu = 22/5 = 4.4;
    #   between = 2 (2 - 4.4)^2 + 3 (6 - 4.4)^2 = 11.52 + 7.68 = 19.2; within = 2 + 2 = 4.
    # Column 1: a = [0, 0], b = [1, 1, 1]: between = 1.2, within = 0 -> inf.
    # Column 2: all projections equal: 0 / 0 -> 0.
    # Column 3: a = [1, -1], b = [2, 0, -2]: equal means -> 0 / 10 = 0.
    a = np.array([[1.0, 0.0, 2.0, 1.0], [3.0, 0.0, 2.0, -1.0]])
    b = np.array([[5.0, 1.0, 2.0, 2.0], [6.0, 1.0, 2.0, 0.0], [7.0, 1.0, 2.0, -2.0]])
    ratios = fisher_ratio(a, b)
    assert ratios.shape == (4,)
    assert ratios[0] == pytest.approx(19.2 / 4, rel=1e-12)
    assert ratios[1] == np.inf
    assert ratios[2] == 0.0
    assert ratios[3] == 0.0


def test_fisher_ratio_rejects_mismatched_candidates() -> None:
    with pytest.raises(SolverError, match=r"\(n_A, k\) and \(n_B, k\); got \(2, 3\) and \(2, 2\)"):
        fisher_ratio(np.zeros((2, 3)), np.zeros((2, 2)))


# --- no signal, errors, registry ---------------------------------------------------------


def test_pure_noise_gives_no_cross_covariance_direction() -> None:
    rng = np.random.default_rng(11)
    a = rng.standard_normal((200, 64)).astype(np.float32)
    b = rng.standard_normal((200, 64)).astype(np.float32)
    assert solve_cross_covariance(a, b, SolverOptions(tau=1.0)) is None
    # the same call finds the trait once one is planted, so None above is not a constant
    a_planted, b_planted, _ = planted(200, 64)
    assert solve_cross_covariance(a_planted, b_planted, SolverOptions(tau=1.0)) is not None


@pytest.mark.parametrize("method", ["mean-diff", "pca-diff"])
def test_degenerate_direction_gives_none(method: str) -> None:
    zeros = np.zeros((10, 8), dtype=np.float32)
    assert get_method(method)(zeros, zeros, SolverOptions()) is None


def test_get_method_unknown_name_lists_valid_names() -> None:
    with pytest.raises(SolverError) as caught:
        get_method("foo")
    assert str(caught.value) == (
        "unknown method 'foo'; choose one of: cross-covariance, mean-diff, pca-diff"
    )


def test_registry() -> None:
    assert get_method(DEFAULT_METHOD) is solve_cross_covariance
    assert get_method("mean-diff") is solve.solve_mean_diff
    assert get_method("pca-diff") is solve.solve_pca_diff


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(SolverError, match=r"same shape .*got \(10, 8\) and \(9, 8\)"):
        solve_cross_covariance(np.ones((10, 8)), np.ones((9, 8)), SolverOptions())


def test_non_finite_input_is_rejected() -> None:
    a = np.ones((10, 8))
    a[3, 2] = np.nan
    with pytest.raises(SolverError, match="finite"):
        solve.solve_mean_diff(a, np.ones((10, 8)), SolverOptions())


def test_options_are_validated() -> None:
    with pytest.raises(SolverError, match="tau: -1"):
        SolverOptions(tau=-1.0)
    with pytest.raises(SolverError, match="eigen_candidates: 0 must be at least 1"):
        SolverOptions(eigen_candidates=0)


# --- all blocks --------------------------------------------------------------------------


def test_paired_differences() -> None:
    base = np.full((3, 2), 1.0, dtype=np.float32)
    a, b = paired_differences(base + 2, base + 5, base)
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, np.full((3, 2), 2.0))
    np.testing.assert_array_equal(b, np.full((3, 2), 5.0))
    with pytest.raises(SolverError, match="share one"):
        paired_differences(base, base[:2], base)


def test_solve_blocks_skips_blocks_without_signal() -> None:
    rng = np.random.default_rng(5)
    n, d = 100, 32
    base = rng.standard_normal((2, n, d)).astype(np.float32)
    a, b, trait = planted(n, d, noise=0.25)
    noise = rng.standard_normal((2, n, d)).astype(np.float32)
    negative = base + np.stack([a, noise[0]])
    positive = base + np.stack([b, noise[1]])
    found = solve_blocks(negative, positive, base, options=SolverOptions(tau=1.0))
    assert list(found) == [0]
    assert isinstance(found[0], BlockDirection)
    assert cosine(found[0].direction, trait) > 0.99
    by_mapping = solve_blocks({3: negative[0]}, {3: positive[0]}, {3: base[0]}, method="mean-diff")
    assert list(by_mapping) == [3]
    with pytest.raises(SolverError, match="block 7: missing"):
        solve_blocks({7: negative[0]}, {}, {7: base[0]})
