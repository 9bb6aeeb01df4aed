"""Tests for cvgen.solve.methods on synthetic data with planted directions, and against numpy.eigh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from conftest import require_real_model

from cvgen.solve import methods as solve
from cvgen.solve.methods import (
    DEFAULT_METHOD,
    METHODS,
    BlockDirection,
    SolverError,
    SolverOptions,
    block_features,
    candidate_eigenvectors,
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
# (n, d, eigen_candidates), one per route of `candidate_eigenvectors`:
ROUTES = {
    "exact, 2n < d (row space)": (20, 64, 0),
    "exact, 2n = d (row space)": (32, 64, 0),
    "exact, 2n > d, d small (dense eigh)": (100, 24, 0),
    "exact, 2n > d (dense eigh)": (200, 300, 0),
    "approximate, 2n < d (row space, all 2n)": (60, 300, 16),
    "approximate, 2n > d, d < 4k + 1 (subset eigh)": (100, 64, 16),
    "approximate, 2n > d, d > 4k + 1 (ARPACK)": (200, 300, 16),
}


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


def class_figures(a: np.ndarray, b: np.ndarray, unit: np.ndarray) -> tuple[float, float, float]:
    """(m_A, m_B, r) along a unit vector, written out directly from ALGORITHM.md §3."""
    pa, pb = a.astype(np.float64) @ unit, b.astype(np.float64) @ unit
    mu = np.concatenate([pa, pb]).mean()
    num = len(pa) * (pa.mean() - mu) ** 2 + len(pb) * (pb.mean() - mu) ** 2
    den = ((pa - pa.mean()) ** 2).sum() + ((pb - pb.mean()) ** 2).sum()
    return float(pa.mean()), float(pb.mean()), float(num / den)


def assert_matches_reference(found: BlockDirection | None, a: np.ndarray, b: np.ndarray) -> None:
    """found is the oracle's direction (cos > 0.9999) with the oracle's m_A, m_B and r."""
    expected = reference_cross_covariance(a, b, tau=0.5)
    assert expected is not None and found is not None
    assert cosine(found.direction, expected) > 0.9999
    mean_a, mean_b, ratio = class_figures(a, b, expected)
    assert found.mean_negative == pytest.approx(mean_a, rel=1e-4, abs=1e-6)
    assert found.mean_positive == pytest.approx(mean_b, rel=1e-4, abs=1e-6)
    assert found.fisher_ratio == pytest.approx(ratio, rel=1e-4)


def adversarial(
    n: int = 200, d: int = 96, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A case whose trait eigenvalue sits mid-spectrum; returns (A, B, trait), float64.

    20 orthonormal "together" directions (A and B move the same way, std 10: eigenvalues
    about +100 n), 20 "opposite" ones that are NOT the trait (B = -A, std 10: about -100 n,
    and r near 0 since both means are near 0), and a trait along which B moves by 1 and A
    stays at the baseline, so its eigenvalue is near 0; isotropic noise 0.3 everywhere.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, 41)))[0]
    together, opposite, trait = basis[:, :20], basis[:, 20:40], basis[:, 40]
    shared = 10.0 * rng.standard_normal((n, 20)) @ together.T
    opposed = 10.0 * rng.standard_normal((n, 20)) @ opposite.T
    a = shared + opposed + 0.3 * rng.standard_normal((n, d))
    b = shared - opposed + trait + 0.3 * rng.standard_normal((n, d))
    return a, b, trait


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


@pytest.mark.parametrize(("n", "d", "eigen_candidates"), ROUTES.values(), ids=list(ROUTES))
def test_cross_covariance_matches_reference_on_every_route(
    n: int, d: int, eigen_candidates: int
) -> None:
    a, b, trait = planted(n, d, noise=1.0, alpha=2.0, seed=7 * n + d)
    found = solve_cross_covariance(a, b, SolverOptions(eigen_candidates=eigen_candidates))
    assert_matches_reference(found, a, b)
    assert found is not None
    # noise 1.0 overfits at small n; this only checks that the trait was there to be found
    assert cosine(found.direction, trait) > 0.6


@pytest.mark.parametrize(
    ("n", "d", "eigen_candidates", "expected"),
    [(20, 64, 0, 40), (32, 64, 0, 64), (20, 64, 4, 40), (100, 24, 0, 24), (200, 300, 0, 300)]
    + [(100, 24, 4, 8), (200, 300, 16, 32)],
)
def test_candidate_counts_per_route(n: int, d: int, eigen_candidates: int, expected: int) -> None:
    a, b, _ = planted(n, d, noise=1.0, seed=n + d)
    values, vectors = candidate_eigenvectors(a, b, eigen_candidates)
    assert values.shape == (expected,) and vectors.shape == (d, expected)
    m = (a.T.astype(np.float64) @ b + b.T.astype(np.float64) @ a) / 2
    np.testing.assert_allclose(m @ vectors, vectors * values, atol=1e-8 * np.abs(values).max())
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(expected), atol=1e-8)


def test_row_space_route_leaves_out_only_zero_eigenvalues_that_cannot_score() -> None:
    n, d = 20, 64
    a, b, _ = planted(n, d, noise=1.0, seed=3)
    values, vectors = candidate_eigenvectors(a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    all_values, all_vectors = np.linalg.eigh((a64.T @ b64 + b64.T @ a64) / 2)
    scale = np.abs(all_values).max()
    # the 2n computed eigenvalues are the nonzero ones; the d - 2n others are zero
    by_size = np.argsort(np.abs(all_values))
    left_out, kept = by_size[: d - 2 * n], by_size[d - 2 * n :]
    np.testing.assert_allclose(np.sort(all_values[kept]), values, atol=1e-9 * scale)
    assert np.abs(all_values[left_out]).max() < 1e-9 * scale
    # ... and their eigenvectors project every sample to zero, so r = 0 and s = 0
    nullspace = all_vectors[:, left_out]
    assert np.abs(a64 @ nullspace).max() < 1e-6 and np.abs(b64 @ nullspace).max() < 1e-6
    assert np.abs(vectors.T @ nullspace).max() < 1e-6


def test_adversarial_trait_in_mid_spectrum_is_missed_by_the_ends_and_found_by_all() -> None:
    n, d = 200, 96
    a, b, trait = adversarial(n, d)
    k = 16
    # the old solver: only the k lowest and k highest eigenvectors are scored; none passes
    _, ends = extreme_eigenvectors(a, b, k)
    assert fisher_ratio(a @ ends, b @ ends).max() < 0.1
    assert solve_cross_covariance(a, b, SolverOptions(eigen_candidates=k)) is None
    # scoring every eigenvector finds the trait, at an eigenvalue well inside the spectrum
    values, vectors = np.linalg.eigh((a.T @ b + b.T @ a) / 2)
    ratios = fisher_ratio(a @ vectors, b @ vectors)
    assert k <= int(np.argmax(ratios)) < d - k
    assert ratios.max() > 0.5
    found = solve_cross_covariance(a, b, SolverOptions())
    assert_matches_reference(found, a, b)
    assert found is not None
    assert cosine(found.direction, trait) > 0.7  # measured 0.727
    # B moved by 1 along the trait, A stayed: measured m_B = 0.66, m_A = -0.10
    assert found.mean_positive > 0.5 and abs(found.mean_negative) < 0.2


def test_exact_route_for_2n_below_d_never_runs_a_d_by_d_eigh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = 300
    sizes: list[tuple[int, object]] = []
    original = scipy.linalg.eigh

    def recording_eigh(matrix: np.ndarray, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        sizes.append((matrix.shape[0], kwargs.get("subset_by_index")))
        return original(matrix, **kwargs)

    monkeypatch.setattr(solve.scipy.linalg, "eigh", recording_eigh)
    a, b, trait = planted(60, d, noise=0.5)
    found = solve_cross_covariance(a, b, SolverOptions())
    assert found is not None and cosine(found.direction, trait) > 0.9
    assert sizes == [(120, None)]  # one full eigh of the 2n x 2n problem
    sizes.clear()
    a, b, trait = planted(200, d, noise=0.5)
    approximate = solve_cross_covariance(a, b, SolverOptions(eigen_candidates=16))
    assert approximate is not None and cosine(approximate.direction, trait) > 0.9
    assert sizes == []  # the approximation runs ARPACK only
    exact = solve_cross_covariance(a, b, SolverOptions())
    assert exact is not None and cosine(exact.direction, approximate.direction) > 0.9999
    assert sizes == [(d, None)]  # the exact 2n > d route: one dense eigh of M


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
    with pytest.raises(SolverError) as caught:
        SolverOptions(eigen_candidates=-1)
    assert str(caught.value) == (
        "eigen_candidates: -1 must be 0 (all eigenvectors, exact) or a positive count per "
        "end of the spectrum (an approximation)"
    )
    assert SolverOptions().eigen_candidates == 0  # exact by default
    assert SolverOptions(eigen_candidates=4).eigen_candidates == 4


# --- all blocks --------------------------------------------------------------------------


def test_paired_differences() -> None:
    base = np.full((3, 2), 1.0, dtype=np.float32)
    a, b = paired_differences(base + 2, base + 5, base)
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, np.full((3, 2), 2.0))
    np.testing.assert_array_equal(b, np.full((3, 2), 5.0))
    with pytest.raises(SolverError, match="share one"):
        paired_differences(base, base[:2], base)


def test_block_features_delta_and_residual() -> None:
    h0, h1, h2 = (np.full((2, 3), v, dtype=np.float32) for v in (1.0, 3.0, 7.0))
    delta = block_features([h0, h1, h2], features="delta")
    residual = block_features([h0, h1, h2], features="residual")
    assert [d[0, 0] for d in delta] == [2.0, 4.0]
    assert [r[0, 0] for r in residual] == [3.0, 7.0]
    with pytest.raises(SolverError, match="unknown value 'sum'; choose one of: delta, residual"):
        block_features([h0, h1], features="sum")


class StoredArray:
    """A stand-in for a store array: `block(k)` reads one block of an (L, n, d) array."""

    def __init__(self, outputs: np.ndarray) -> None:
        self.outputs = outputs

    def block(self, block: int) -> np.ndarray:
        return self.outputs[block]


def stored_outputs(seed: int = 5) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Outputs h_0, h_1, h_2 (3, n, d) of each array, and the trait planted in them.

    Block 1's OWN contribution h_1 - h_0 carries the trait, but h_0 is large noise drawn
    anew for each array, so the residual h_1 hides it. Block 2 adds noise only.
    """
    rng = np.random.default_rng(seed)
    n, d = 100, 32
    a, b, trait = planted(n, d, noise=0.25)
    outputs = {}
    for name, moved in (("baseline", 0.0), ("negative", a), ("positive", b)):
        h0 = 5.0 * rng.standard_normal((n, d))
        h1 = h0 + moved + 0.1 * rng.standard_normal((n, d))
        h2 = h1 + rng.standard_normal((n, d))
        outputs[name] = np.stack([h0, h1, h2]).astype(np.float32)
    return outputs, trait


