"""Model sources: .gguf files, folders and hub ids; content identity; block discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cvgen.model import (
    ModelError,
    find_decoder_blocks,
    load_config,
    resolve_dtype,
    resolve_model_source,
)


def test_hub_id_is_accepted_without_touching_the_network() -> None:
    source = resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (source.kind, source.directory, source.slug) == (
        "hub",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2-135M-Instruct",
    )


def test_gguf_and_folder_sources(tmp_path: Path, pico_llama: Path) -> None:
    gguf_file = tmp_path / "My Model:v2.Q4.gguf"
    gguf_file.write_bytes(b"GGUF" + bytes(100))
    source = resolve_model_source(str(gguf_file))
    assert (source.kind, source.gguf_file, source.directory) == (
        "gguf",
        gguf_file.name,
        str(tmp_path),
    )
    assert source.slug == "My-Model-v2.Q4"  # no ':' or space in file names
    folder = resolve_model_source(str(pico_llama))
    assert folder.kind == "folder" and folder.gguf_file is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.gguf", "GGUF file not found: missing.gguf"),
        ("not a model", "is not a .gguf file, a model folder or a hub id"),
    ],
)
def test_bad_model_specs(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_model_source(spec)


def test_folder_without_config_and_plain_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model_source(str(tmp_path))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file but not a .gguf file"):
        resolve_model_source(str(other))


def test_identity_follows_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(1000))
    source = resolve_model_source(str(path))
    before = source.identity(None)
    assert source.identity(None) == before
    path.write_bytes(bytes(999) + b"\x01")
    assert source.identity(None) != before


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
    import torch
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


def test_auto_dtype_on_cpu_is_float32() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
