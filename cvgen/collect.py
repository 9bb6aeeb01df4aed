"""Batched forward passes that capture each block's output at the last prompt token.

Hooks on the decoder blocks read the residual stream after each block (after its FFN residual
add, before any final norm) at the last REAL token of every prompt. Prompts are right-padded,
so real tokens keep positions 0..len-1 and never attend to padding. The forward stops by
exception right after the last block that is needed: later blocks, the final norm and the
language-model head never run. States are cast to float32 before they leave the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class _StopForward(Exception):
    """Raised by the last needed block's hook to end the forward pass early."""


@dataclass(frozen=True)
class WorkItem:
    """One prompt to run: where its states go (`target`, `row`) and its token ids."""

    target: int
    row: int
    token_ids: Sequence[int]


def plan_batches(
    lengths: Sequence[int], *, batch_tokens: int, max_batch: int = 256
) -> list[list[int]]:
    """Group item indices into batches of similar length (longest first).

    A batch is padded to its longest prompt; it holds at most `max_batch` prompts and at most
    `batch_tokens` padded tokens (a single longer prompt still gets a batch of its own).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * longest > batch_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


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
                raise _StopForward

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


@torch.inference_mode()
def forward_last_token_states(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    wanted: Sequence[int],
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
) -> np.ndarray:
    """Run one batch and return float32 states of shape (len(wanted), batch, d), in the
    order of `wanted`, read at each prompt's last real token."""
    input_ids, mask, last = pad_batch(token_lists, pad_id=pad_id, device=device)
    sink: dict[int, torch.Tensor] = {}
    with capture_block_outputs(blocks, wanted, last, sink), suppress(_StopForward):
        model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    missing = [block for block in wanted if block not in sink]
    if missing:
        raise RuntimeError(f"blocks {missing} never ran; is the block list the model's own?")
    return torch.stack([sink[block] for block in wanted]).cpu().numpy()


def run_collection(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    wanted: Sequence[int],
    items: Sequence[WorkItem],
    *,
    pad_id: int,
    device: torch.device,
    batch_tokens: int,
    write: Callable[[int, list[int], np.ndarray], None],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run every item in length-bucketed batches; after each batch call
    `write(target, rows, states)` once per target with states (len(wanted), len(rows), d)."""
    batches = plan_batches([len(item.token_ids) for item in items], batch_tokens=batch_tokens)
    for batch in batches:
        chosen = [items[i] for i in batch]
        states = forward_last_token_states(
            model, blocks, wanted, [item.token_ids for item in chosen], pad_id=pad_id, device=device
        )
        for target in sorted({item.target for item in chosen}):
            columns = [col for col, item in enumerate(chosen) if item.target == target]
            write(target, [chosen[col].row for col in columns], states[:, columns])
        if progress is not None:
            progress(len(chosen))


def block_features(states: Sequence[np.ndarray], *, features: str) -> list[np.ndarray]:
    """Per-block features from stored outputs h_{k-1}, h_k, ..., h_last (each (n, d) float32).

    "delta": x_k = h_k - h_{k-1}, the block's own contribution (the default);
    "residual": x_k = h_k. Returns one (n, d) float32 array per block k (the first stored
    output is only the reference h_{k-1} of the first block).
    """
    if features == "residual":
        return [np.asarray(h, dtype=np.float32) for h in states[1:]]
    return [
        np.asarray(current, dtype=np.float32) - np.asarray(previous, dtype=np.float32)
        for previous, current in zip(states[:-1], states[1:], strict=False)
    ]
