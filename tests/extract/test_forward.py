"""One batched forward on pico models: padding, the last block before the final norm, early
stop, and a prompt that does not start with the cached prefix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PICO_LAYERS
from pico_prompts import CPU, chat_token_lists, load_pico, plain_token_lists

from cvgen.extract.decoder_blocks import find_decoder_blocks
from cvgen.extract.forward import forward_last_token_states
from cvgen.extract.prefix_cache import (
    build_prefix_cache,
)
from cvgen.solve.blocks import block_features


@pytest.mark.parametrize("family", ["pico_llama", "pico_qwen2"])
def test_batched_states_equal_one_prompt_at_a_time(
    family: str, request: pytest.FixtureRequest
) -> None:
    model, tokenizer = load_pico(request.getfixturevalue(family))
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = plain_token_lists(tokenizer)
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
    model, tokenizer = load_pico(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    ids = plain_token_lists(tokenizer)[0]
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
    model, tokenizer = load_pico(pico_llama)
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
            model, blocks, [1, 2], plain_token_lists(tokenizer), pad_id=0, device=CPU
        )
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["block0", "block1", "block2"]


def test_forward_refuses_a_prompt_without_the_cached_prefix(pico_llama: Path) -> None:
    model, tokenizer = load_pico(pico_llama)
    blocks = find_decoder_blocks(model, PICO_LAYERS)
    token_lists = chat_token_lists(tokenizer)
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
