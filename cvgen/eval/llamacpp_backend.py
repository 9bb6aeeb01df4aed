"""The `llama-server` evaluation backend (`--backend llama-server`): real `llama-server`
processes, one per steering configuration (`--control-vector-scaled`), each checked from its
log to have applied the vectors. Prompts and continuations are sent as token ids; a
continuation is forced with a token-level grammar and scored from the reported
log-probabilities (see `cvgen.eval.backend`). It scores one forced token at a time, so
`cvgen eval` uses the engine (`cvgen.eval.engine_backend`) for llama.cpp; this path stays as
the real consumer that the engine is checked against."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cvgen.eval.backend import BackendError, Scored, Steering, TopDistributions
from cvgen.extract.chat import render_chat_prompt, template_of_model_file
from cvgen.llamacpp.binaries import LlamaServer, find_binary
from cvgen.vectors.model_header import read_model_file_info


class LlamaCppBackend:
    """Real llama.cpp: one `llama-server` per steering configuration, each checked from its
    log to have applied the vectors; prompts and continuations are sent as token ids."""

    name = "llama-server"

    def __init__(
        self,
        model: Path,
        *,
        top_k: int = 256,
        threads: int | None = None,
        gpu_layers: int = 0,
        log_dir: Path | None = None,
    ) -> None:
        self.model = Path(model)
        if self.model.suffix.lower() != ".gguf" or not self.model.is_file():
            raise BackendError(
                f"--model {model}: the llama.cpp backend needs a .gguf model file; "
                "use --backend hf for a transformers model"
            )
        self.info = read_model_file_info(self.model)  # the input is checked before the binary
        self.binary = find_binary("llama-server")
        self.n_layer = self.info.n_layer
        self.n_embd = self.info.n_embd
        self.top_k = top_k
        self.threads = threads
        self.extra = ["--n-gpu-layers", str(gpu_layers)] if gpu_layers else []
        self.log_dir = log_dir
        self._tokenizer: LlamaServer | None = None

    def _tokenizer_server(self) -> LlamaServer:
        if self._tokenizer is None:
            self._tokenizer = LlamaServer(
                self.model,
                binary=self.binary,
                threads=self.threads,
                extra=self.extra,
                log_path=self._log("tokenizer"),
            ).start()
        return self._tokenizer

    def _log(self, label: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
        return self.log_dir / f"llama-server-{safe}.log"

    def _tokenize(self, text: str, *, special: bool) -> list[int]:
        reply = self._tokenizer_server().post(
            "/tokenize", {"content": text, "add_special": special, "parse_special": special}
        )
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        if not isinstance(tokens, list):
            raise BackendError(f"llama-server /tokenize: unexpected reply {str(reply)[:200]}")
        return [int(token) for token in tokens]

    def prompt_text(self, user_text: str) -> str:
        """`user_text` as one user turn in the model GGUF's own chat template (the renderer
        the transformers backend shares), ready for the reply."""
        return render_chat_prompt(template_of_model_file(self.info), user_text)

    def prompt_ids(self, user_text: str) -> list[int]:
        return self._tokenize(self.prompt_text(user_text), special=True)

    def continuation_ids(self, text: str) -> list[int]:
        return self._tokenize(text, special=False)

    @contextmanager
    def session(self, steering: Steering) -> Iterator[LlamaCppSession]:
        server = LlamaServer(
            self.model,
            vectors=steering.arguments(),
            binary=self.binary,
            threads=self.threads,
            extra=self.extra,
            log_path=self._log(steering.label),
        )
        with server:
            yield LlamaCppSession(server, top_k=self.top_k)

    def close(self) -> None:
        if self._tokenizer is not None:
            self._tokenizer.stop()
            self._tokenizer = None


class LlamaCppSession:
    """One running `llama-server` with its steering applied: forced scoring and generation."""

    def __init__(self, server: LlamaServer, *, top_k: int) -> None:
        self.server = server
        self.top_k = top_k

    def score(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], *, distributions: bool = False
    ) -> list[Scored]:
        return [
            self._score_one(prompt, continuation, distributions) for prompt, continuation in items
        ]

    def _score_one(
        self, prompt: Sequence[int], continuation: Sequence[int], distributions: bool
    ) -> Scored:
        if not continuation:
            raise BackendError("cannot score an empty continuation")
        grammar = "root ::= " + " ".join(f"<[{int(token)}]>" for token in continuation)
        reply = self.server.completion(
            list(prompt),
            n_predict=len(continuation),
            grammar=grammar,
            n_probs=self.top_k if distributions else 1,
            post_sampling_probs=False,
            cache_prompt=True,
            ignore_eos=True,
        )
        entries = reply.get("completion_probabilities")
        if not isinstance(entries, list) or len(entries) != len(continuation):
            raise BackendError(
                f"llama-server forced {len(continuation)} tokens but reported "
                f"{len(entries) if isinstance(entries, list) else 'no'} probabilities"
            )
        got = [int(entry["id"]) for entry in entries]
        if got != [int(token) for token in continuation]:
            raise BackendError(f"llama-server did not follow the forced tokens: {got[:8]}...")
        logprobs = np.array([float(entry["logprob"]) for entry in entries], dtype=np.float64)
        tops = None
        if distributions:
            tops = TopDistributions(
                tuple(
                    {int(top["id"]): float(top["logprob"]) for top in entry["top_logprobs"]}
                    for entry in entries
                )
            )
        return Scored(logprobs, tops)

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int) -> list[str]:
        texts = []
        for prompt in prompts:
            reply = self.server.completion(list(prompt), n_predict=max_tokens, cache_prompt=True)
            texts.append(str(reply.get("content", "")))
        return texts
