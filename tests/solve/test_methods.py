"""The three solve methods on synthetic data with planted directions, against the written-out
oracle, and their registry."""

from __future__ import annotations

import numpy as np
import pytest
from solver_oracle import (
    PLANTED_CASES,
    ROUTES,
    assert_matches_reference,
    cosine,
    planted,
    reference_cross_covariance,
)

from cvgen.solve.direction import SolverError, SolverOptions
from cvgen.solve.methods import (
    DEFAULT_METHOD,
    METHODS,
    get_method,
    solve_cross_covariance,
    solve_mean_diff,
    solve_pca_diff,
)


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
    assert get_method("mean-diff") is solve_mean_diff
    assert get_method("pca-diff") is solve_pca_diff


def test_axis_method_takes_the_axis_files_method_only_under_auto() -> None:
    from cvgen.solve.methods import AUTO_METHOD, DEFAULT_METHOD, axis_method

    assert axis_method(AUTO_METHOD, "mean-diff") == "mean-diff"
    assert axis_method(AUTO_METHOD, None) == DEFAULT_METHOD == "cross-covariance"
    assert axis_method("pca-diff", "mean-diff") == "pca-diff"
