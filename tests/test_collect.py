"""The collector on pico models: padding, the last block before the final norm, early stop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PICO_LAYERS

from cvgen.collect import block_features, forward_last_token_states, plan_batches
from cvgen.model import find_decoder_blocks

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


def test_block_features_delta_and_residual() -> None:
    h0, h1, h2 = (np.full((2, 3), v, dtype=np.float32) for v in (1.0, 3.0, 7.0))
    delta = block_features([h0, h1, h2], features="delta")
    residual = block_features([h0, h1, h2], features="residual")
    assert [d[0, 0] for d in delta] == [2.0, 4.0]
    assert [r[0, 0] for r in residual] == [3.0, 7.0]
