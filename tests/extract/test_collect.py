"""The collector on pico models: padding, the last block before the final norm, early stop."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import PICO_LAYERS

from cvgen.extract import collect
from cvgen.extract.collect import (
    CollectionSettings,
    PrefixCache,
    PrefixCacheUnavailable,
    WorkItem,
    build_prefix_cache,
    cache_keyword,
    forward_last_token_states,
    plan_batches,
    prepare_prefix,
    run_collection,
    shared_prefix_length,
)
from cvgen.extract.decoder_blocks import find_decoder_blocks
from cvgen.solve.blocks import block_features

CPU = torch.device("cpu")


def _load(folder: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _token_lists(tokenizer: object) -> list[list[int]]:
    texts = [
        "You are a poet. Write a haiku.",
        "Act as a novelist who writes long and lavish sentences. Write a story about rain.",
        "Be brief.",
    ]
    return [tokenizer(t)["input_ids"] for t in texts]  # type: ignore[operator]


@pytest.mark.parametrize("family", ["pico_llama", "pico_qwen2"])
def test_batched_states_equal_one_prompt_at_a_time(
    family: str, request: pytest.FixtureRequest
) -> None:
    model, tokenizer = _load(request.getfixturevalue(family))
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = _token_lists(tokenizer)
    assert len({len(t) for t in token_lists}) == 3  # padding really happens
    wanted = [0, 2, 4]
    batched = forward_last_token_states(model, blocks, wanted, token_lists, pad_id=0, device=CPU)
    assert batched.shape == (3, 3, 32) and batched.dtype == np.float32
    for column, ids in enumerate(token_lists):
        alone = forward_last_token_states(model, blocks, wanted, [ids], pad_id=0, device=CPU)
        np.testing.assert_allclose(batched[:, column], alone[:, 0], atol=1e-5)
    # the state is the LAST real token's, not a padding position's
    with torch.no_grad():
        out = model(input_ids=torch.tensor([token_lists[0]]), output_hidden_states=True)
    np.testing.assert_allclose(batched[1, 0], out.hidden_states[3][0, -1].numpy(), atol=1e-5)


def test_last_block_is_read_before_the_final_norm(pico_llama: Path) -> None:
    model, tokenizer = _load(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    ids = _token_lists(tokenizer)[0]
    captured: dict[str, torch.Tensor] = {}
    handle = blocks[-1].register_forward_hook(
        lambda module, args, output: captured.setdefault(
            "out", output if isinstance(output, torch.Tensor) else output[0]
        )
    )
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    handle.remove()
    ours = forward_last_token_states(
        model, blocks, [PICO_LAYERS - 2, PICO_LAYERS - 1], [ids], pad_id=0, device=CPU
    )
    block_output = captured["out"][0, -1].numpy()
    np.testing.assert_allclose(ours[1, 0], block_output, atol=1e-5)
    normed = out.hidden_states[-1][0, -1].numpy()  # transformers applies the final norm here
    assert not np.allclose(ours[1, 0], normed, atol=1e-2)
    delta = block_features([ours[0], ours[1]], features="delta")[0]
    np.testing.assert_allclose(
        delta[0], block_output - out.hidden_states[-2][0, -1].numpy(), atol=1e-5
    )


def test_forward_stops_after_the_last_needed_block(pico_llama: Path) -> None:
    model, tokenizer = _load(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    calls: list[str] = []
    modules = {f"block{k}": blocks[k] for k in range(PICO_LAYERS)}
    modules |= {"norm": model.model.norm, "lm_head": model.lm_head}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: calls.append(name))
        for name, m in modules.items()
    ]
    try:
        forward_last_token_states(
            model, blocks, [1, 2], _token_lists(tokenizer), pad_id=0, device=CPU
        )
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["block0", "block1", "block2"]


def test_plan_batches_respects_the_token_budget_and_covers_every_item() -> None:
    lengths = [5, 40, 12, 12, 7, 33, 100, 1]
    batches = plan_batches(lengths, batch_tokens=48)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= 48
    assert batches[0] == [6]  # the longest prompt goes first, alone


def test_plan_batches_bounds_padding_when_asked() -> None:
    lengths = [40, 39, 38, 30, 29, 28, 20, 20, 19, 10]
    loose = plan_batches(lengths, batch_tokens=10_000)
    assert loose == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]  # no padding limit: one batch
    tight = plan_batches(lengths, batch_tokens=10_000, max_padding=0.1)
    assert sorted(i for batch in tight for i in batch) == list(range(len(lengths)))
    for batch in tight:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert 1 - sum(lengths[i] for i in batch) / padded <= 0.1
    assert tight == [[0, 1, 2, 3], [4, 5], [6, 7, 8], [9]]


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own() -> None:
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # the short one keeps its last token
    assert shared_prefix_length([[7, 2, 3], [1, 2, 3]]) == 0
    assert shared_prefix_length([[5, 6, 7, 8]]) == 3
    assert shared_prefix_length([]) == 0


CHAT_TEXTS = [
    "You are a poet. Write a haiku about the sea.",
    "Act as a novelist who writes long and lavish sentences. Write a story about rain.",
    "Be brief. Describe a market.",
    "You are an author who writes plainly. Write a letter.",
    "Be brief.",
]


def _chat_token_lists(tokenizer: object) -> list[list[int]]:
    rendered = [
        tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [
                {"role": "system", "content": "A shared system prompt for every sample."},
                {"role": "user", "content": text},
            ],
            add_generation_prompt=True,
            tokenize=False,
        )
        for text in CHAT_TEXTS
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rendered]  # type: ignore[operator]


@pytest.mark.parametrize("family", ["pico_llama", "pico_qwen2_chatml"])
def test_prefix_reuse_gives_the_states_of_a_plain_full_model_forward(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if family == "pico_qwen2_chatml":
        from conftest import build_pico_model

        folder = build_pico_model(tmp_path / "qwen2", "qwen2", seed=3)
    else:
        folder = request.getfixturevalue(family)
    model, tokenizer = _load(folder)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = _chat_token_lists(tokenizer)
    prefix_length = shared_prefix_length(token_lists)
    assert prefix_length >= 10  # the template header and the system turn are shared
    wanted = [0, 1, 3, 4]
    items = [
        WorkItem(target=row % 2, row=row // 2, token_ids=ids) for row, ids in enumerate(token_lists)
    ]
    written: dict[tuple[int, int], np.ndarray] = {}

    def write(target: int, rows: list[int], states: np.ndarray) -> None:
        for column, row in enumerate(rows):
            written[(target, row)] = states[:, column]

    seen: list[int] = []
    handle = blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    try:
        run_collection(
            model,
            blocks,
            wanted,
            items,
            settings=CollectionSettings(pad_id=0, device=CPU, batch_tokens=64),
            write=write,
        )
    finally:
        handle.remove()
    # the prefix ran once, then the check prompt both ways, then batches of suffixes only
    shortest, longest = min(map(len, token_lists)), max(map(len, token_lists))
    assert seen[:3] == [prefix_length, shortest - prefix_length, shortest]
    assert max(seen[3:]) == longest - prefix_length
    assert len(written) == len(token_lists)
    for index, ids in enumerate(token_lists):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        expected = np.stack([out.hidden_states[k + 1][0, -1].numpy() for k in wanted])
        np.testing.assert_allclose(written[(index % 2, index // 2)], expected, atol=2e-5, rtol=1e-5)


def test_a_prefix_cache_that_does_not_reproduce_the_states_is_refused(
    pico_llama: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = _load(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = _chat_token_lists(tokenizer)
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

    monkeypatch.setattr(collect, "build_prefix_cache", wrong_cache)
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


def test_forward_refuses_a_prompt_without_the_cached_prefix(pico_llama: Path) -> None:
    model, tokenizer = _load(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = _chat_token_lists(tokenizer)
    prefix = build_prefix_cache(model, blocks, [1], token_lists[0][:8], device=CPU)
    with pytest.raises(ValueError, match="does not start with the cached prefix"):
        forward_last_token_states(
            model,
            blocks,
            [1],
            [token_lists[0], [5, *token_lists[1]]],
            pad_id=0,
            device=CPU,
            prefix=prefix,
        )


def test_the_cache_is_passed_under_the_keyword_the_installed_forward_takes(
    pico_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cvgen owns the cache: it creates it and passes it under `cache` or `past_key_values`,
    whichever the installed forward declares, so a renamed keyword cannot silently turn the
    reuse off (transformers 5.24 renamed it)."""
    model, tokenizer = _load(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    declared = inspect.signature(model.forward).parameters
    expected = "cache" if "cache" in declared else "past_key_values"
    assert cache_keyword(model) == expected
    token_lists = _chat_token_lists(tokenizer)
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
    model, tokenizer = _load(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = _chat_token_lists(tokenizer)

    def no_keyword(model: torch.nn.Module) -> str:
        raise PrefixCacheUnavailable("LlamaForCausalLM.forward takes none of the cache keywords")

    monkeypatch.setattr(collect, "cache_keyword", no_keyword)
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
