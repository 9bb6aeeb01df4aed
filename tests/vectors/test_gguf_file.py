"""Tests for cvgen.vectors.gguf_file: round trips, atomic writes, validation before writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from cvgen.vectors import gguf_file
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.format import ControlVectorError, MetadataValue
from cvgen.vectors.gguf_file import (
    open_control_vector_reader,
    read_fields,
    write_control_vector,
)
from cvgen.vectors.llamacpp_rules import llamacpp_problems

N_EMBD = 8


def _vector(seed: int, n: int = N_EMBD) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _leftovers(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


# --------------------------------------------------------------------------- round trip


def test_round_trip_values_names_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "axis.gguf"
    directions = {5: _vector(5).astype(np.float64), 1: _vector(1), 12: _vector(12)}
    metadata: dict[str, MetadataValue] = {
        "cvgen.axis": "formality",
        "cvgen.seed": -3,
        "cvgen.big": 2**40,
        "cvgen.scale": 0.1,
        "cvgen.debias": True,
        "cvgen.flag_off": False,
        "cvgen.layers": [1, 5, 12],
        "cvgen.note": "",
    }
    write_control_vector(path, directions, model_hint="org/tiny-llama", metadata=metadata)

    reader = GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.5", "direction.12"]
    assert all(t.tensor_type == GGMLQuantizationType.F32 for t in reader.tensors)
    types = {name: field.types for name, field in reader.fields.items()}
    assert types["controlvector.layer_count"] == [GGUFValueType.UINT32]
    assert types["cvgen.seed"] == [GGUFValueType.INT64]
    assert types["cvgen.scale"] == [GGUFValueType.FLOAT64]
    assert types["cvgen.debias"] == [GGUFValueType.BOOL]
    assert types["cvgen.layers"] == [GGUFValueType.ARRAY, GGUFValueType.INT64]
    del reader

    cv = ControlVector.from_gguf(path)
    assert list(cv.directions) == [1, 5, 12]
    for block, vector in directions.items():
        assert cv.directions[block].dtype == np.float32
        np.testing.assert_array_equal(cv.directions[block], vector.astype(np.float32))
    assert cv.n_embd == N_EMBD
    assert cv.model_hint == "org/tiny-llama"
    assert cv.metadata == metadata  # the format's own keys are not metadata
    for key, value in metadata.items():
        assert type(cv.metadata[key]) is type(value), key
    fields = read_fields(open_control_vector_reader(path))
    assert fields == {
        "general.architecture": "controlvector",
        "controlvector.model_hint": "org/tiny-llama",
        "controlvector.layer_count": 3,
        "cvgen.layer_convention": "direction.k = output of block k (0-based)",
        **metadata,
    }
    assert llamacpp_problems(path, n_embd=N_EMBD, n_layer=13) == []


def test_block_k_is_written_as_direction_k_not_k_plus_1(tmp_path: Path) -> None:
    path = tmp_path / "one.gguf"
    write_control_vector(path, {1: np.arange(4.0)}, model_hint="m")
    reader = GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["direction.1"]
    np.testing.assert_array_equal(reader.tensors[0].data, [0.0, 1.0, 2.0, 3.0])


def test_overwrites_existing_target(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(path, {1: np.ones(4)}, model_hint="m")
    write_control_vector(path, {2: np.full(4, 2.0)}, model_hint="m2")
    cv = ControlVector.from_gguf(path)
    assert list(cv.directions) == [2]
    assert cv.model_hint == "m2"
    assert _leftovers(tmp_path) == ["cv.gguf"]


# --------------------------------------------------------------------------- atomicity


def test_failure_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen_during_write: list[str] = []

    def explode(self: GGUFWriter, *, progress: bool = False) -> None:
        seen_during_write.extend(_leftovers(tmp_path))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_control_vector(tmp_path / "cv.gguf", {1: np.ones(4)}, model_hint="m")
    assert len(seen_during_write) == 1
    assert seen_during_write[0].endswith(".part")
    assert _leftovers(tmp_path) == []


def test_failure_keeps_previous_target_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(path, {1: np.ones(4)}, model_hint="m")
    before = path.read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError("rename refused")

    monkeypatch.setattr(gguf_file.os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        write_control_vector(path, {1: np.full(4, 9.0)}, model_hint="other")
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == ["cv.gguf"]


# --------------------------------------------------------------------------- write validation


@pytest.mark.parametrize(
    ("directions", "fragment"),
    [
        ({0: np.ones(4)}, "block index 0"),
        ({-2: np.ones(4)}, "block index -2"),
        ({"3": np.ones(4)}, "block index '3'"),
        ({True: np.ones(4)}, "block index True"),
        ({}, "no directions"),
        ({1: np.ones((2, 4))}, "block 1 has shape (2, 4)"),
        ({1: np.ones(0)}, "block 1 has shape (0,)"),
        ({1: np.ones(4), 2: np.ones(5)}, "block 2 has length 5, but block 1 has length 4"),
        ({1: np.array([0.0, np.nan, 1.0])}, "first at index 1: nan"),
        ({4: np.array([np.inf, 0.0])}, "block 4 has 1 non-finite"),
        ({1: np.array([1e300, 0.0])}, "first at index 0: 1e+300"),
        ({1: np.array(["a", "b"])}, "dtype <U1"),
    ],
)
def test_write_rejects_bad_directions(
    tmp_path: Path, directions: dict[object, np.ndarray], fragment: str
) -> None:
    path = tmp_path / "bad.gguf"
    with pytest.raises(ControlVectorError) as caught:
        write_control_vector(path, directions, model_hint="m")  # type: ignore[arg-type]
    message = str(caught.value)
    assert str(path) in message
    assert fragment in message
    assert "\n" not in message
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("hint", ["", "   "])
def test_write_rejects_empty_model_hint(tmp_path: Path, hint: str) -> None:
    path = tmp_path / "cv.gguf"
    with pytest.raises(ControlVectorError, match="controlvector.model_hint") as caught:
        write_control_vector(path, {1: np.ones(4)}, model_hint=hint)
    assert repr(hint) in str(caught.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"axis": "x"}, "key 'axis' must start with 'cvgen.'"),
        ({"general.name": "x"}, "key 'general.name'"),
        ({"cvgen.layer_convention": "x"}, "'cvgen.layer_convention' is reserved"),
        ({"cvgen.d": {"a": 1}}, "cvgen.d has unsupported value {'a': 1}"),
        ({"cvgen.l": []}, "cvgen.l has unsupported value []"),
        ({"cvgen.l": [1, "2"]}, "cvgen.l has non-integer item '2'"),
        ({"cvgen.l": [1, 2.5]}, "cvgen.l has non-integer item 2.5"),
        ({"cvgen.n": 2**64}, f"cvgen.n value {2**64} does not fit int64"),
    ],
)
def test_write_rejects_bad_metadata(
    tmp_path: Path, metadata: dict[str, object], fragment: str
) -> None:
    path = tmp_path / "cv.gguf"
    with pytest.raises(ControlVectorError) as caught:
        write_control_vector(path, {1: np.ones(4)}, model_hint="m", metadata=metadata)  # type: ignore[arg-type]
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)
    assert _leftovers(tmp_path) == []


def test_write_refuses_colon_in_file_name(tmp_path: Path) -> None:
    path = tmp_path / "model:123b-happy.gguf"
    with pytest.raises(ControlVectorError) as caught:
        write_control_vector(path, {1: np.ones(4)}, model_hint="m")
    assert "model:123b-happy.gguf" in str(caught.value)
    assert "FILE:SCALE" in str(caught.value)
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- opening


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"not a gguf file at all", "GGUF magic invalid"),
        (b"", "not a valid GGUF file"),
    ],
)
def test_non_gguf_rejected(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(ControlVectorError) as caught:
        ControlVector.from_gguf(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)
    with pytest.raises(ControlVectorError, match="GGUF"):
        llamacpp_problems(path)


def test_missing_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(ControlVectorError, match=f"{path}: cannot open file"):
        ControlVector.from_gguf(path)
