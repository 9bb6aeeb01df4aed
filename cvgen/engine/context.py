"""A llama.cpp context for many sequences at once: batched decodes, a shared prefix computed
once, block capture, logits, and control vectors set on the live context.

The KV cache is one unified stream (`kv_unified`): the batch keeps its token order, and
copying a sequence (`llama_memory_seq_cp`) shares its cells instead of copying them. So a
prefix that every prompt of a decode shares is decoded once as sequence 0, copied to the other
sequences, and only the rest of each prompt is decoded, in one batch. `n_batch` is also the
ubatch, so one decode is one pass through the graph and each block is read once.

`set_vectors` calls `llama_set_adapter_cvec`: `direction.k` is added to the output of block k
(block 0 has no slot). The whole buffer of blocks 1..n_layer-1 is always passed, since
llama.cpp leaves a block past a short buffer with the previous call's vector.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cvgen.engine.binding import EngineError
from cvgen.engine.capture import BlockCapture
from cvgen.engine.model import LlamaModel

MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ


@dataclass(frozen=True)
class ContextSettings:
    """`n_batch` tokens a decode (also the KV cache's size), at most `n_seq` sequences a
    decode, `threads` CPU threads (None: all cores), whether block capture is set up, and at
    most `n_outputs` outputs a decode (0: n_batch), which sizes llama.cpp's logits buffer
    (n_outputs x n_vocab floats: 2 GiB for 2048 outputs of a 262k vocabulary). `n_ubatch`
    (0: n_batch) cuts a decode into passes of that many tokens, as llama-server's 512 does;
    block capture needs the whole decode in one pass."""

    n_batch: int = 2048
    n_seq: int = 64
    threads: int | None = None
    capture: bool = True
    n_outputs: int = 0
    n_ubatch: int = 0


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """The longest token prefix every prompt shares, leaving each at least one token."""
    if len(prompts) < 2:
        return 0
    limit = min(len(prompt) for prompt in prompts) - 1
    first = prompts[0]
    length = 0
    while length < limit and all(prompt[length] == first[length] for prompt in prompts):
        length += 1
    return length


class LlamaContext:
    """One context on `model` (see the module docstring). Close it, or use it in `with`."""

    def __init__(self, model: LlamaModel, settings: ContextSettings):
        if not 1 <= settings.n_seq <= MAX_SEQUENCES:
            raise EngineError(f"sequences per decode: {settings.n_seq} must be 1..{MAX_SEQUENCES}")
        llama = model.llama
        self.model = model
        self.llama = llama
        self.settings = settings
        self.n_batch = settings.n_batch
        params = llama.llama_context_default_params()
        if settings.capture and settings.n_ubatch not in (0, settings.n_batch):
            raise EngineError("block capture reads a decode in one pass: n_ubatch must be n_batch")
        params.n_ctx = params.n_batch = params.n_ubatch = settings.n_batch
        if settings.n_ubatch:
            params.n_ubatch = min(settings.n_ubatch, settings.n_batch)
        params.n_seq_max = settings.n_seq
        params.n_outputs_max = settings.n_outputs
        threads = settings.threads or os.cpu_count() or 1
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True
        params.no_perf = True
        self.capture: BlockCapture | None = None
        if settings.capture:
            self.capture = BlockCapture(model.binding, model.n_layer, model.n_embd)
            params.cb_eval = self.capture.callback
            params.cb_eval_user_data = None
        self.pointer = llama.llama_init_from_model(model.pointer, params)
        if not self.pointer:
            raise EngineError(
                f"llama.cpp cannot create a context of {settings.n_batch} tokens and "
                f"{settings.n_seq} sequences for {model.info.path}"
            )
        self.memory = llama.llama_get_memory(self.pointer)
        self.batch = llama.llama_batch_init(settings.n_batch, 0, settings.n_seq)
        self._vector_buffer: np.ndarray | None = None
        self._outputs: list[int] = []

    # --- decoding ----------------------------------------------------------------------------

    def _fill(self, tokens: Sequence[tuple[int, int, int, bool]]) -> list[int]:
        """Put (token, position, sequence, wants output) rows in the batch; return the batch
        indices of the output rows."""
        if len(tokens) > self.n_batch:
            raise EngineError(f"a decode of {len(tokens)} tokens exceeds n_batch {self.n_batch}")
        batch = self.batch
        outputs = []
        for index, (token, position, sequence, output) in enumerate(tokens):
            batch.token[index] = token
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = sequence
            batch.logits[index] = output
            if output:
                outputs.append(index)
        batch.n_tokens = len(tokens)
        return outputs

    def _decode(self, tokens: Sequence[tuple[int, int, int, bool]]) -> list[int]:
        outputs = self._fill(tokens)
        status = self.llama.llama_decode(self.pointer, self.batch)
        if status != 0:
            raise EngineError(f"llama_decode failed (status {status}) on {len(tokens)} tokens")
        self._outputs = outputs
        return outputs

    def append(self, tokens: Sequence[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, wants output) rows on top of the cache as it
        is (e.g. one generated token per sequence); read the outputs with `logits`."""
        self._decode(tokens)

    def run(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        wanted: Sequence[int] = (),
        outputs: Sequence[Sequence[int]] | None = None,
        reuse_prefix: bool = True,
    ) -> np.ndarray | None:
        """Decode `prompts` as sequences 0..n-1 of one batch, from an empty cache.

        `outputs[i]` lists the positions of prompt i whose logits are wanted (default: its
        last token); read them with `logits`. With `wanted` blocks (capture), return their
        states at each prompt's last token, (len(wanted), n, n_embd) float32; capture needs
        the default outputs. The shared prefix is decoded once when `reuse_prefix`."""
        if not 1 <= len(prompts) <= self.settings.n_seq:
            raise EngineError(f"{len(prompts)} prompts: a decode holds 1..{self.settings.n_seq}")
        if wanted and (self.capture is None or outputs is not None):
            raise EngineError("block capture needs a capture context and last-token outputs")
        self.llama.llama_memory_clear(self.memory, True)
        skip = shared_prefix_length(prompts) if reuse_prefix else 0
        if outputs is not None and any(min(rows, default=skip) < skip for rows in outputs):
            skip = min(skip, min(min(rows) for rows in outputs if rows))
        if skip:
            self._decode([(token, pos, 0, False) for pos, token in enumerate(prompts[0][:skip])])
            for sequence in range(1, len(prompts)):
                self.llama.llama_memory_seq_cp(self.memory, 0, sequence, -1, -1)
        rows = []
        for sequence, prompt in enumerate(prompts):
            want = set(outputs[sequence]) if outputs is not None else {len(prompt) - 1}
            for position in range(skip, len(prompt)):
                rows.append((int(prompt[position]), position, sequence, position in want))
        if not wanted:
            self._decode(rows)
            return None
        assert self.capture is not None
        self.capture.begin(wanted, len(rows), [i for i, row in enumerate(rows) if row[3]])
        try:
            self._decode(rows)
        except BaseException:
            self.capture.abandon()
            raise
        return self.capture.finish()

    def logits(self) -> np.ndarray:
        """The last decode's output logits, (outputs, n_vocab) float32, in batch order."""
        n_vocab = self.model.n_vocab
        pointer = self.llama.llama_get_logits(self.pointer)
        if not pointer or not self._outputs:
            raise EngineError("no logits: the last decode had no outputs")
        flat = np.ctypeslib.as_array(pointer, shape=(len(self._outputs) * n_vocab,))
        return flat.reshape(len(self._outputs), n_vocab).copy()

    # --- control vectors ---------------------------------------------------------------------

    def set_vectors(self, vectors: Mapping[int, np.ndarray] | None) -> None:
        """Add `vectors[k]` to block k's output from the next decode on (None or empty:
        clear). Block 0 cannot be steered; every vector must have n_embd floats."""
        n_layer, n_embd = self.model.n_layer, self.model.n_embd
        if not vectors:
            status = self.llama.llama_set_adapter_cvec(self.pointer, None, 0, n_embd, 0, 0)
            self._vector_buffer = None
        else:
            buffer = np.zeros((n_layer - 1) * n_embd, np.float32)
            for block, vector in vectors.items():
                if not 1 <= block < n_layer:
                    raise EngineError(f"direction.{block}: the model has blocks 1..{n_layer - 1}")
                values = np.asarray(vector, np.float32).reshape(-1)
                if values.size != n_embd:
                    raise EngineError(f"direction.{block}: {values.size} floats, not {n_embd}")
                buffer[(block - 1) * n_embd : block * n_embd] += values
            self._vector_buffer = buffer  # llama.cpp copies it; kept only for inspection
            pointer = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            status = self.llama.llama_set_adapter_cvec(
                self.pointer, pointer, buffer.size, n_embd, 1, n_layer - 1
            )
        if status != 0:
            raise EngineError(f"llama_set_adapter_cvec failed (status {status})")

    def close(self) -> None:
        if self.pointer is not None:
            self.llama.llama_batch_free(self.batch)
            self.llama.llama_free(self.pointer)
            self.pointer = None

    def __enter__(self) -> LlamaContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
