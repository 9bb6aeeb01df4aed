"""One batched forward pass that captures each block's output at the last prompt token.

Hooks on the decoder blocks read the residual stream after each block (after its FFN residual
add, before any final norm) at the last REAL token of every prompt. Prompts are right-padded,
so real tokens keep positions 0..len-1 and never attend to padding. The forward stops by
exception right after the last block that is needed: later blocks, the final norm and the
language-model head never run. States are cast to float32 before they leave the device.

Given a `PrefixCache` (see `cvgen.extract.prefix_cache`), only the tokens after the shared
prefix run, on top of the prefix's KV cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class StopForward(Exception):
    """Raised by the last needed block's hook to end the forward pass early."""


def _block_output(output: Any) -> torch.Tensor:
    """A block's hidden-state output: the tensor itself, or the first item of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder block output type {type(output).__name__}")


@contextmanager
def capture_block_outputs(
    blocks: torch.nn.ModuleList,
    wanted: Sequence[int],
    last_index: torch.Tensor,
    sink: dict[int, torch.Tensor],
) -> Iterator[None]:
    """Hook blocks `wanted` so each writes its (batch, d) float32 state at `last_index` into
    `sink[block]`; the hook of the highest wanted block stops the forward pass."""
    stop_after = max(wanted)
    handles = []

    def make_hook(block: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            hidden = _block_output(output)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            sink[block] = hidden[rows, last_index.to(hidden.device)].float()
            if block == stop_after:
                raise StopForward

        return hook

    try:
        for block in wanted:
            handles.append(blocks[block].register_forward_hook(make_hook(block)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def pad_batch(
    token_lists: Sequence[Sequence[int]], *, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to (batch, max_len): input ids, attention mask and the last real index."""
    longest = max(len(ids) for ids in token_lists)
    input_ids = torch.full((len(token_lists), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), longest), dtype=torch.long)
    for row, ids in enumerate(token_lists):
        input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, : len(ids)] = 1
    last = mask.sum(dim=1) - 1
    return input_ids.to(device), mask.to(device), last.to(device)


@dataclass(frozen=True)
class PrefixCache:
    """The model's own KV cache of `token_ids`, a prefix shared by every prompt (batch 1)."""

    token_ids: tuple[int, ...]
    cache: Any
    keyword: str = "past_key_values"  # the forward's name for it (`prefix_cache.cache_keyword`)

    def expanded(self, batch: int) -> Any:
        """A fresh copy of the cache, repeated over `batch` rows (a forward extends it)."""
        fresh = copy.deepcopy(self.cache)
        if batch > 1:
            fresh.batch_repeat_interleave(batch)
        return fresh


@torch.inference_mode()
def forward_last_token_states(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    wanted: Sequence[int],
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
    prefix: PrefixCache | None = None,
) -> np.ndarray:
    """Run one batch and return float32 states of shape (len(wanted), batch, d), in the
    order of `wanted`, read at each prompt's last real token.

    With `prefix`, every list must start with `prefix.token_ids`: only the rest is run, on top
    of the prefix's cache."""
    if prefix is not None:
        skip = len(prefix.token_ids)
        if any(tuple(ids[:skip]) != prefix.token_ids or len(ids) <= skip for ids in token_lists):
            raise ValueError("a prompt does not start with the cached prefix (or is no longer)")
        token_lists = [ids[skip:] for ids in token_lists]
    input_ids, mask, last = pad_batch(token_lists, pad_id=pad_id, device=device)
    extra: dict[str, Any] = {"use_cache": False}
    if prefix is not None:
        cached = torch.ones((len(token_lists), len(prefix.token_ids)), dtype=mask.dtype)
        mask = torch.cat([cached.to(device), mask], dim=1)
        extra = {"use_cache": True, prefix.keyword: prefix.expanded(len(token_lists))}
    sink: dict[int, torch.Tensor] = {}
    with capture_block_outputs(blocks, wanted, last, sink), suppress(StopForward):
        model(input_ids=input_ids, attention_mask=mask, **extra)
    missing = [block for block in wanted if block not in sink]
    if missing:
        raise RuntimeError(f"blocks {missing} never ran; is the block list the model's own?")
    return torch.stack([sink[block].to(device) for block in wanted]).cpu().numpy()
