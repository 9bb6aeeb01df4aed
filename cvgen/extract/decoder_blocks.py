"""What a loaded model's config and module tree say: its block count and width, its context
length, and where it keeps its decoder blocks (`find_decoder_blocks`, never a guess)."""

from __future__ import annotations

from typing import Any

import torch

from cvgen.extract.model_source import ModelError, ModelSource


def config_dimensions(config: Any, source: ModelSource) -> tuple[int, int]:
    """(n_layer, n_embd) from a config, also for configs nested under text_config."""
    text_config = getattr(config, "text_config", None) or config
    n_layer = getattr(text_config, "num_hidden_layers", None)
    n_embd = getattr(text_config, "hidden_size", None)
    if not isinstance(n_layer, int) or not isinstance(n_embd, int):
        raise ModelError(f"--model {source.spec}: config has no num_hidden_layers/hidden_size")
    return n_layer, n_embd


# Where transformers' model classes keep their decoder blocks, tried in this order.
KNOWN_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "language_model.model.layers",
)


def _module_at(model: torch.nn.Module, path: str) -> Any:
    """The attribute at dotted `path` below `model` (e.g. "model.layers"), or None."""
    module: Any = model
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_decoder_blocks(
    model: torch.nn.Module, n_layer: int, *, path: str | None = None
) -> torch.nn.ModuleList:
    """The model's list of `n_layer` decoder blocks: the ModuleList at `path` (a dotted
    attribute path such as "model.layers", from `--decoder-blocks`) when given, else the first
    of `KNOWN_BLOCK_PATHS` that holds one. Never a guess: a model that keeps its blocks
    elsewhere gets a `ModelError` that lists the ModuleLists of length `n_layer` it has and
    says how to name the right one."""
    if path is not None:
        module = _module_at(model, path)
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layer:
            return module
        found = "nothing" if module is None else f"a {type(module).__name__}"
        if isinstance(module, torch.nn.ModuleList):
            found += f" of length {len(module)}"
        raise ModelError(
            f"--decoder-blocks: {path!r} in {type(model).__name__} is {found}, "
            f"not a ModuleList of the {n_layer} decoder blocks"
        )
    for known in KNOWN_BLOCK_PATHS:
        module = _module_at(model, known)
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layer:
            return module
    lists = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layer
    ]
    hint = (
        f"its ModuleLists of length {n_layer} are: {', '.join(lists)}"
        if lists
        else f"it has no ModuleList of length {n_layer}"
    )
    raise ModelError(
        f"cannot find the {n_layer} decoder blocks in {type(model).__name__} at any of "
        f"{', '.join(KNOWN_BLOCK_PATHS)}; {hint}. Name them with --decoder-blocks PATH "
        "(e.g. --decoder-blocks model.layers)"
    )


def context_length(config: Any) -> int | None:
    """The model's context in tokens: `max_position_embeddings` of its (text) config, which
    transformers also fills from a GGUF file's `context_length`; None when it has none."""
    text_config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def describe_config(config: Any) -> dict[str, Any]:
    """A few config facts for the manifest."""
    text_config = getattr(config, "text_config", None) or config
    return {
        "architecture": str(getattr(text_config, "model_type", "unknown")),
        "architectures": list(getattr(config, "architectures", None) or []),
        "vocab_size": getattr(text_config, "vocab_size", None),
    }
