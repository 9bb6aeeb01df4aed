"""Where `cvgen eval` runs a model with control vectors applied: real llama.cpp (a long-lived
`llama-server` per steering configuration) or transformers (forward hooks that add the vectors
to the blocks' outputs, as llama.cpp's `direction.k` does). Both answer the same three
questions, so the metrics cannot tell them apart:

- `score`: the log-probability of each token of a forced continuation after a prompt, and
  (optionally) the next-token distribution at each of those positions, for the KL divergence;
- `generate`: greedy completions of fixed maximum length;
- tokenisation of chat-formatted prompts and of bare continuations.

llama.cpp forces a continuation with a token-level grammar (`root ::= <[id]> <[id]> ...`) and
reports, per forced token, its log-probability under the full-vocabulary softmax of the raw
logits (`n_probs` with `post_sampling_probs: false`), plus the top-k alternatives. It
therefore gives the exact token log-probabilities, and a KL divergence that is exact up to the
mass outside the top-k lists (`cvgen.eval.metrics.coarse_kl`, a lower bound). Transformers gives
the full distributions, so its KL is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.llamacpp.binaries import LlamaServer, find_binary
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.model_header import read_model_file_info

log = logging.getLogger(__name__)

BACKENDS = ("llama.cpp", "hf")


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
    """Full log-probability rows, (positions, vocab) float32 (transformers)."""

    log_probs: np.ndarray

    def kl_from(self, reference: Distributions) -> np.ndarray:
        from cvgen.eval.metrics import kl_divergence

        if not isinstance(reference, FullDistributions):
            raise TypeError("a full distribution is compared only with a full distribution")
        return kl_divergence(reference.log_probs, self.log_probs)


@dataclass(frozen=True)
class TopDistributions:
    """Per position, the top-k token ids and their log-probabilities (llama.cpp)."""

    tops: tuple[Mapping[int, float], ...]

    def kl_from(self, reference: Distributions) -> np.ndarray:
        from cvgen.eval.metrics import coarse_kl

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


# --- llama.cpp -------------------------------------------------------------------------------


class LlamaCppBackend:
    """Real llama.cpp: one `llama-server` per steering configuration, each checked from its
    log to have applied the vectors; prompts and continuations are sent as token ids."""

    name = "llama.cpp"

    def __init__(
        self,
        model: Path,
        *,
        top_k: int = 256,
        threads: int | None = None,
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
        self.log_dir = log_dir
        self._tokenizer: LlamaServer | None = None

    def _tokenizer_server(self) -> LlamaServer:
        if self._tokenizer is None:
            self._tokenizer = LlamaServer(
                self.model,
                binary=self.binary,
                threads=self.threads,
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

    def prompt_ids(self, user_text: str) -> list[int]:
        from cvgen.llamacpp.compare import render_chat_prompt

        return self._tokenize(render_chat_prompt(self.info, user_text), special=True)

    def continuation_ids(self, text: str) -> list[int]:
        return self._tokenize(text, special=False)

    @contextmanager
    def session(self, steering: Steering) -> Iterator[LlamaCppSession]:
        server = LlamaServer(
            self.model,
            vectors=steering.arguments(),
            binary=self.binary,
            threads=self.threads,
            log_path=self._log(steering.label),
        )
        with server:
            yield LlamaCppSession(server, top_k=self.top_k)

    def close(self) -> None:
        if self._tokenizer is not None:
            self._tokenizer.stop()
            self._tokenizer = None


class LlamaCppSession:
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


# --- transformers ----------------------------------------------------------------------------


class HfBackend:
    """A transformers model with forward hooks that add each block's vector to the block's
    output (the residual stream after the block), at every position, as llama.cpp does."""

    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        n_layer: int,
        batch_size: int = 16,
        threads: int | None = None,
        decoder_blocks: str | None = None,
    ) -> None:
        import torch

        if threads is not None:
            # torch's CPU thread pool collapses when its threads outnumber the free cores
            torch.set_num_threads(threads)

        from cvgen.extract.decoder_blocks import find_decoder_blocks
        from cvgen.extract.loading import input_device

        self.model = model
        self.tokenizer = tokenizer
        self.n_layer = n_layer
        self.blocks = find_decoder_blocks(model, n_layer, path=decoder_blocks)
        self.n_embd = int(model.get_input_embeddings().weight.shape[1])
        self.device = input_device(model, torch.device("cpu"))
        self.batch_size = batch_size
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))

    @classmethod
    def load(
        cls,
        model_spec: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        batch_size: int = 16,
        threads: int | None = None,
        decoder_blocks: str | None = None,
    ) -> HfBackend:
        """Load a model (GGUF file, folder or hub id) and its tokenizer with cvgen's loader."""
        from cvgen.extract.decoder_blocks import config_dimensions
        from cvgen.extract.loading import (
            load_causal_lm,
            load_config,
            load_tokenizer,
            resolve_device,
            resolve_dtype,
        )
        from cvgen.extract.model_source import resolve_model_source

        source = resolve_model_source(model_spec)
        torch_device = resolve_device(device)
        config = load_config(source, trust_remote_code=trust_remote_code)
        n_layer, _ = config_dimensions(config, source)
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        model = load_causal_lm(
            source,
            dtype=resolve_dtype(dtype, torch_device),
            device=torch_device,
            trust_remote_code=trust_remote_code,
        )
        return cls(
            model,
            tokenizer,
            n_layer=n_layer,
            batch_size=batch_size,
            threads=threads,
            decoder_blocks=decoder_blocks,
        )

    def prompt_ids(self, user_text: str) -> list[int]:
        from cvgen.extract.chat import has_chat_template, tokenize_texts

        if has_chat_template(self.tokenizer):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
            )
        else:
            text = f"{user_text}\n"
        return tokenize_texts(self.tokenizer, [str(text)])[0]

    def continuation_ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    @contextmanager
    def session(self, steering: Steering) -> Iterator[HfSession]:
        import torch

        vectors = steering.block_vectors()
        for block in vectors:
            if not 0 <= block < self.n_layer:
                raise BackendError(
                    f"{steering.label}: direction.{block} is outside the model's "
                    f"{self.n_layer} blocks"
                )
        handles = []
        try:
            for block, vector in vectors.items():
                module = self.blocks[block]
                added = torch.from_numpy(vector)
                handles.append(module.register_forward_hook(_adding_hook(added)))
            yield HfSession(self)
        finally:
            for handle in handles:
                handle.remove()

    def close(self) -> None:
        return None