def test_solve_blocks_uses_delta_features_from_stored_outputs() -> None:
    outputs, trait = stored_outputs()
    readers = [StoredArray(outputs[name]) for name in ("negative", "positive", "baseline")]
    options = SolverOptions(tau=1.0)
    found = solve_blocks(*readers, [1, 2], features="delta", options=options)
    assert list(found) == [1]  # block 2 adds only noise
    assert isinstance(found[1], BlockDirection)
    assert cosine(found[1].direction, trait) > 0.99
    # the same features written out by hand give the same direction
    x = {name: outputs[name][1] - outputs[name][0] for name in outputs}
    by_hand = solve_cross_covariance(
        x["negative"].astype(np.float64) - x["baseline"],
        x["positive"].astype(np.float64) - x["baseline"],
        options,
    )
    assert by_hand is not None
    np.testing.assert_array_equal(found[1].direction, by_hand.direction)
    # residual features see h_1 itself, where the per-array noise of h_0 hides the trait
    assert solve_blocks(*readers, [1, 2], features="residual", options=options) == {}


def test_solve_blocks_residual_features_and_mappings() -> None:
    outputs, trait = stored_outputs()
    by_block = [dict(enumerate(outputs[name] - outputs[name][0])) for name in outputs]
    baseline, negative, positive = by_block  # h_k - h_0: block 1's residual is the trait
    found = solve_blocks(negative, positive, baseline, [1], features="residual")
    assert list(found) == [1] and cosine(found[1].direction, trait) > 0.99
    mean_diff = solve_blocks(negative, positive, baseline, [1], method="mean-diff")
    assert list(mean_diff) == [1]


