"""cvgen.steer.hooks: the hooks add exactly scale * vector to the chosen blocks' outputs of a
pico model (checked against a manual forward through the blocks), and never outlive the
`with` block, also when its body raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PICO_LAYERS

from cvgen.extract.decoder_blocks import find_decoder_blocks
from cvgen.steer.hooks import SteeringError, apply_directions


@pytest.fixture(scope="module")
def pico(pico_llama: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pico_llama, dtype=torch.float32)
    return model.eval()


def _block_outputs(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """The hidden states after each block (hidden_states[k + 1] is block k's output)."""
    with torch.inference_mode():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    return [state.clone() for state in states[1:]]


def _hook_count(blocks: torch.nn.ModuleList) -> int:
    """Forward hooks on the blocks (transformers may keep hooks of its own there)."""
    return sum(len(block._forward_hooks) for block in blocks)


def test_the_hook_adds_scale_times_vector_to_the_chosen_block_outputs(
    pico: torch.nn.Module,
) -> None:
    blocks = find_decoder_blocks(pico, PICO_LAYERS)
    rng = np.random.default_rng(5)
    directions = {k: rng.standard_normal(32).astype(np.float32) for k in (1, 3)}
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    captured: dict[int, torch.Tensor] = {}
    plain = _block_outputs(pico, ids)  # first, so the hooks transformers keeps are in place
    before = _hook_count(blocks)

    def capture(index: int):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            captured[index] = hidden.detach().clone()  # type: ignore[union-attr]

        return hook

    # the steering hooks are placed first, so the capturing hooks see their result
    with apply_directions(blocks, directions, scale=0.7):
        handles = [blocks[k].register_forward_hook(capture(k)) for k in range(PICO_LAYERS)]
        try:
            with torch.inference_mode():
                pico(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
    # the manual forward: block 1's steered output is its plain output plus 0.7 * vector;
    # block 3's output, given its steered input, plus 0.7 * its vector
    added = torch.from_numpy(directions[1] * np.float32(0.7))
    torch.testing.assert_close(captured[0], plain[0])
    torch.testing.assert_close(captured[1], plain[1] + added)
    assert (captured[2] - plain[2]).abs().max() > 1e-3  # the change flows downstream
    with torch.inference_mode():
        position = torch.arange(ids.shape[1])[None]
        rotary = pico.model.rotary_emb(captured[2], position)
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        block_3 = blocks[3](captured[2], attention_mask=mask, position_embeddings=rotary)
    block_3 = block_3[0] if isinstance(block_3, tuple) else block_3
    expected = block_3 + torch.from_numpy(directions[3] * np.float32(0.7))
    torch.testing.assert_close(captured[3], expected, atol=1e-5, rtol=1e-5)
    assert _hook_count(blocks) == before


def test_the_hooks_are_removed_when_the_body_raises(pico: torch.nn.Module) -> None:
    blocks = find_decoder_blocks(pico, PICO_LAYERS)
    ids = torch.tensor([[5, 17, 42]])
    plain = _block_outputs(pico, ids)
    before = _hook_count(blocks)
    with pytest.raises(RuntimeError, match="boom"), apply_directions(blocks, {2: np.ones(32)}):
        assert _hook_count(blocks) == before + 1
        raise RuntimeError("boom")
    assert _hook_count(blocks) == before
    for got, want in zip(_block_outputs(pico, ids), plain, strict=True):
        torch.testing.assert_close(got, want)


def test_bad_directions_are_refused_before_any_hook(pico: torch.nn.Module) -> None:
    blocks = find_decoder_blocks(pico, PICO_LAYERS)
    before = _hook_count(blocks)
    with pytest.raises(SteeringError, match=r"^direction\.6 is outside the model's 6 blocks$"):
        apply_directions(blocks, {0: np.ones(32, np.float32), 6: np.ones(32, np.float32)})
    with pytest.raises(SteeringError, match=r"^direction\.1: expected a 1-D vector"):
        apply_directions(blocks, {1: np.ones((2, 32), np.float32)})
    assert _hook_count(blocks) == before
