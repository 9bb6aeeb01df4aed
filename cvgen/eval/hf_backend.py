"""The transformers evaluation backend: a Hugging Face model whose blocks get the steering
vectors added by forward hooks (`cvgen.steer.hooks`), as llama.cpp adds `direction.k` to block
k's output. It gives the full next-token distributions, so its KL divergence is exact."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cvgen.eval.backend import BackendError, FullDistributions, Scored, Steering
from cvgen.extract.chat import render_chat_prompt, template_of_tokenizer, tokenize_texts
from cvgen.steer.hooks import SteeringError, apply_directions


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

    def prompt_text(self, user_text: str) -> str:
        """`user_text` as one user turn in the tokenizer's chat template (the renderer the
        llama.cpp backend shares), ready for the reply; `"{user_text}\n"` without a template."""
        return render_chat_prompt(template_of_tokenizer(self.tokenizer), user_text)

    def prompt_ids(self, user_text: str) -> list[int]:
        return tokenize_texts(self.tokenizer, [self.prompt_text(user_text)])[0]

    def continuation_ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    @contextmanager
    def session(self, steering: Steering) -> Iterator[HfSession]:
        """The model with `steering`'s summed vectors added to its blocks' outputs, for the
        `with` block (`cvgen.steer.hooks.apply_directions`: no hook outlives it)."""
        try:
            applied = apply_directions(self.blocks, steering.block_vectors())
        except SteeringError as exc:
            raise BackendError(f"{steering.label}: {exc}") from None
        with applied:
            yield HfSession(self)

    def close(self) -> None:
        return None


class HfSession:
    """The transformers model with one steering configuration hooked in: batched forced
    scoring and greedy generation."""

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