def test_solve_blocks_errors_name_the_block() -> None:
    outputs, _ = stored_outputs()
    negative, positive, baseline = (
        {1: outputs[name][1], 2: outputs[name][2]} for name in ("negative", "positive", "baseline")
    )
    with pytest.raises(SolverError) as caught:
        solve_blocks(negative, positive, baseline, [1], features="delta")
    assert str(caught.value) == (
        "block 1: outputs of block 0 are missing from the given states (have [1, 2])"
    )
    with pytest.raises(SolverError, match="features: unknown value 'sum'"):
        solve_blocks(negative, positive, baseline, [2], features="sum")
    with pytest.raises(SolverError, match="unknown method 'foo'"):
        solve_blocks(negative, positive, baseline, [2], method="foo")
    with pytest.raises(SolverError, match=r"block 2: stored outputs must share one \(n, d\) sh"):
        solve_blocks({1: negative[1], 2: negative[2][:5]}, positive, baseline, [2])


# --- real states -------------------------------------------------------------------------


@pytest.mark.slow
def test_solver_matches_reference_on_real_model_states(real_store: Path) -> None:
    from cvgen.generate.settings import GenerateSettings
    from cvgen.generate.sharded import collected_states

    model = require_real_model()
    settings = GenerateSettings(model=str(model), axes=("language",), samples=24, seed=0)
    states = collected_states(settings, store_root=real_store, show_progress=False)
    arrays = [states.arrays[f"language/{pole}"] for pole in ("negative", "positive")]
    arrays.append(states.arrays["baseline"])
    blocks = states.stored_blocks[1:]
    # d = 576 > 2n = 48: the row-space route; the first 40 coordinates (2n > 40): dense eigh
    for width in (576, 40):
        expected: dict[int, np.ndarray] = {}
        for block in blocks:
            negative, positive, baseline = (
                block_features([h.block(block - 1), h.block(block)], features="delta")[0]
                for h in arrays
            )
            a, b = paired_differences(negative[:, :width], positive[:, :width], baseline[:, :width])
            reference = reference_cross_covariance(a, b, tau=0.5)
            if reference is not None:
                expected[block] = reference
                assert_matches_reference(solve_cross_covariance(a, b, SolverOptions()), a, b)
        if width == 576:
            found = solve_blocks(*arrays, blocks)
            assert sorted(found) == sorted(expected) and len(found) >= 10
            for block, direction in found.items():
                assert cosine(direction.direction, expected[block]) > 0.9999
