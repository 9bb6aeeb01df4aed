"""`cvgen bake`: control vectors written into a model GGUF as FFN output biases.

In llama.cpp's Llama-family graph (`src/models/llama.cpp` at the pinned commit) block N adds
`blk.N.ffn_down.bias` (optional, loaded when present) to the FFN's output, then the residual,
then `direction.N` of a control vector. So a bias of Σ scale·direction.N gives block N the same
sum as the control vectors; only the order of two float32 additions differs. A bias the model
already has is added to. Architectures whose graph has no such slot (Gemma 3 normalises the FFN
output before the residual add) are refused, naming the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from cvgen import __version__
from cvgen.vectors.model_header import read_gguf_layout
from cvgen.weights.gguf_copy import Edit, NewTensor, Rewritten, WeightsError, rewrite_gguf

# architecture -> why a bias on ffn_down is exactly a control vector there, or None: refused
EXACT_SLOTS = {
    "llama": "blk.N.ffn_down.bias is added to the FFN output right before the residual add",
}
REFUSED = {
    "gemma3": "its FFN output is normalised (post_ffw_norm) before the residual add",
}


def check_bakeable(architecture: str, tensor_names: set[str], path: Path) -> None:
    """Refuse an architecture without an exact slot, or a model whose ffn_down is scaled."""
    if architecture not in EXACT_SLOTS:
        reason = REFUSED.get(architecture, "cvgen has not checked its graph for an exact slot")
        raise WeightsError(
            f"--model {path}: architecture '{architecture}' cannot take control vectors as "
            f"biases exactly ({reason}); use --enhance, or load the vectors with "
            "--control-vector-scaled"
        )
    scaled = sorted(name for name in tensor_names if name.endswith("ffn_down.scale"))
    if scaled:
        raise WeightsError(f"--model {path}: {scaled[0]} scales the FFN output after its bias")


def bias_tensors(
    names: set[str], vectors: Mapping[int, np.ndarray]
) -> tuple[dict[str, NewTensor], dict[str, Edit]]:
    """The biases that carry `vectors` (block -> float32 sum): new tensors placed after each
    block's ffn_down.weight, and edits adding to the biases a model already has."""
    added: dict[str, NewTensor] = {}
    edits: dict[str, Edit] = {}
    for block, vector in sorted(vectors.items()):
        bias = f"blk.{block}.ffn_down.bias"
        values = np.asarray(vector, dtype=np.float32)
        if bias in names:
            edits[bias] = _adder(values)
        else:
            added[bias] = NewTensor(values, after=f"blk.{block}.ffn_down.weight")
    return added, edits


def record_fields(group: str, record: Mapping[str, str]) -> dict[str, tuple[Any, GGUFValueType]]:
    """`record` as `cvgen.GROUP.*` string metadata, with the cvgen version."""
    fields: dict[str, tuple[Any, GGUFValueType]] = {
        f"cvgen.{group}.{key}": (value, GGUFValueType.STRING) for key, value in record.items()
    }
    fields[f"cvgen.{group}.cvgen_version"] = (__version__, GGUFValueType.STRING)
    return fields


def bake_vectors(
    model: Path, out: Path, vectors: Mapping[int, np.ndarray], *, record: Mapping[str, str]
) -> list[Rewritten]:
    """Write `model` to `out` with `vectors[N]` added to blk.N.ffn_down.bias (created when
    absent), and `record` (what was baked) as `cvgen.bake.*` metadata."""
    layout = read_gguf_layout(model)
    names = {tensor.name for tensor in layout.tensors}
    check_bakeable(str(layout.fields.get("general.architecture")), names, model)
    added, edits = bias_tensors(names, vectors)
    return rewrite_gguf(model, out, fields=record_fields("bake", record), added=added, edits=edits)


def _adder(values: np.ndarray) -> Edit:
    """An edit that adds `values` to a bias already in the model."""
    return lambda bias: bias + values
