"""Eigenvectors of M = (A^T B + B^T A) / 2, the cross-covariance method's candidates.

`candidate_eigenvectors` gives every eigenvector that can score (exact), by a 2n x 2n problem
in the row space of [A; B] when 2n <= d, else a dense eigh; `extreme_eigenvectors` gives only
both ends of the spectrum (ARPACK, an approximation for huge models).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

from cvgen.solve.direction import SolverError, check_paired_differences

# Seed of the Krylov start vector: the iterative eigensolver is deterministic.
_KRYLOV_SEED = 20240607
# Relative residual the Krylov eigensolver must reach (ARPACK's `tol`).
_KRYLOV_TOLERANCE = 1e-10


def candidate_eigenvectors(
    negative_diffs: np.ndarray, positive_diffs: np.ndarray, eigen_candidates: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The eigenvectors of M = (A^T B + B^T A) / 2 that the cross-covariance method scores.

    negative_diffs: A (n, d); positive_diffs: B (n, d). Returns eigenvalues (m,) ascending
    and unit eigenvectors (d, m) as columns.

    eigen_candidates = 0 (exact): the candidates are every eigenvector of M that can score,
    so the method's result is that of scoring all d eigenvectors (ALGORITHM.md §3):

    - 2n <= d: M = Z^T J Z / 2 with Z = [A; B] (2n, d) and J swapping the A and B halves,
      so M has rank <= 2n and lives in the row space of Z. All 2n eigenpairs of the exact
      2n-dimensional problem are returned (m = 2n; thin QR of Z^T, then a 2n x 2n eigh).
      The d - 2n eigenvalues left out are exactly zero and their eigenvectors v are
      orthogonal to every row of A and B: A v = B v = 0, so every projection is 0, r(v) = 0
      and the step s = mean(B v) v = 0, which no compounding step can accept (even tau = 0).
    - 2n > d: a dense eigh of the explicit d x d matrix M, all d eigenpairs (m = d). It
      costs O(d^3), of the order of forming M (O(n d^2) with n > d / 2).

    eigen_candidates = k > 0 (approximation, for 2n > d only): the k lowest and k highest
    eigenpairs by :func:`extreme_eigenvectors` (ARPACK). No certificate: an eigenvector
    outside both ends is never scored, however well it separates the classes. On the
    2n <= d route all 2n are returned whatever k is (they are as cheap as k of them).
    """
    a, b = check_paired_differences(negative_diffs, positive_diffs)
    if eigen_candidates < 0:
        raise SolverError(f"eigen_candidates: {eigen_candidates} must be at least 0")
    count, dimension = a.shape
    if 2 * count <= dimension:
        return _row_space_eigenpairs(a, b, None)
    if eigen_candidates == 0:
        values, vectors = scipy.linalg.eigh(_explicit_m(a, b))
        return values, vectors
    return extreme_eigenvectors(a, b, eigen_candidates)


def extreme_eigenvectors(
    negative_diffs: np.ndarray, positive_diffs: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs at both ends of M = (A^T B + B^T A) / 2, without a full d x d eigh.

    negative_diffs: A (n, d); positive_diffs: B (n, d); k: eigenpairs wanted from EACH end.
    Returns eigenvalues (m,) in ascending order and unit eigenvectors (d, m) as columns,
    with m = 2k, or fewer when M has fewer than 2k eigenpairs worth returning:

    - 2n <= d: the exact 2n-dimensional problem (see :func:`candidate_eigenvectors`), its
      k lowest and k highest eigenpairs, so m <= 2n.
    - otherwise: ARPACK (Lanczos) on the operator v -> (A^T(Bv) + B^T(Av)) / 2, which never
      forms M; or, when d is too small for a Krylov method (d < 4k + 1), a subset eigh of
      the explicit d x d matrix (the whole spectrum only when 2k >= d asks for it).

    Scoring only these is an APPROXIMATION of the method: the trait's eigenvalue can sit
    mid-spectrum (when the negative class barely moves along it), and is then missed.
    """
    a, b = check_paired_differences(negative_diffs, positive_diffs)
    if k < 1:
        raise SolverError(f"k: {k} must be at least 1")
    count, dimension = a.shape
    if 2 * count <= dimension:
        return _row_space_eigenpairs(a, b, k)
    if dimension < 4 * k + 1:
        return _end_eigenpairs(_explicit_m(a, b), k)
    return _krylov_eigenpairs(a, b, k)


def _explicit_m(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """M = (A^T B + B^T A) / 2, (d, d), from A and B (n, d)."""
    cross = a.T @ b
    return (cross + cross.T) / 2


def _end_eigenpairs(symmetric: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The k lowest and k highest eigenpairs of a small dense symmetric (m, m) matrix; all
    m of them when k is None or 2k >= m."""
    size = symmetric.shape[0]
    if k is None or 2 * k >= size:
        values, vectors = scipy.linalg.eigh(symmetric)
        return values, vectors
    low_values, low_vectors = scipy.linalg.eigh(symmetric, subset_by_index=[0, k - 1])
    high_values, high_vectors = scipy.linalg.eigh(symmetric, subset_by_index=[size - k, size - 1])
    return np.concatenate([low_values, high_values]), np.hstack([low_vectors, high_vectors])


def _row_space_eigenpairs(
    a: np.ndarray, b: np.ndarray, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact route for 2n <= d: M = Q (R J R^T / 2) Q^T with Z^T = [A; B]^T = Q R.

    k eigenpairs from each end of the 2n x 2n problem, or all 2n when k is None."""
    count = a.shape[0]
    basis, triangle = np.linalg.qr(np.vstack([a, b]).T)  # (d, 2n), (2n, 2n)
    transposed = triangle.T  # rows are samples: J swaps the A half and the B half
    swapped = np.vstack([transposed[count:], transposed[:count]])
    small = triangle @ swapped / 2
    values, weights = _end_eigenpairs((small + small.T) / 2, k)
    return values, basis @ weights


def _krylov_eigenpairs(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k eigenpairs from each end of M by ARPACK, using only products with A and B."""
    dimension = a.shape[1]

    def apply_m(vector: np.ndarray) -> np.ndarray:
        flat = np.ravel(vector)
        return (a.T @ (b @ flat) + b.T @ (a @ flat)) / 2

    operator = LinearOperator((dimension, dimension), matvec=apply_m, dtype=np.float64)
    start = np.random.default_rng(_KRYLOV_SEED).uniform(-1.0, 1.0, dimension)
    try:
        values, vectors = eigsh(operator, k=2 * k, which="BE", v0=start, tol=_KRYLOV_TOLERANCE)
    except ArpackError as error:  # no convergence, or M v0 = 0 (for example A = 0)
        warnings.warn(
            f"ARPACK failed for d={dimension} ({error}); using a dense subset eigh instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return _end_eigenpairs(_explicit_m(a, b), k)
    order = np.argsort(values)
    return values[order], vectors[:, order]
