"""cvgen.eval.measurement: the propensity and KL plumbing on known inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvgen.eval.backend import FullDistributions, Scored
from cvgen.eval.measurement import kl_against, propensities


class FixedSession:
    """Scores each continuation by a table: every token of continuation c gets logprob[c]."""

    def __init__(self, logprob: dict[tuple[int, ...], float]) -> None:
        self.logprob = logprob
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def score(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], *, distributions: bool = False
    ) -> list[Scored]:
        out = []
        for prompt, continuation in items:
            self.calls.append((tuple(prompt), tuple(continuation)))
            value = self.logprob[tuple(continuation)] + 0.1 * len(prompt)
            out.append(Scored(np.full(len(continuation), value)))
        return out

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int) -> list[str]:
        return ["" for _ in prompts]


def test_propensity_is_mean_positive_minus_negative_per_prompt() -> None:
    session = FixedSession({(1,): -2.0, (2, 2): -1.0, (3,): -4.0, (4, 4, 4): -0.5})
    pairs = [((1,), (2, 2)), ((3,), (4, 4, 4))]  # (negative, positive)
    values = propensities(session, [(9,), (9, 9)], pairs)
    # pair 1: -1 - -2 = 1; pair 2: -0.5 - -4 = 3.5; the prompt offset cancels: mean 2.25
    np.testing.assert_allclose(values, [2.25, 2.25])
    assert len(session.calls) == 8


def test_kl_against_identical_distributions_is_zero_and_detects_a_change() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 11))
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    reference = [Scored(np.zeros(5), FullDistributions(log_p.astype(np.float32)))]
    same = [Scored(np.zeros(5), FullDistributions(log_p.astype(np.float32)))]
    np.testing.assert_allclose(kl_against(reference, same), 0.0, atol=1e-6)
    shifted = logits.copy()
    shifted[:, 0] += 2.0
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    moved = [Scored(np.zeros(5), FullDistributions(log_q.astype(np.float32)))]
    expected = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    np.testing.assert_allclose(kl_against(reference, moved), expected, rtol=1e-4)
