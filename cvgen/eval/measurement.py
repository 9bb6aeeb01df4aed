"""Measuring one steering configuration: per-prompt propensity from forced probe
continuations, per-position KL against the unsteered model on neutral text, and greedy
generations."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cvgen.eval.backend import Scored, Session
from cvgen.eval.inputs import EvalInputs
from cvgen.eval.settings import EvalError, EvalSettings


@dataclass
class Measurement:
    """What one steering configuration did: per-prompt propensity (prompts,), per-position
    KL against the unsteered model, and the greedy generations."""

    propensity: np.ndarray | None = None
    kl: np.ndarray | None = None
    texts: list[str] | None = None
    seconds: float = 0.0


def propensities(
    session: Session,
    prompt_ids: Sequence[Sequence[int]],
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> np.ndarray:
    """(prompts,): per prompt, the mean over probe pairs of mean log p(positive tokens) minus
    mean log p(negative tokens)."""
    items = [(prompt, text) for prompt in prompt_ids for pair in pairs for text in pair]
    scored = session.score(items)
    means = np.array([float(np.mean(s.token_logprobs)) for s in scored], dtype=np.float64)
    per_pair = means.reshape(len(prompt_ids), len(pairs), 2)
    return np.asarray((per_pair[:, :, 1] - per_pair[:, :, 0]).mean(axis=1), dtype=np.float64)


def neutral_scores(session: Session, inputs: EvalInputs) -> list[Scored]:
    """The next-token distributions along every neutral reply."""
    return session.score(list(inputs.neutral), distributions=True)


def kl_against(reference: Sequence[Scored], steered: Sequence[Scored]) -> np.ndarray:
    """Per-position KL(reference || steered), all neutral positions concatenated."""
    parts = []
    for ref, got in zip(reference, steered, strict=True):
        if ref.distributions is None or got.distributions is None:
            raise EvalError("neutral scores were taken without their distributions")
        parts.append(got.distributions.kl_from(ref.distributions))
    return np.concatenate(parts) if parts else np.zeros(0)


def measure(
    session: Session,
    inputs: EvalInputs,
    settings: EvalSettings,
    *,
    probe_pairs: Sequence[tuple[Sequence[int], Sequence[int]]] = (),
    reference: Sequence[Scored] | None = None,
    generate: bool = False,
) -> Measurement:
    """Measure one configuration: propensity when `probe_pairs` are given, KL when the
    unsteered `reference` scores are given, generations when `generate`."""
    started = time.perf_counter()
    result = Measurement()
    if probe_pairs:
        result.propensity = propensities(session, inputs.prompt_ids, probe_pairs)
    if reference is not None:
        result.kl = kl_against(reference, neutral_scores(session, inputs))
    if generate:
        result.texts = session.generate(list(inputs.prompt_ids), max_tokens=settings.max_tokens)
    result.seconds = time.perf_counter() - started
    return result
