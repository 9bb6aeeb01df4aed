"""Batched forward passes that capture each block's output at the last prompt token.

Hooks on the decoder blocks read the residual stream after each block (after its FFN residual
add, before any final norm) at the last REAL token of every prompt. Prompts are right-padded,
so real tokens keep positions 0..len-1 and never attend to padding. The forward stops by
exception right after the last block that is needed: later blocks, the final norm and the
language-model head never run. States are cast to float32 before they leave the device.

Shared prefix: every prompt of a run usually starts with the same tokens (the chat template's
header, the default system prompt, the start of the user turn). `run_collection` runs that
prefix once into a KV cache that cvgen creates and hands the model under the keyword its
installed forward takes (`cache` or `past_key_values`), and feeds each batch only the remaining
tokens, with the cache repeated over the batch. The states are the same as a plain forward's
(within float rounding); the collector checks this on one prompt before it relies on it, and
falls back to plain forwards, with a warning that gives the reason, when a model's cache does
not reproduce them or the model takes no cache.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

log = logging.getLogger("cvgen")

# A shared prefix shorter than this is not worth a cache (the cache copy costs more).
MIN_SHARED_PREFIX = 4
# Largest relative difference allowed between prefix-cached and plain states on the check
# prompt: float32 rounding is ~1e-6; a wrong position or mask gives differences of order 1.
PREFIX_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
PREFIX_CHECK_TOLERANCE_LOW_PRECISION = 5e-2
# The model forward's keyword for its KV cache, newest name first (transformers 5.24 renamed
# `past_key_values` to `cache`; the old name is deprecated and goes in 5.40).
CACHE_KEYWORDS = ("cache", "past_key_values")


class _StopForward(Exception):
    """Raised by the last needed block's hook to end the forward pass early."""


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


@dataclass(frozen=True)
class PrefixCache:
    """The model's own KV cache of `token_ids`, a prefix shared by every prompt (batch 1)."""

    token_ids: tuple[int, ...]
    cache: Any
    keyword: str = "past_key_values"  # the model forward's name for it (see `cache_keyword`)

    def expanded(self, batch: int) -> Any:
        """A fresh copy of the cache, repeated over `batch` rows (a forward extends it)."""
        fresh = copy.deepcopy(self.cache)
        if batch > 1:
            fresh.batch_repeat_interleave(batch)
        return fresh


def shared_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix that all lists share, leaving every list at least one
    token of its own (the state is read at the last token, which must be computed)."""
    if not token_lists:
        return 0
    first = token_lists[0]
    limit = min(len(ids) for ids in token_lists) - 1
    length = 0
    while length < limit and all(ids[length] == first[length] for ids in token_lists):
        length += 1
    return max(length, 0)


class PrefixCacheUnavailable(Exception):
    """The model cannot take a cache cvgen owns (no cache keyword, no cache class)."""


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which `model.forward` takes its KV cache: `cache` (transformers
    5.24 and later) or `past_key_values` (earlier releases), read from the installed
    signature. Raises `PrefixCacheUnavailable` when the forward takes neither."""
    parameters = inspect.signature(model.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    raise PrefixCacheUnavailable(
        f"{type(model).__name__}.forward takes none of the cache keywords {', '.join(CACHE_KEYWORDS)}"
    )


def new_model_cache(model: torch.nn.Module) -> Any:
    """An empty `transformers.DynamicCache` for `model` (given its config where the installed
    release accepts one, so sliding-window layers get their own kind of cache)."""
    try:
        from transformers import DynamicCache
    except ImportError as error:
        raise PrefixCacheUnavailable(f"transformers has no DynamicCache ({error})") from None
    config: Any = getattr(model, "config", None)
    if config is not None and "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(config=config)
    return DynamicCache()


@torch.inference_mode()
def build_prefix_cache(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    wanted: Sequence[int],
    prefix_ids: Sequence[int],
    *,
    device: torch.device,
) -> PrefixCache:
    """Run `prefix_ids` (batch 1) through blocks 0..max(wanted) into a cache that cvgen
    creates and passes in under the keyword the installed forward takes, and return it.
    Raises `PrefixCacheUnavailable` when the model takes no such cache."""
    keyword = cache_keyword(model)
    cache = new_model_cache(model)
    ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
    sink: dict[int, torch.Tensor] = {}
    last = torch.tensor([len(prefix_ids) - 1], device=device)
    with capture_block_outputs(blocks, wanted, last, sink), suppress(_StopForward):
        model(
            input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{keyword: cache}
        )
    if cache.get_seq_length() != len(prefix_ids):
        raise PrefixCacheUnavailable(
            f"the model filled {cache.get_seq_length()} of {len(prefix_ids)} prefix positions "
            "of the cache it was given"
        )
    return PrefixCache(tuple(int(token) for token in prefix_ids), cache, keyword)


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
    with capture_block_outputs(blocks, wanted, last, sink), suppress(_StopForward):
        model(input_ids=input_ids, attention_mask=mask, **extra)
    missing = [block for block in wanted if block not in sink]
    if missing:
        raise RuntimeError(f"blocks {missing} never ran; is the block list the model's own?")
    return torch.stack([sink[block].to(device) for block in wanted]).cpu().numpy()


def _prefix_check_tolerance(model: torch.nn.Module) -> float:
    dtype = next(model.parameters()).dtype
    return PREFIX_CHECK_TOLERANCE.get(dtype, PREFIX_CHECK_TOLERANCE_LOW_PRECISION)


def prepare_prefix(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    wanted: Sequence[int],
    token_lists: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
) -> PrefixCache | None:
    """The cache of the prefix that all `token_lists` share, or None when there is none worth
    caching or the model's cache does not reproduce a plain forward's states. Every None is
    logged as a warning (shown under `-q` too) that gives the reason.

    The check runs the shortest prompt both ways and compares every wanted block's state."""
    length = shared_prefix_length(token_lists)
    if length < MIN_SHARED_PREFIX:
        log.warning(
            "shared prompt prefix not reused: the prompts share %d tokens (fewer than %d)",
            length,
            MIN_SHARED_PREFIX,
        )
        return None
    probe = [min(token_lists, key=len)]
    try:
        prefix = build_prefix_cache(model, blocks, wanted, token_lists[0][:length], device=device)
        cached = forward_last_token_states(
            model, blocks, wanted, probe, pad_id=pad_id, device=device, prefix=prefix
        )
    except (
        PrefixCacheUnavailable,
        AttributeError,
        NotImplementedError,
        TypeError,
        RuntimeError,
    ) as error:
        # a model whose forward takes no cache, or whose cache cannot be copied or repeated
        log.warning(
            "shared prompt prefix not reused (%s: %s); running whole prompts",
            type(error).__name__,
            _first_line(error),
        )
        return None
    plain = forward_last_token_states(model, blocks, wanted, probe, pad_id=pad_id, device=device)
    scale = np.linalg.norm(plain, axis=-1).max()
    difference = float(np.linalg.norm(cached - plain, axis=-1).max() / max(scale, 1e-30))
    if not difference <= _prefix_check_tolerance(model):
        log.warning(
            "shared prompt prefix not reused: cached states differ from a plain forward by "
            "%.2e (relative); running whole prompts",
            difference,
        )
        return None
    log.info(
        "reusing a shared prompt prefix of %d tokens (cache keyword %r)", length, prefix.keyword
    )
    return prefix


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"


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
