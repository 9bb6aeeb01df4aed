"""Text generation on one llama.cpp context whose control vectors change per request.

`Generator.generate` runs one `Job` from an empty KV cache: it sets the job's vectors on the live
context (`llama_set_adapter_cvec`, the whole buffer every time, none for an unsteered job),
decodes the prompt, then samples one token at a time with llama.cpp's own samplers until an
end-of-generation token, a stop string, `max_tokens` or the end of the context. Nothing computed
under one job's vectors is kept for the next, so jobs with different vectors can never mix
(a prompt cache keyed by the vectors would be a later speed-up; correctness does not need it).

Text is made as `llama-server` makes it: each token's piece (`llama_token_to_piece`, special
tokens not rendered), joined as bytes and decoded incrementally, so a character split across
tokens is sent whole. A stop string ends the text before it, and while streaming, text that may
be the start of a stop string is held back until it is known not to be one.

Temperature 0 is greedy (`llama_sampler_init_greedy`), which is what `llama-server` does at
temperature 0. Otherwise the chain is llama-server's default order: repetition penalties,
top-k, top-p, min-p, temperature, then a seeded draw. Repetition penalties, when asked, come
first at any temperature and count the prompt's last tokens too.
"""

from __future__ import annotations

import codecs
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cvgen.engine.binding import EngineError
from cvgen.engine.context import ContextSettings, LlamaContext
from cvgen.engine.model import LlamaModel

LLAMA_SERVER_UBATCH = 512  # llama-server's default -ub: the prompt is decoded in such passes


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn; the defaults are llama-server's."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64


@dataclass
class Job:
    """One generation: prompt token ids, the block vectors to add (empty: none), limits, and a
    flag the caller sets to stop it early (a client that went away)."""

    prompt: Sequence[int]
    vectors: Mapping[int, np.ndarray]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Finished:
    """A job's whole text and why it ended: "stop" (end of generation or a stop string),
    "length" (max_tokens or the context's end) or "cancelled"."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Generator:
    """One context of `ctx_size` tokens on `model`, for one job at a time (the caller
    serialises jobs: see `cvgen.serve.service`)."""

    def __init__(self, model: LlamaModel, *, ctx_size: int, threads: int | None = None):
        self.model = model
        self.ctx_size = ctx_size
        self.context = LlamaContext(
            model,
            ContextSettings(
                n_batch=ctx_size,
                n_seq=1,
                threads=threads,
                capture=False,
                n_outputs=1,
                n_ubatch=min(LLAMA_SERVER_UBATCH, ctx_size),
            ),
        )
        self.llama = model.llama

    def close(self) -> None:
        self.context.close()

    def generate(self, job: Job, emit: Callable[[str], None] | None = None) -> Finished:
        """Run `job` (see the module docstring); `emit` receives the text as it is made."""
        prompt = [int(token) for token in job.prompt]
        if not prompt:
            raise EngineError("cannot generate from an empty prompt")
        if len(prompt) >= self.ctx_size:
            raise EngineError(
                f"the prompt is {len(prompt)} tokens; the context holds {self.ctx_size}"
            )
        self.context.set_vectors(dict(job.vectors) or None)
        sampler = self._sampler(job.sampling, prompt)
        text = _TextAssembler(job.stop, emit)
        count, reason = 0, "length"
        try:
            self.context.run([prompt])
            position = len(prompt)
            while count < job.max_tokens and position < self.ctx_size:
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                token = int(self.llama.llama_sampler_sample(sampler, self.context.pointer, -1))
                if self.model.is_end_of_generation(token):
                    count += 1  # counted, as llama-server counts it, but not rendered
                    reason = "stop"
                    break
                count += 1
                if text.add(self.model.piece(token)):
                    reason = "stop"
                    break
                if count >= job.max_tokens or position + 1 >= self.ctx_size:
                    break
                self.context.append([(token, position, 0, True)])
                position += 1
        finally:
            self.llama.llama_sampler_free(sampler)
            self.context.set_vectors(None)
        return Finished(text.finish(), reason, len(prompt), count)

    def _sampler(self, sampling: Sampling, prompt: Sequence[int]) -> object:
        """The chain for `sampling`; repetition penalties (at any temperature) count the
        prompt's last `penalty_last_n` tokens too, as llama-server's sampler is fed the prompt
        (`init_sampler` in tools/server/server-context.cpp at 0c1e570)."""
        llama = self.llama
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if (
            sampling.repeat_penalty != 1.0
            or sampling.frequency_penalty != 0.0
            or sampling.presence_penalty != 0.0
        ):
            llama.llama_sampler_chain_add(
                chain,
                llama.llama_sampler_init_penalties(
                    self.model.n_vocab,
                    sampling.penalty_last_n,
                    sampling.repeat_penalty,
                    sampling.frequency_penalty,
                    sampling.presence_penalty,
                ),
            )
            for token in prompt[-sampling.penalty_last_n :]:
                llama.llama_sampler_accept(chain, token)
        if sampling.temperature <= 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
            return chain
        if sampling.top_k > 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_min_p(sampling.min_p, 1))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain


class _TextAssembler:
    """Token pieces -> text: incremental UTF-8, stop strings, and what is safe to send."""

    def __init__(self, stop: tuple[str, ...], emit: Callable[[str], None] | None):
        self.stop = tuple(s for s in stop if s)
        self.emit = emit
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, piece: bytes) -> bool:
        """Add one token's bytes; True when a stop string has now appeared (text cut)."""
        self.text += self.decoder.decode(piece)
        if self.stop:
            longest = max(len(s) for s in self.stop)
            start = max(0, self.sent - longest)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self._send(len(self.text))
                self.stopped = True
                return True
            self._send(len(self.text) - _held_back(self.text, self.stop))
        else:
            self._send(len(self.text))
        return False

    def finish(self) -> str:
        if not self.stopped:
            self.text += self.decoder.decode(b"", final=True)
        self._send(len(self.text))
        return self.text

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            if self.emit is not None:
                self.emit(self.text[self.sent : upto])
            self.sent = upto


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that begins some stop string."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-length:]):
                best = length
                break
    return best
