"""Decoder blocks: found at the known places, named by --decoder-blocks, never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvgen.extract.decoder_blocks import find_decoder_blocks
from cvgen.extract.loading import load_config
from cvgen.extract.model_source import ModelError, resolve_model_source


def test_blocks_are_found_and_a_model_without_them_is_refused(pico_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pico_llama)
    assert find_decoder_blocks(model, 6) is model.model.layers
    with pytest.raises(ModelError, match="cannot find the 7 decoder blocks in LlamaForCausalLM"):
        find_decoder_blocks(model, 7)
    config = load_config(resolve_model_source(str(pico_llama)), trust_remote_code=False)
    assert config.num_hidden_layers == 6


def test_blocks_at_an_unknown_place_are_never_guessed(pico_llama: Path) -> None:
    """A model that keeps its blocks where cvgen does not look gets an error that lists the
    candidate ModuleLists and names the option, never a silent pick (repeng does the same)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pico_llama)
    blocks = model.model.layers
    del model.model.layers
    model.model.stack = torch.nn.Module()
    model.model.stack.blocks = blocks
    model.model.heads = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(6))
    with pytest.raises(ModelError) as caught:
        find_decoder_blocks(model, 6)
    message = str(caught.value)
    assert "its ModuleLists of length 6 are: model.stack.blocks, model.heads" in message
    assert "--decoder-blocks PATH" in message
    assert find_decoder_blocks(model, 6, path="model.stack.blocks") is blocks
    with pytest.raises(
        ModelError, match="'model.heads' in LlamaForCausalLM is a ModuleList of length 6"
    ):
        find_decoder_blocks(model, 5, path="model.heads")
    with pytest.raises(ModelError, match="'model.nowhere' in LlamaForCausalLM is nothing"):
        find_decoder_blocks(model, 6, path="model.nowhere")