def _adding_hook(vector: Any) -> Any:
    """A forward hook adding `vector` (d,) to a block's hidden-state output at every position."""
    cache: dict[tuple[Any, Any], Any] = {}

    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = vector.to(device=hidden.device, dtype=hidden.dtype)
        changed = hidden + cache[key]
        if isinstance(output, tuple):
            return (changed, *output[1:])
        return changed

    return hook


class HfSession:
    def __init__(self, backend: HfBackend) -> None:
        self.backend = backend

    def score(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], *, distributions: bool = False
    ) -> list[Scored]:
        results: list[Scored] = []
        size = self.backend.batch_size
        for start in range(0, len(items), size):
            results.extend(self._score_batch(items[start : start + size], distributions))
        return results

    def _score_batch(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], distributions: bool
    ) -> list[Scored]:
        import torch

        sequences = [list(prompt) + list(continuation) for prompt, continuation in items]
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.backend.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        with torch.inference_mode():
            logits = self.backend.model(
                input_ids=ids.to(self.backend.device), attention_mask=mask.to(self.backend.device)
            ).logits
        results = []
        for row, (prompt, continuation) in enumerate(items):
            start = len(prompt) - 1
            rows = logits[row, start : start + len(continuation)].float()
            log_probs = torch.log_softmax(rows, dim=-1)
            targets = torch.tensor(list(continuation), device=log_probs.device)
            chosen = log_probs.gather(1, targets[:, None])[:, 0]
            full = FullDistributions(log_probs.cpu().numpy()) if distributions else None
            results.append(Scored(chosen.double().cpu().numpy(), full))
        return results

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int) -> list[str]:
        texts: list[str] = []
        size = self.backend.batch_size
        for start in range(0, len(prompts), size):
            texts.extend(self._generate_batch(prompts[start : start + size], max_tokens))
        return texts

    def _generate_batch(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[str]:
        import torch

        backend = self.backend
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), backend.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding, as generation needs
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, width - len(prompt) :] = 1
        with torch.inference_mode():
            output = backend.model.generate(
                input_ids=ids.to(backend.device),
                attention_mask=mask.to(backend.device),
                max_new_tokens=max_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=backend.pad_id,
            )
        new = output[:, width:]
        return [
            str(backend.tokenizer.decode(row, skip_special_tokens=True)) for row in new.tolist()
        ]
