"""What every solve method takes and gives: paired differences A and B (checked by
`check_paired_differences`), `SolverOptions`, and a `BlockDirection`; and the Fisher ratio
that scores a direction (ALGORITHM.md §3).

Inputs may be float32; all arithmetic is float64, and directions come back as float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cvgen.common.errors import CvgenError


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


def check_paired_differences(
    negative_diffs: np.ndarray, positive_diffs: np.ndarray
) -> tuple[np.ndarray, ...]:
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
