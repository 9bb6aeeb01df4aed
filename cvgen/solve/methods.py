"""Per-block solvers: turn paired activation differences into one steering direction.

The input for one decoder block is two arrays of paired differences (ALGORITHM.md §3)::

    A = X_neg - X_base   (n, d)   how the negative prompt moves the state
    B = X_pos - X_base   (n, d)   how the positive prompt moves the state

Row i of ``A`` and row i of ``B`` come from the same sample. Every method maps
``(A, B, options)`` to a :class:`BlockDirection` (a unit vector and the mean projection of
each class on it), or to ``None`` when the block has no usable direction. Methods sit in
:data:`METHODS` under their public names and :func:`get_method` looks one up.

This module holds the three methods and their registry; the eigen routines are in
`cvgen.solve.eigen`, and `cvgen.solve.blocks` runs a method over every block.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from cvgen.solve.direction import (
    BlockDirection,
    SolveMethod,
    SolverError,
    SolverOptions,
    check_paired_differences,
    fisher_ratio,
)
from cvgen.solve.eigen import candidate_eigenvectors

# A direction whose norm is below this fraction of the data's largest entry is degenerate.
_RELATIVE_ZERO = 1e-12


def _data_scale(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(np.abs(a).max(), np.abs(b).max()))


def _unit_or_none(vector: np.ndarray, scale: float) -> np.ndarray | None:
    """vector / |vector|, or None when its norm is zero relative to `scale`."""
    norm = float(np.linalg.norm(vector))
    if not norm > _RELATIVE_ZERO * scale:
        return None
    return vector / norm


def _ratio_along(a: np.ndarray, b: np.ndarray, unit: np.ndarray) -> float:
    """r(u) for one unit vector u (d,)."""
    return float(fisher_ratio((a @ unit)[:, None], (b @ unit)[:, None])[0])


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
    a, b = check_paired_differences(negative_diffs, positive_diffs)
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
    a, b = check_paired_differences(negative_diffs, positive_diffs)
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
    a, b = check_paired_differences(negative_diffs, positive_diffs)
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
# `--method auto`: each axis's own method (its file's `method`), else DEFAULT_METHOD
AUTO_METHOD = "auto"


def axis_method(method: str, axis_default: str | None) -> str:
    """The solver of one axis: `method` itself, or under AUTO_METHOD the axis file's own
    method (`axis_default`, None where the file names none), else DEFAULT_METHOD."""
    if method != AUTO_METHOD:
        return method
    return axis_default or DEFAULT_METHOD


def get_method(name: str) -> SolveMethod:
    """The solve method registered under `name`; SolverError listing the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(METHODS))
        raise SolverError(f"unknown method {name!r}; choose one of: {valid}") from None
