"""The shared prompt prefix: its length, the cache keyword of the installed forward, and the
check that refuses a cache whose states differ from a plain forward, with a warning."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import PICO_LAYERS
from pico_prompts import CPU, chat_token_lists, load_pico

from cvgen.extract import prefix_cache
from cvgen.extract.collect import CollectionSettings, WorkItem, run_collection
from cvgen.extract.decoder_blocks import find_decoder_blocks
from cvgen.extract.forward import PrefixCache, forward_last_token_states
from cvgen.extract.prefix_cache import (
    PrefixCacheUnavailable,
    build_prefix_cache,
    cache_keyword,
    prepare_prefix,
    shared_prefix_length,
)


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own() -> None:
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # the short one keeps its last token
    assert shared_prefix_length([[7, 2, 3], [1, 2, 3]]) == 0
    assert shared_prefix_length([[5, 6, 7, 8]]) == 3
    assert shared_prefix_length([]) == 0


def test_a_prefix_cache_that_does_not_reproduce_the_states_is_refused(
    pico_llama: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = load_pico(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = chat_token_lists(tokenizer)
    good = prepare_prefix(model, blocks, [1, 2], token_lists, pad_id=0, device=CPU)
    assert good is not None and len(good.token_ids) == shared_prefix_length(token_lists)

    def wrong_cache(
        model: torch.nn.Module,
        blocks: torch.nn.ModuleList,
        wanted: list[int],
        prefix_ids: list[int],
        *,
        device: torch.device,
    ) -> PrefixCache:
        # the cache of other tokens, filed under the right ones
        other = build_prefix_cache(
            model, blocks, wanted, [(t + 7) % 500 for t in prefix_ids], device=device
        )
        return PrefixCache(tuple(prefix_ids), other.cache, other.keyword)

    monkeypatch.setattr(prefix_cache, "build_prefix_cache", wrong_cache)
    with caplog.at_level(logging.WARNING, logger="cvgen"):
        refused = prepare_prefix(model, blocks, [1, 2], token_lists, pad_id=0, device=CPU)
    assert refused is None
    assert "cached states differ from a plain forward by" in caplog.text
    caplog.clear()
    # run_collection then falls back to whole prompts and still gets the right states
    items = [WorkItem(0, row, ids) for row, ids in enumerate(token_lists)]
    got = np.zeros((2, len(items), 32), dtype=np.float32)

    def write(target: int, rows: list[int], states: np.ndarray) -> None:
        got[:, rows] = states

    with caplog.at_level(logging.WARNING, logger="cvgen"):
        run_collection(
            model,
            blocks,
            [1, 2],
            items,
            settings=CollectionSettings(pad_id=0, device=CPU, batch_tokens=512),
            write=write,
        )
    assert "shared prompt prefix not reused" in caplog.text
    plain = forward_last_token_states(model, blocks, [1, 2], token_lists, pad_id=0, device=CPU)
    np.testing.assert_allclose(got, plain, atol=1e-5)


def test_the_cache_is_passed_under_the_keyword_the_installed_forward_takes(
    pico_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cvgen owns the cache: it creates it and passes it under `cache` or `past_key_values`,
    whichever the installed forward declares, so a renamed keyword cannot silently turn the
    reuse off (transformers 5.24 renamed it)."""
    model, tokenizer = load_pico(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    declared = inspect.signature(model.forward).parameters
    expected = "cache" if "cache" in declared else "past_key_values"
    assert cache_keyword(model) == expected
    token_lists = chat_token_lists(tokenizer)
    received: list[str] = []

    def spy(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        received.extend(name for name in ("cache", "past_key_values") if name in kwargs)

    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        prefix = build_prefix_cache(model, blocks, [1, 3], token_lists[0][:12], device=CPU)
    finally:
        handle.remove()
    assert received == [expected]
    assert prefix.keyword == expected
    assert prefix.cache.get_seq_length() == 12

    class NoCacheForward(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    with pytest.raises(PrefixCacheUnavailable, match="takes none of the cache keywords"):
        cache_keyword(NoCacheForward())


def test_reuse_off_is_a_warning_with_its_reason(
    pico_llama: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = load_pico(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = chat_token_lists(tokenizer)

    def no_keyword(model: torch.nn.Module) -> str:
        raise PrefixCacheUnavailable("LlamaForCausalLM.forward takes none of the cache keywords")

    monkeypatch.setattr(prefix_cache, "cache_keyword", no_keyword)
    with caplog.at_level(logging.WARNING, logger="cvgen"):
        assert prepare_prefix(model, blocks, [1], token_lists, pad_id=0, device=CPU) is None
    warned = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "not reused (PrefixCacheUnavailable: LlamaForCausalLM.forward takes none" in (
        warned[0].getMessage()
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cvgen"):
        assert (
            prepare_prefix(model, blocks, [1], [[1, 2, 3], [4, 5, 6]], pad_id=0, device=CPU) is None
        )
    assert "the prompts share 0 tokens (fewer than 4)" in caplog.text
