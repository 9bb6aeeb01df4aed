"""Tests for cvgen.vectors.describe: the text of `cvgen inspect`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import craft_gguf

from cvgen.vectors.describe import describe_control_vector
from cvgen.vectors.gguf_file import write_control_vector


def test_describe_lists_header_metadata_and_norms(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(
        path,
        {2: np.array([3.0, 4.0]), 7: np.array([6.0, 8.0]), 9: np.zeros(2)},
        model_hint="org/tiny",
        metadata={"cvgen.seed": 11, "cvgen.axis": "mood"},
    )
    text = describe_control_vector(path)
    lines = text.splitlines()
    assert f"file:        {path}" in lines
    assert "model hint:  org/tiny" in lines
    assert "layer count: 3" in lines
    assert "n_embd:      2" in lines
    keys = [line.split(" = ")[0].strip() for line in lines if " = " in line]
    assert keys == sorted(keys)
    assert "  cvgen.seed = 11" in lines
    assert "  cvgen.axis = 'mood'" in lines
    rows = {int(line.split()[0]): line for line in lines if line[:5].strip().isdigit()}
    assert set(rows) == {2, 7, 9}
    assert rows[2].split()[1] == "5.0000"
    assert rows[2].count("#") == 20
    assert rows[7].split()[1] == "10.0000"
    assert rows[7].count("#") == 40
    assert rows[9].count("#") == 0


def test_describe_without_layer_count_and_with_foreign_keys(tmp_path: Path) -> None:
    path = craft_gguf(tmp_path / "cv.gguf", [("direction.1", np.array([1.0, 0.0], np.float32))])
    lines = describe_control_vector(path).splitlines()
    assert "layer count: (none)" in lines
    assert "model hint:  tiny-model" in lines
    assert "  general.architecture = 'controlvector'" in lines
    assert "  controlvector.model_hint = 'tiny-model'" in lines
