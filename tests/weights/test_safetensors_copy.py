"""The safetensors rewrite: untouched tensors and files byte for byte, edits in their dtype."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cvgen.weights.gguf_copy import WeightsError
from cvgen.weights.safetensors_copy import rewrite_safetensors, tensors_of


def _model(folder: Path) -> dict[str, torch.Tensor]:
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(6, 4, generator=generator).to(torch.bfloat16),
        "b.weight": torch.randn(3, 5, generator=generator).to(torch.float16),
        "c.bias": torch.randn(7, generator=generator),
        "ids": torch.arange(5, dtype=torch.int64),
    }
    save_file({k: tensors[k] for k in ("a.weight", "ids")}, folder / "model-1.safetensors")
    save_file({k: tensors[k] for k in ("b.weight", "c.bias")}, folder / "model-2.safetensors")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 4}))
    return tensors


def test_edits_land_in_their_dtype_and_the_rest_is_byte_identical(tmp_path: Path) -> None:
    tensors = _model(tmp_path / "m")
    done = rewrite_safetensors(
        tmp_path / "m",
        tmp_path / "out",
        edits={"a.weight": lambda v: v * 2 + 1, "c.bias": lambda v: -v, "b.weight": lambda v: None},
    )
    assert sorted(r.name for r in done) == ["a.weight", "c.bias"]
    assert not any(r.fell_back for r in done)
    assert (tmp_path / "out/config.json").read_bytes() == (tmp_path / "m/config.json").read_bytes()
    one = load_file(tmp_path / "out/model-1.safetensors")
    two = load_file(tmp_path / "out/model-2.safetensors")
    assert one["a.weight"].dtype == torch.bfloat16
    expected = (tensors["a.weight"].float() * 2 + 1).to(torch.bfloat16)  # torch rounds to even
    assert torch.equal(one["a.weight"], expected)
    assert torch.equal(one["ids"], tensors["ids"])
    assert torch.equal(two["c.bias"], -tensors["c.bias"])
    second = (tmp_path / "out/model-2.safetensors").read_bytes()
    original = (tmp_path / "m/model-2.safetensors").read_bytes()
    kept = tensors_of(tmp_path / "m")["b.weight"]
    assert second[kept.start : kept.end] == original[kept.start : kept.end]
    header = tensors_of(tmp_path / "m")["c.bias"].file.read_bytes()[:8]
    assert second[:8] == header and len(second) == len(original)


def test_an_existing_out_or_a_missing_tensor_writes_nothing(tmp_path: Path) -> None:
    _model(tmp_path / "m")
    (tmp_path / "taken").mkdir()
    with pytest.raises(WeightsError, match="it exists"):
        rewrite_safetensors(tmp_path / "m", tmp_path / "taken", edits={})
    with pytest.raises(WeightsError, match="tensor nope"):
        rewrite_safetensors(tmp_path / "m", tmp_path / "new", edits={"nope": lambda v: v})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "taken"]


def test_a_failing_edit_leaves_no_partial_output(tmp_path: Path) -> None:
    _model(tmp_path / "m")

    def broken(values: np.ndarray) -> np.ndarray:
        return values[:1]

    with pytest.raises(WeightsError, match="edited shape"):
        rewrite_safetensors(tmp_path / "m", tmp_path / "new", edits={"c.bias": broken})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
