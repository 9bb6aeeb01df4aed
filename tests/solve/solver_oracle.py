"""Synthetic data and the written-out oracle shared by the solver tests: planted directions, an
adversarial mid-spectrum trait, and ALGORITHM.md §3 scored over ALL eigenvectors of M."""

from __future__ import annotations

import numpy as np
import pytest

from cvgen.solve.direction import BlockDirection

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
