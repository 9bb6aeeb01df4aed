"""The collection loop: batches planned within the token and padding bounds, and a run over
chat prompts that reuses their shared prefix and gives a plain forward's states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PICO_LAYERS
from pico_prompts import CPU, chat_token_lists, load_pico

from cvgen.extract.collect import CollectionSettings, WorkItem, plan_batches, run_collection
from cvgen.extract.decoder_blocks import find_decoder_blocks
from cvgen.extract.prefix_cache import (
    shared_prefix_length,
)


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


@pytest.mark.parametrize("family", ["pico_llama", "pico_qwen2_chatml"])
def test_prefix_reuse_gives_the_states_of_a_plain_full_model_forward(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if family == "pico_qwen2_chatml":
        from conftest import build_pico_model

        folder = build_pico_model(tmp_path / "qwen2", "qwen2", seed=3)
    else:
        folder = request.getfixturevalue(family)
    model, tokenizer = load_pico(folder)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = chat_token_lists(tokenizer)
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


def test_without_prefix_reuse_every_batch_runs_whole_prompts(pico_llama: Path) -> None:
    """`reuse_prefix=False` and `max_padding` reach the loop: no cache, whole prompts in
    batches of one length each (padding 0), the states of a plain forward, and progress."""
    model, tokenizer = load_pico(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = chat_token_lists(tokenizer)
    items = [WorkItem(0, row, ids) for row, ids in enumerate(token_lists)]
    got = np.zeros((2, len(items), 32), dtype=np.float32)
    counts: list[int] = []

    def write(target: int, rows: list[int], states: np.ndarray) -> None:
        got[:, rows] = states

    seen: list[int] = []
    handle = blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    settings = CollectionSettings(
        pad_id=0, device=CPU, batch_tokens=4096, reuse_prefix=False, max_padding=0.0
    )
    try:
        run_collection(
            model, blocks, [1, 2], items, settings=settings, write=write, progress=counts.append
        )
    finally:
        handle.remove()
    lengths = sorted({len(ids) for ids in token_lists}, reverse=True)
    assert seen == lengths  # one batch per distinct length, longest first, no prefix run
    assert sum(counts) == len(items)
    for row, ids in enumerate(token_lists):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        expected = np.stack([out.hidden_states[k + 1][0, -1].numpy() for k in (1, 2)])
        np.testing.assert_allclose(got[:, row], expected, atol=2e-5, rtol=1e-5)
