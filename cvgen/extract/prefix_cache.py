"""The shared prompt prefix, run once into a KV cache that every batch reuses.

Every prompt of a run usually starts with the same tokens (the chat template's header, the
default system prompt, the start of the user turn). `prepare_prefix` runs that prefix once into
a KV cache that cvgen creates and hands the model under the keyword its installed forward takes
(`cache` or `past_key_values`); each batch then runs only the remaining tokens, with the cache
repeated over the batch. The states are the same as a plain forward's (within float rounding):
`prepare_prefix` checks this on one prompt before it relies on it, and returns None, with a
warning that gives the reason, when a model's cache does not reproduce them or the model takes
no cache.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import numpy as np
import torch

from cvgen.extract.forward import (
    PrefixCache,
    StopForward,
    capture_block_outputs,
    forward_last_token_states,
)

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
    with capture_block_outputs(blocks, wanted, last, sink), suppress(StopForward):
        model(
            input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{keyword: cache}
        )
    if cache.get_seq_length() != len(prefix_ids):
        raise PrefixCacheUnavailable(
            f"the model filled {cache.get_seq_length()} of {len(prefix_ids)} prefix positions "
            "of the cache it was given"
        )
    return PrefixCache(tuple(int(token) for token in prefix_ids), cache, keyword)


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
