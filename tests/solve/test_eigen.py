"""The candidate eigenvectors of M on every route, against scipy's full eigh on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from solver_oracle import ORACLE_CASES, adversarial, assert_matches_reference, cosine, planted

from cvgen.solve import eigen
from cvgen.solve.direction import SolverOptions, fisher_ratio
from cvgen.solve.eigen import candidate_eigenvectors, extreme_eigenvectors
from cvgen.solve.methods import solve_cross_covariance


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

    monkeypatch.setattr(eigen.scipy.linalg, "eigh", recording_eigh)
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
