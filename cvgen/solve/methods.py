"""Per-block solvers: turn paired activation differences into one steering direction.

The input for one decoder block is two arrays of paired differences (ALGORITHM.md §3)::

    A = X_neg - X_base   (n, d)   how the negative prompt moves the state
    B = X_pos - X_base   (n, d)   how the positive prompt moves the state

Row i of ``A`` and row i of ``B`` come from the same sample. Every method maps
``(A, B, options)`` to a :class:`BlockDirection` (a unit vector and the mean projection of
each class on it), or to ``None`` when the block has no usable direction. Methods sit in
:data:`METHODS` under their public names and :func:`get_method` looks one up.

Inputs may be float32; all arithmetic is float64, and directions come back as float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

from cvgen.common.errors import CvgenError

# what a block's solver sees: the block's own contribution h_k - h_(k-1), or the residual h_k
FEATURES = ("delta", "residual")

__all__ = [
    "DEFAULT_METHOD",
    "FEATURES",
    "METHODS",
    "BlockDirection",
    "BlockReader",
    "SolveMethod",
    "SolverError",
    "SolverOptions",
    "StoredOutputs",
    "block_features",
    "candidate_eigenvectors",
    "extreme_eigenvectors",
    "fisher_ratio",
    "get_method",
    "paired_differences",
    "solve_blocks",
    "solve_cross_covariance",
    "solve_mean_diff",
    "solve_pca_diff",
]

# Seed of the Krylov start vector: the iterative eigensolver is deterministic.
_KRYLOV_SEED = 20240607
# Relative residual the Krylov eigensolver must reach (ARPACK's `tol`).
_KRYLOV_TOLERANCE = 1e-10
# A direction whose norm is below this fraction of the data's largest entry is degenerate.
_RELATIVE_ZERO = 1e-12


class SolverError(CvgenError, ValueError):
    """Invalid solver input (shapes, values, options) or an unknown method name."""


@dataclass(frozen=True)
class SolverOptions:
    """Settings shared by all solve methods.

    tau: Fisher-ratio threshold (ALGORITHM.md §3). A cross-covariance candidate needs
        r >= tau to be considered, and each accepted step must raise r by more than tau.
        The mean-diff and pca-diff methods do not use it.
    eigen_candidates: 0 (the default) scores EVERY eigenvector of M, which is the published
        method exactly (see :func:`candidate_eigenvectors`). A positive k is an explicit
        APPROXIMATION for huge models with more samples than half the width (2n > d): only
        the k most negative and k most positive eigenvectors are scored, found by ARPACK,
        and a trait whose eigenvalue sits mid-spectrum is then missed. It changes nothing
        when 2n <= d, where all 2n candidates are always scored.
    """

    tau: float = 0.5
    eigen_candidates: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.tau) and self.tau >= 0):
            raise SolverError(f"tau: {self.tau} must be a finite number >= 0")
        if self.eigen_candidates < 0:
            raise SolverError(
                f"eigen_candidates: {self.eigen_candidates} must be 0 (all eigenvectors, "
                "exact) or a positive count per end of the spectrum (an approximation)"
            )


@dataclass(frozen=True, eq=False)
class BlockDirection:
    """The solved direction of one block and the class means along it.

    direction: unit vector u, float32, shape (d,), read-only.
    mean_negative: m_A = mean(A u).
    mean_positive: m_B = mean(B u).
    fisher_ratio: r(u), the Fisher ratio of the projections A u and B u.

    ``eq=False``: instances compare by identity (an array field has no plain equality).
    """

    direction: np.ndarray
    mean_negative: float
    mean_positive: float
    fisher_ratio: float

    @property
    def midpoint(self) -> float:
        """mid = (m_A + m_B) / 2."""
        return (self.mean_negative + self.mean_positive) / 2

    @property
    def debias(self) -> np.ndarray:
        """mid * u, float32 (d,): the shift both classes share along u."""
        return self._scaled(self.midpoint)

    @property
    def positive(self) -> np.ndarray:
        """(m_B - mid) * u, float32 (d,): debias + positive reproduces the mean of B u."""
        return self._scaled(self.mean_positive - self.midpoint)

    @property
    def negative(self) -> np.ndarray:
        """(m_A - mid) * u = -positive, float32 (d,)."""
        return self._scaled(self.mean_negative - self.midpoint)

    def _scaled(self, scale: float) -> np.ndarray:
        return (scale * self.direction.astype(np.float64)).astype(np.float32)


SolveMethod = Callable[[np.ndarray, np.ndarray, SolverOptions], BlockDirection | None]


# --- input checks -------------------------------------------------------------------------


def _as_pair(negative_diffs: np.ndarray, positive_diffs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Validate paired differences A, B (both (n, d), finite); return them as float64."""
    a = np.asarray(negative_diffs, dtype=np.float64)
    b = np.asarray(positive_diffs, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise SolverError(f"A and B must be 2-D (n, d); got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise SolverError(
            f"A and B must have the same shape (rows paired by index); got {a.shape} and {b.shape}"
        )
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise SolverError(f"A and B need at least one sample and one dimension; got {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise SolverError("A and B must be finite (found NaN or infinity)")
    return a, b


def _data_scale(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(np.abs(a).max(), np.abs(b).max()))


def _unit_or_none(vector: np.ndarray, scale: float) -> np.ndarray | None:
    """vector / |vector|, or None when its norm is zero relative to `scale`."""
    norm = float(np.linalg.norm(vector))
    if not norm > _RELATIVE_ZERO * scale:
        return None
    return vector / norm


# --- Fisher ratio ------------------------------------------------------------------------


def fisher_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fisher discriminant ratio of k candidates, exactly as in ALGORITHM.md §3.

    a: (n_A, k) projections of the negative class; b: (n_B, k) of the positive class.
    Returns (k,) ratios::

        r = [n_A (mean(a) - mu)^2 + n_B (mean(b) - mu)^2]
            / [sum (a - mean(a))^2 + sum (b - mean(b))^2]

    with mu the mean of all n_A + n_B projections. A zero denominator gives inf when the
    numerator is positive (perfect separation) and 0 when it is zero too.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise SolverError(f"a and b must be (n_A, k) and (n_B, k); got {a.shape} and {b.shape}")
    if a.shape[0] < 1 or b.shape[0] < 1:
        raise SolverError(f"each class needs at least one projection; got {a.shape}, {b.shape}")
    count_a, count_b = a.shape[0], b.shape[0]
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    mu = (a.sum(axis=0) + b.sum(axis=0)) / (count_a + count_b)
    between = count_a * (mean_a - mu) ** 2 + count_b * (mean_b - mu) ** 2
    within = ((a - mean_a) ** 2).sum(axis=0) + ((b - mean_b) ** 2).sum(axis=0)
    ratio = np.where(between > 0, np.inf, 0.0)
    np.divide(between, within, out=ratio, where=within > 0)
    return ratio


def _ratio_along(a: np.ndarray, b: np.ndarray, unit: np.ndarray) -> float:
    """r(u) for one unit vector u (d,)."""
    return float(fisher_ratio((a @ unit)[:, None], (b @ unit)[:, None])[0])


# --- candidate eigenvectors --------------------------------------------------------------


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
    a, b = _as_pair(negative_diffs, positive_diffs)
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
    a, b = _as_pair(negative_diffs, positive_diffs)
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


# --- methods -----------------------------------------------------------------------------


def _block_direction(unit: np.ndarray, a: np.ndarray, b: np.ndarray) -> BlockDirection:
    """Package unit vector u (d,) with m_A, m_B and r(u), all measured on the float32 u."""
    direction = unit.astype(np.float32)
    direction.setflags(write=False)
    exact = direction.astype(np.float64)
    projections_a, projections_b = a @ exact, b @ exact
    return BlockDirection(
        direction=direction,
        mean_negative=float(projections_a.mean()),
        mean_positive=float(projections_b.mean()),
        fisher_ratio=float(fisher_ratio(projections_a[:, None], projections_b[:, None])[0]),
    )


def _compound(a: np.ndarray, b: np.ndarray, steps: np.ndarray, tau: float) -> np.ndarray | None:
    """Greedy compounding of §3: steps (d, m) are the weighted candidates s, best first.

    S = 0, best = 0; for each s: S' = S + s, u' = S'/|S'|; accept when r(u') > best + tau.
    Returns u = S/|S| (d,), or None when no step was accepted.
    """
    total = np.zeros(steps.shape[0])
    best = 0.0
    accepted = False
    for step in steps.T:
        trial = total + step
        norm = float(np.linalg.norm(trial))
        if norm == 0.0:
            continue
        ratio = _ratio_along(a, b, trial / norm)
        if ratio > best + tau:
            total, best, accepted = trial, ratio, True
    if not accepted:
        return None
    return total / np.linalg.norm(total)


def solve_cross_covariance(
    negative_diffs: np.ndarray, positive_diffs: np.ndarray, options: SolverOptions
) -> BlockDirection | None:
    """The default method: candidates from M = (A^T B + B^T A)/2, chosen by Fisher ratio.

    negative_diffs: A (n, d); positive_diffs: B (n, d). Candidates are the eigenvectors
    of M given by :func:`candidate_eigenvectors`: by default every one that can score, so
    the result is the published method's; `options.eigen_candidates` > 0 trades that for
    speed on huge models. Each candidate v is scored by r(v) on a = A v, b = B v;
    those with r >= tau are sorted by r, descending, weighted as s = mean(b) * v and
    compounded greedily (see :func:`_compound`). Returns None when no step is accepted.

    Sign: s = mean(b) * v makes the positive class project positively, so the first accepted
    candidate gives m_B = |mean(b)| > 0. The sign is not flipped afterwards; on data with a
    trait the negative class then projects below it (m_A < m_B).
    """
    a, b = _as_pair(negative_diffs, positive_diffs)
    _, candidates = candidate_eigenvectors(a, b, options.eigen_candidates)
    projections_b = b @ candidates
    ratios = fisher_ratio(a @ candidates, projections_b)
    passing = np.flatnonzero(ratios >= options.tau)
    order = passing[np.argsort(-ratios[passing], kind="stable")]
    steps = candidates[:, order] * projections_b[:, order].mean(axis=0)
    unit = _compound(a, b, steps, options.tau)
    return None if unit is None else _block_direction(unit, a, b)


def _oriented_direction(vector: np.ndarray, a: np.ndarray, b: np.ndarray) -> BlockDirection | None:
    """Normalise, then fix the sign by projection so that mean(B u) - mean(A u) > 0.

    None when the vector has zero norm, or separates the classes by exactly zero.
    """
    unit = _unit_or_none(vector, _data_scale(a, b))
    if unit is None:
        return None
    separation = float((b @ unit).mean() - (a @ unit).mean())
    if separation == 0.0:
        return None
    return _block_direction(unit if separation > 0 else -unit, a, b)


def solve_mean_diff(
    negative_diffs: np.ndarray, positive_diffs: np.ndarray, options: SolverOptions
) -> BlockDirection | None:
    """u = normalise(mean(B) - mean(A)), as llama.cpp's "mean" method; `options` unused.

    negative_diffs: A (n, d); positive_diffs: B (n, d). None if the means coincide.
    """
    a, b = _as_pair(negative_diffs, positive_diffs)
    return _oriented_direction(b.mean(axis=0) - a.mean(axis=0), a, b)


def solve_pca_diff(
    negative_diffs: np.ndarray, positive_diffs: np.ndarray, options: SolverOptions
) -> BlockDirection | None:
    """u = top right singular vector of the UNCENTRED paired differences D = B - A.

    negative_diffs: A (n, d); positive_diffs: B (n, d); `options` unused. Uncentred on
    purpose: the trait moves every pair the same way, so it lives in the mean of D;
    centring would remove exactly that consistent shift and leave only the spread.
    The sign is fixed by projection (mean(B u) > mean(A u)). None if D is zero.
    """
    a, b = _as_pair(negative_diffs, positive_diffs)
    return _oriented_direction(_top_right_singular_vector(b - a), a, b)


def _top_right_singular_vector(matrix: np.ndarray) -> np.ndarray:
    """Top right singular vector (d,) of an (n, d) matrix, unnormalised (norm = sigma_1
    on the n <= d route), from the smaller Gram matrix."""
    count, dimension = matrix.shape
    if count <= dimension:
        last = count - 1
        _, left = scipy.linalg.eigh(matrix @ matrix.T, subset_by_index=[last, last])
        return matrix.T @ left[:, 0]
    last = dimension - 1
    _, right = scipy.linalg.eigh(matrix.T @ matrix, subset_by_index=[last, last])
    return right[:, 0] * np.linalg.norm(matrix @ right[:, 0])


METHODS: dict[str, SolveMethod] = {
    "cross-covariance": solve_cross_covariance,
    "mean-diff": solve_mean_diff,
    "pca-diff": solve_pca_diff,
}
DEFAULT_METHOD = "cross-covariance"


def get_method(name: str) -> SolveMethod:
    """The solve method registered under `name`; SolverError listing the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(METHODS))
        raise SolverError(f"unknown method {name!r}; choose one of: {valid}") from None


# --- all blocks --------------------------------------------------------------------------


class BlockReader(Protocol):
    """Anything whose `block(k)` gives the stored (n, d) outputs h_k of block k, such as a
    store array (`cvgen.extract.store.StateArray`) or shards merged in sample order."""

    def block(self, block: int) -> np.ndarray: ...


StoredOutputs = Mapping[int, np.ndarray] | BlockReader


def block_features(outputs: Sequence[np.ndarray], *, features: str) -> list[np.ndarray]:
    """Per-block features from stored outputs h_{k-1}, h_k, ..., h_last (each (n, d)).

    "delta": x_k = h_k - h_{k-1}, the block's own contribution (the default);
    "residual": x_k = h_k. Returns one (n, d) float32 array per block k (the first stored
    output is only the reference h_{k-1} of the first block).
    """
    _check_features(features)
    shapes = {np.shape(h) for h in outputs}
    if len(shapes) > 1:
        raise SolverError(f"stored outputs must share one (n, d) shape; got {sorted(shapes)}")
    if features == "residual":
        return [np.asarray(h, dtype=np.float32) for h in outputs[1:]]
    return [
        np.asarray(current, dtype=np.float32) - np.asarray(previous, dtype=np.float32)
        for previous, current in zip(outputs[:-1], outputs[1:], strict=False)
    ]


def paired_differences(
    negative: np.ndarray, positive: np.ndarray, baseline: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A = negative - baseline and B = positive - baseline, float64, each (n, d).

    negative, positive, baseline: features of one block, (n, d) each, rows paired by index.
    """
    shapes = {np.shape(negative), np.shape(positive), np.shape(baseline)}
    if len(shapes) != 1:
        raise SolverError(
            "negative, positive and baseline states must share one (n, d) shape; got "
            f"{np.shape(negative)}, {np.shape(positive)}, {np.shape(baseline)}"
        )
    base = np.asarray(baseline, dtype=np.float64)
    negative_diffs = np.asarray(negative, dtype=np.float64) - base
    positive_diffs = np.asarray(positive, dtype=np.float64) - base
    return negative_diffs, positive_diffs


def _stored_output(states: StoredOutputs, block: int) -> np.ndarray:
    """h_block (n, d) from a mapping or a reader; SolverError when a mapping lacks it."""
    if not isinstance(states, Mapping):
        return states.block(block)
    if block not in states:
        raise SolverError(
            f"outputs of block {block} are missing from the given states (have {sorted(states)})"
        )
    return np.asarray(states[block])


def _features_at(states: StoredOutputs, block: int, features: str) -> np.ndarray:
    """x_block (n, d) float32: h_block for "residual", h_block - h_(block-1) for "delta"."""
    if features == "residual":
        return np.asarray(_stored_output(states, block), dtype=np.float32)
    outputs = [_stored_output(states, block - 1), _stored_output(states, block)]
    return block_features(outputs, features="delta")[0]


def _check_features(features: str) -> None:
    if features not in FEATURES:
        raise SolverError(
            f"features: unknown value {features!r}; choose one of: {', '.join(FEATURES)}"
        )


def solve_blocks(
    negative: StoredOutputs,
    positive: StoredOutputs,
    baseline: StoredOutputs,
    blocks: Sequence[int],
    *,
    features: str = "delta",
    method: str = DEFAULT_METHOD,
    options: SolverOptions | None = None,
) -> dict[int, BlockDirection]:
    """Solve each of `blocks` from stored block outputs: -> {block: BlockDirection}.

    negative, positive, baseline: the stored outputs h_k of each block k, (n, d) each, as
    a mapping block -> array or a :class:`BlockReader`; rows are paired by index.
    features: "delta" (x_k = h_k - h_(k-1); needs block k - 1 stored too) or "residual"
    (x_k = h_k). For each block, A = x_neg - x_base and B = x_pos - x_base (float64) go
    to `method`. Blocks for which the method finds no direction are left out.
    """
    _check_features(features)
    solve = get_method(method)
    settings = options if options is not None else SolverOptions()
    result: dict[int, BlockDirection] = {}
    for block in blocks:
        try:
            per_array = [_features_at(h, block, features) for h in (negative, positive, baseline)]
            solved = solve(*paired_differences(*per_array), settings)
        except SolverError as error:
            raise SolverError(f"block {block}: {error}") from None
        if solved is not None:
            result[block] = solved
    return result
