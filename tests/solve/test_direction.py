"""The solver's inputs and outputs: paired-difference checks, options, BlockDirection, and the
Fisher ratio."""

from __future__ import annotations

import numpy as np
import pytest
from solver_oracle import planted

from cvgen.solve.direction import SolverError, SolverOptions, fisher_ratio
from cvgen.solve.methods import (
    solve_cross_covariance,
    solve_mean_diff,
)


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


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(SolverError, match=r"same shape .*got \(10, 8\) and \(9, 8\)"):
        solve_cross_covariance(np.ones((10, 8)), np.ones((9, 8)), SolverOptions())


def test_non_finite_input_is_rejected() -> None:
    a = np.ones((10, 8))
    a[3, 2] = np.nan
    with pytest.raises(SolverError, match="finite"):
        solve_mean_diff(a, np.ones((10, 8)), SolverOptions())


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
