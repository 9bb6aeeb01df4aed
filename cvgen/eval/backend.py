"""What an evaluation backend is: the records and protocols that `cvgen eval` measures through.
A backend runs a model with control vectors applied: llama.cpp's own library
(`cvgen.eval.engine_backend`: one model and one context for the whole evaluation, the vectors
set on the live context, many sequences a decode), real `llama-server` processes
(`cvgen.eval.llamacpp_backend`: one per steering configuration, the slow path kept as the real
consumer), or transformers (`cvgen.eval.hf_backend`: forward hooks from `cvgen.steer` that add
the vectors to the blocks' outputs, as llama.cpp's `direction.k` does). All answer the same
three questions, so the metrics cannot tell them apart:

- `score`: the log-probability of each token of a forced continuation after a prompt, and
  (optionally) the next-token distribution at each of those positions, for the KL divergence;
- `generate`: greedy completions of fixed maximum length;
- tokenisation of chat-formatted prompts and of bare continuations.

The engine and transformers read the logits of every forced position, so they give the full
distributions and an exact KL (`FullDistributions`). `llama-server` forces a continuation with
a token-level grammar (`root ::= <[id]> <[id]> ...`) and reports, per forced token, its
log-probability under the full-vocabulary softmax of the raw logits (`n_probs` with
`post_sampling_probs: false`), plus the top-k alternatives: exact token log-probabilities, and
a KL that is exact up to the mass outside the top-k lists (`cvgen.eval.divergence.coarse_kl`,
a lower bound; `TopDistributions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.eval.divergence import coarse_kl, kl_divergence
from cvgen.vectors.control_vector import ControlVector

BACKENDS = ("llama.cpp", "llama-server", "hf")
LLAMA_CPP_BACKENDS = ("llama.cpp", "llama-server")  # both run a .gguf file


class BackendError(CvgenError, RuntimeError):
    """An evaluation backend cannot run (missing binary, unsupported model, bad reply)."""


@dataclass(frozen=True)
class Steering:
    """What is added to the model: control-vector files, each times its scale (as llama.cpp's
    `--control-vector-scaled FILE:SCALE`, summed). No files: the unsteered model."""

    label: str
    files: tuple[tuple[Path, float], ...] = ()

    def arguments(self) -> list[str]:
        """llama.cpp's arguments for these files (none for the unsteered model)."""
        if not self.files:
            return []
        return [
            "--control-vector-scaled",
            ",".join(f"{path}:{scale:g}" for path, scale in self.files),
        ]

    def block_vectors(self) -> dict[int, np.ndarray]:
        """block -> the summed float32 vector that llama.cpp would add to that block's output."""
        total: dict[int, np.ndarray] = {}
        for path, scale in self.files:
            for block, vector in ControlVector.from_gguf(path).directions.items():
                scaled = np.asarray(vector, dtype=np.float32) * np.float32(scale)
                total[block] = total[block] + scaled if block in total else scaled
        return total


class Distributions(Protocol):
    """Next-token distributions at a run of positions; `kl_from` gives KL(reference || self)
    per position, in nats."""

    def kl_from(self, reference: Distributions) -> np.ndarray: ...


@dataclass(frozen=True)
class FullDistributions:
    """Full log-probability rows, (positions, vocab) float32 (the engine, transformers)."""

    log_probs: np.ndarray

    def kl_from(self, reference: Distributions) -> np.ndarray:
        if not isinstance(reference, FullDistributions):
            raise TypeError("a full distribution is compared only with a full distribution")
        return kl_divergence(reference.log_probs, self.log_probs)


@dataclass(frozen=True)
class TopDistributions:
    """Per position, the top-k token ids and their log-probabilities (llama-server)."""

    tops: tuple[Mapping[int, float], ...]

    def kl_from(self, reference: Distributions) -> np.ndarray:
        if not isinstance(reference, TopDistributions):
            raise TypeError("top-k distributions are compared only with top-k distributions")
        return np.array(
            [coarse_kl(p, q) for p, q in zip(reference.tops, self.tops, strict=True)],
            dtype=np.float64,
        )


@dataclass(frozen=True)
class Scored:
    """One forced continuation: each token's log-probability (T,), and the next-token
    distributions at the same T positions when they were asked for."""

    token_logprobs: np.ndarray
    distributions: Distributions | None = None


class Session(Protocol):
    """A model with one steering configuration applied."""

    def score(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], *, distributions: bool = False
    ) -> list[Scored]:
        """Force each (prompt ids, continuation ids) pair; one `Scored` per pair."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int) -> list[str]:
        """Greedy completions (stopping at end of text or after `max_tokens`), decoded."""
        ...


class Backend(Protocol):
    """A model that sessions with steering can be opened on."""

    name: str
    n_layer: int
    n_embd: int

    def prompt_ids(self, user_text: str) -> list[int]:
        """`user_text` as one user turn in the chat template, with the assistant header."""
        ...

    def continuation_ids(self, text: str) -> list[int]:
        """`text` as it follows an assistant header: no special tokens added."""
        ...

    def session(self, steering: Steering) -> Any:
        """A context manager yielding a `Session` with `steering` applied."""
        ...

    def close(self) -> None: ...
