"""The llama.cpp evaluation backend on llama.cpp's own library (`cvgen.engine`): ONE model
loaded once and ONE context for the whole evaluation, steered by `llama_set_adapter_cvec`
between sessions, with no model reload and no server.

- `score` puts many forced continuations in one decode: item i becomes the sequence prompt +
  continuation minus its last token, with outputs at positions len(prompt)-1 ..
  len(prompt)+len(continuation)-2, whose log-softmax (float64) gives each forced token's
  log-probability and, when asked, the full next-token rows (`FullDistributions`, exact KL).
  A decode holds at most `n_seq` sequences, `n_batch` tokens (the shared prefix once) and
  `output_bytes` of logits (n_outputs * n_vocab * 4 bytes), so a 262k vocabulary stays bounded.
- `generate` is greedy and batched: the prompts in one decode, then one decode per step that
  appends the argmax token of every unfinished sequence to its own KV cache; a sequence stops
  at an end-of-generation token or after `max_tokens`.

Prompts and continuations are tokenized by llama.cpp with the GGUF's own chat template
(`cvgen.extract.chat`), as the `llama-server` backend does, so both give the same ids. The
arithmetic of a batch depends on its composition (llama.cpp's CPU path is not batch-invariant,
about 1e-3 relative), so the same items are always planned into the same decodes: a session's
scores are reproducible bit for bit, and the unsteered and steered runs of an evaluation see the
same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cvgen.engine.binding import EngineError
from cvgen.engine.context import ContextSettings, LlamaContext, shared_prefix_length
from cvgen.engine.model import LlamaModel, open_model
from cvgen.eval.backend import BackendError, FullDistributions, Scored, Steering
from cvgen.extract.chat import render_chat_prompt, template_of_model_file

DEFAULT_OUTPUT_BYTES = 256 * 2**20  # logits of one decode: n_outputs * n_vocab * 4 bytes
_SOFTMAX_ROWS = 32  # rows turned into float64 at once


def plan_score_decodes(
    sequences: Sequence[Sequence[int]],
    first_outputs: Sequence[int],
    output_counts: Sequence[int],
    *,
    n_batch: int,
    n_seq: int,
    max_outputs: int,
) -> list[list[int]]:
    """Cut sequence indices, in their order, into decodes of at most `n_seq` sequences,
    `n_batch` tokens (a shared prefix, no longer than any sequence's first output position,
    counted once) and `max_outputs` outputs. A decode of several sequences also ends where the
    next sequence would shorten its shared prefix: the continuations of one prompt share a
    decode and the prompt is computed once (a probe's prompt is most of its tokens). A
    sequence that alone exceeds a limit raises `BackendError`."""
    decodes: list[list[int]] = []
    current: list[int] = []
    for index, sequence in enumerate(sequences):
        if len(sequence) > n_batch or output_counts[index] > max_outputs:
            raise BackendError(
                f"a scored sequence of {len(sequence)} tokens and {output_counts[index]} outputs "
                f"exceeds one decode ({n_batch} tokens, {max_outputs} outputs)"
            )
        trial = [*current, index]
        if current and (
            len(trial) > n_seq
            or sum(output_counts[i] for i in trial) > max_outputs
            or _cells(sequences, first_outputs, trial) > n_batch
            or (
                len(current) > 1
                and _prefix(sequences, first_outputs, trial)
                < _prefix(sequences, first_outputs, current)
            )
        ):
            decodes.append(current)
            trial = [index]
        current = trial
    if current:
        decodes.append(current)
    return decodes


def _prefix(
    sequences: Sequence[Sequence[int]], first_outputs: Sequence[int], indices: Sequence[int]
) -> int:
    """The prefix `LlamaContext.run` decodes once for `indices` (0 for one sequence)."""
    chosen = [sequences[index] for index in indices]
    return min(shared_prefix_length(chosen), *(first_outputs[index] for index in indices))


def _cells(
    sequences: Sequence[Sequence[int]], first_outputs: Sequence[int], indices: Sequence[int]
) -> int:
    """Tokens a decode of `indices` takes, as `LlamaContext.run` lays it out."""
    skip = _prefix(sequences, first_outputs, indices)
    return skip + sum(len(sequences[index]) - skip for index in indices)


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """(rows, vocab) logits -> float64 log-probabilities, max-shifted (stable)."""
    rows = np.asarray(logits, dtype=np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


class EngineBackend:
    """One llama.cpp model and context for a whole evaluation (see the module docstring)."""

    name = "llama.cpp"

    def __init__(
        self,
        model: Path,
        *,
        threads: int | None = None,
        gpu_layers: int = 0,
        n_batch: int = 2048,
        n_seq: int = 64,
        output_bytes: int = DEFAULT_OUTPUT_BYTES,
    ) -> None:
        self.model_path = Path(model)
        self.model: LlamaModel = open_model(self.model_path, gpu_layers=gpu_layers)
        self.max_outputs = min(n_batch, max(1, output_bytes // (4 * self.model.n_vocab)))
        try:
            self.context = LlamaContext(
                self.model,
                ContextSettings(
                    n_batch=n_batch,
                    n_seq=n_seq,
                    threads=threads,
                    capture=False,
                    n_outputs=self.max_outputs,
                ),
            )
        except BaseException:
            self.model.close()
            raise
        self.info = self.model.info
        self.n_layer = self.model.n_layer
        self.n_embd = self.model.n_embd
        self.template = template_of_model_file(self.info)
        self._active: str | None = None

    def prompt_text(self, user_text: str) -> str:
        """`user_text` as one user turn in the GGUF's chat template, ready for the reply."""
        return render_chat_prompt(self.template, user_text)

    def prompt_ids(self, user_text: str) -> list[int]:
        return self.model.tokenize(self.prompt_text(user_text), add_special=True)

    def continuation_ids(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=False, parse_special=False)

    @contextmanager
    def session(self, steering: Steering) -> Iterator[EngineSession]:
        """The context with `steering`'s summed vectors set (cleared on leaving); sessions of
        one backend do not nest, since they share the context."""
        if self._active is not None:
            raise BackendError(f"{steering.label}: session '{self._active}' is still open")
        try:
            self.context.set_vectors(steering.block_vectors() or None)
        except EngineError as exc:
            raise BackendError(f"{steering.label}: {exc}") from None
        self._active = steering.label
        try:
            yield EngineSession(self)
        finally:
            self._active = None
            self.context.set_vectors(None)

    def close(self) -> None:
        self.context.close()
        self.model.close()


class EngineSession:
    """The shared context with one steering configuration set: batched forced scoring and
    batched greedy generation."""

    def __init__(self, backend: EngineBackend) -> None:
        self.backend = backend
        self.context = backend.context
        self.model = backend.model

    def score(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], *, distributions: bool = False
    ) -> list[Scored]:
        for prompt, continuation in items:
            if not prompt or not continuation:
                raise BackendError("cannot score an empty prompt or an empty continuation")
        sequences = [[*prompt, *continuation][:-1] for prompt, continuation in items]
        firsts = [len(prompt) - 1 for prompt, _ in items]
        counts = [len(continuation) for _, continuation in items]
        decodes = plan_score_decodes(
            sequences,
            firsts,
            counts,
            n_batch=self.context.n_batch,
            n_seq=self.context.settings.n_seq,
            max_outputs=self.backend.max_outputs,
        )
        results: list[Scored | None] = [None] * len(items)
        for decode in decodes:
            outputs = [list(range(firsts[i], firsts[i] + counts[i])) for i in decode]
            self.context.run([sequences[i] for i in decode], outputs=outputs)
            logits = self.context.logits()
            row = 0
            for index in decode:
                block = logits[row : row + counts[index]]
                results[index] = _scored(block, items[index][1], distributions)
                row += counts[index]
        return [result for result in results if result is not None]

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int) -> list[str]:
        if any(not prompt for prompt in prompts):
            raise BackendError("cannot generate from an empty prompt")
        # a group's prompts and every token they may generate must fit in the KV cache (n_batch
        # cells): plan each prompt as if it were already `max_tokens` longer, with no prefix
        groups = plan_score_decodes(
            [[*prompt, *([0] * max_tokens)] for prompt in prompts],
            [0] * len(prompts),
            [1] * len(prompts),
            n_batch=self.context.n_batch,
            n_seq=min(self.context.settings.n_seq, self.backend.max_outputs),
            max_outputs=self.backend.max_outputs,
        )
        texts = [""] * len(prompts)
        for group in groups:
            generated = self._generate_group([prompts[i] for i in group], max_tokens)
            for index, tokens in zip(group, generated, strict=True):
                texts[index] = self.model.detokenize(tokens)
        return texts

    def _generate_group(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        """Greedy tokens of each prompt: one decode for the prompts, then one per step."""
        tokens: list[list[int]] = [[] for _ in prompts]
        self.context.run([list(prompt) for prompt in prompts])
        live = list(range(len(prompts)))
        while live and max_tokens > 0:
            choices = self.context.logits().argmax(axis=1)
            still = []
            for sequence, choice in zip(live, choices, strict=True):
                token = int(choice)
                if self.model.is_end_of_generation(token):
                    continue
                tokens[sequence].append(token)
                if len(tokens[sequence]) < max_tokens:
                    still.append(sequence)
            live = still
            if live:
                rows = [
                    (tokens[s][-1], len(prompts[s]) + len(tokens[s]) - 1, s, True) for s in live
                ]
                self.context.append(rows)
        return tokens


def _scored(logits: np.ndarray, continuation: Sequence[int], distributions: bool) -> Scored:
    """One item's `Scored` from its (T, n_vocab) output logits, in row chunks."""
    targets = np.asarray(continuation, dtype=np.int64)
    chosen = np.empty(len(targets), dtype=np.float64)
    full = np.empty(logits.shape, dtype=np.float32) if distributions else None
    for start in range(0, len(targets), _SOFTMAX_ROWS):
        stop = start + _SOFTMAX_ROWS
        log_probs = log_softmax_rows(logits[start:stop])
        chosen[start:stop] = log_probs[np.arange(len(log_probs)), targets[start:stop]]
        if full is not None:
            full[start:stop] = log_probs
    return Scored(chosen, FullDistributions(full) if full is not None else None)
