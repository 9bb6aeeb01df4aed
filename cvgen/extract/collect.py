"""Collection: every prompt of a run through the model in length-bucketed batches, each
batch's states handed to a writer (the state store).

`run_collection` plans the batches (`plan_batches`: similar lengths together, a bound on the
padded tokens and on the share of padding), runs the prefix that all prompts share only once
(`cvgen.extract.prefix_cache`), and runs each batch with `forward_last_token_states`
(`cvgen.extract.forward`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cvgen.extract.forward import forward_last_token_states
from cvgen.extract.prefix_cache import prepare_prefix


@dataclass(frozen=True)
class WorkItem:
    """One prompt to run: where its states go (`target`, `row`) and its token ids."""

    target: int
    row: int
    token_ids: Sequence[int]


def plan_batches(
    lengths: Sequence[int],
    *,
    batch_tokens: int,
    max_batch: int = 256,
    max_padding: float = 1.0,
) -> list[list[int]]:
    """Group item indices into batches of similar length (longest first).

    A batch is padded to its longest prompt; it holds at most `max_batch` prompts and at most
    `batch_tokens` padded tokens (a single longer prompt still gets a batch of its own). A new
    batch also starts when the next prompt would make padding more than `max_padding` of the
    batch's tokens (1.0: no such limit).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        padded = (len(current) + 1) * longest
        if current and (
            padded > batch_tokens
            or len(current) >= max_batch
            or 1 - (real + lengths[index]) / padded > max_padding
        ):
            batches.append(current)
            current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class CollectionSettings:
    """How `run_collection` runs its prompts: the pad token id and the device of the inputs,
    at most `batch_tokens` padded tokens a batch of which at most `max_padding` are padding
    (see `plan_batches`), and whether the prefix every prompt shares runs only once
    (`reuse_prefix`, see `prepare_prefix`)."""

    pad_id: int
    device: torch.device
    batch_tokens: int
    reuse_prefix: bool = True
    max_padding: float = 0.1


def run_collection(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    wanted: Sequence[int],
    items: Sequence[WorkItem],
    *,
    settings: CollectionSettings,
    write: Callable[[int, list[int], np.ndarray], None],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run every item in length-bucketed batches; after each batch call
    `write(target, rows, states)` once per target with states (len(wanted), len(rows), d),
    and `progress(count)` with the batch's number of items.

    With `settings.reuse_prefix`, the prefix that all items share is run once and its KV
    cache reused by every batch (see `prepare_prefix`); batches are then planned on the
    remaining lengths, within `settings.batch_tokens` and `settings.max_padding`."""
    pad_id, device = settings.pad_id, settings.device
    token_lists = [item.token_ids for item in items]
    prefix = None
    if settings.reuse_prefix and len(items) > 1:
        prefix = prepare_prefix(model, blocks, wanted, token_lists, pad_id=pad_id, device=device)
    skip = len(prefix.token_ids) if prefix is not None else 0
    batches = plan_batches(
        [len(ids) - skip for ids in token_lists],
        batch_tokens=settings.batch_tokens,
        max_padding=settings.max_padding,
    )
    for batch in batches:
        chosen = [items[i] for i in batch]
        states = forward_last_token_states(
            model,
            blocks,
            wanted,
            [item.token_ids for item in chosen],
            pad_id=pad_id,
            device=device,
            prefix=prefix,
        )
        for target in sorted({item.target for item in chosen}):
            columns = [col for col, item in enumerate(chosen) if item.target == target]
            write(target, [chosen[col].row for col in columns], states[:, columns])
        if progress is not None:
            progress(len(chosen))
