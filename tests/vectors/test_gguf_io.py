"""Tests for cvgen.vectors.gguf_io: round trips, atomic writes, and llama.cpp 0c1e570's acceptance rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import craft_gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from cvgen.vectors import gguf_io
from cvgen.vectors.gguf_io import (
    ControlVectorError,
    ControlVectorFile,
    describe_control_vector,
    llamacpp_problems,
    parse_direction_index,
    read_control_vector,
    write_control_vector,
)

N_EMBD = 8


def _vector(seed: int, n: int = N_EMBD) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _leftovers(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


# --------------------------------------------------------------------------- round trip


def test_round_trip_values_names_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "axis.gguf"
    directions = {5: _vector(5).astype(np.float64), 1: _vector(1), 12: _vector(12)}
    metadata: dict[str, gguf_io.MetadataValue] = {
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

    cv = read_control_vector(path)
    assert list(cv.directions) == [1, 5, 12]
    for block, vector in directions.items():
        assert cv.directions[block].dtype == np.float32
        np.testing.assert_array_equal(cv.directions[block], vector.astype(np.float32))
    assert cv.n_embd == N_EMBD
    assert cv.model_hint == "org/tiny-llama"
    assert cv.layer_count == 3
    assert cv.path == path
    expected = {
        "general.architecture": "controlvector",
        "controlvector.model_hint": "org/tiny-llama",
        "controlvector.layer_count": 3,
        "cvgen.layer_convention": "direction.k = output of block k (0-based)",
        **metadata,
    }
    assert cv.metadata == expected
    for key, value in metadata.items():
        assert type(cv.metadata[key]) is type(value), key
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
    cv = read_control_vector(path)
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

    monkeypatch.setattr(gguf_io.os, "replace", refuse)
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


# --------------------------------------------------------------------------- llama.cpp rules


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("direction.7", 7),
        ("direction.07", 7),
        ("direction.+7", 7),
        ("direction. 7", 7),
        ("direction.7.5", 7),
        ("direction.3abc", 3),
        ("direction.-1", -1),
        ("direction.0", 0),
        ("direction.2147483647", 2147483647),
        ("direction.2147483648", None),
        ("direction.x", None),
        ("direction.", None),
        ("direction", None),
        ("Direction.3", None),
        ("foo.3", None),
        ("foo.direction.3", None),
    ],
)
def test_parse_direction_index_mirrors_std_stoi(name: str, expected: int | None) -> None:
    assert parse_direction_index(name) == expected


def _assert_rejected(path: Path, fragment: str) -> None:
    """The problem shows up in llamacpp_problems and in read_control_vector's error."""
    problems = llamacpp_problems(path)
    assert any(fragment in problem for problem in problems), problems
    with pytest.raises(ControlVectorError) as caught:
        read_control_vector(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("direction.0", "tensor 'direction.0' has block index 0"),
        ("foo.3", "tensor 'foo.3' is not named direction.N"),
        ("direction.x", "tensor 'direction.x' is not named direction.N"),
        ("direction", "tensor 'direction' is not named direction.N"),
        ("direction.-2", "tensor 'direction.-2' is not named direction.N"),
    ],
)
def test_bad_tensor_name_rejects_whole_file(tmp_path: Path, name: str, fragment: str) -> None:
    path = craft_gguf(tmp_path / "cv.gguf", [("direction.1", _vector(1)), (name, _vector(2))])
    _assert_rejected(path, fragment)


def test_f16_tensor_rejected(tmp_path: Path) -> None:
    path = craft_gguf(tmp_path / "cv.gguf", [("direction.2", _vector(2).astype(np.float16))])
    _assert_rejected(path, "tensor 'direction.2' has type F16, expected F32")


def test_2d_tensor_rejected(tmp_path: Path) -> None:
    path = craft_gguf(tmp_path / "cv.gguf", [("direction.2", np.ones((2, 4), dtype=np.float32))])
    _assert_rejected(path, "tensor 'direction.2' has shape ne=[4, 2], expected 1-D")


def test_trailing_unit_axis_counts_as_1d_like_ggml_n_dims(tmp_path: Path) -> None:
    # numpy (1, 4) is ggml ne=[4, 1]; ggml_n_dims() == 1, so llama.cpp accepts it.
    path = craft_gguf(tmp_path / "cv.gguf", [("direction.2", np.arange(4, dtype=np.float32)[None])])
    assert llamacpp_problems(path) == []
    cv = read_control_vector(path)
    np.testing.assert_array_equal(cv.directions[2], [0.0, 1.0, 2.0, 3.0])
    assert cv.n_embd == 4


def test_mismatched_lengths_rejected(tmp_path: Path) -> None:
    path = craft_gguf(
        tmp_path / "cv.gguf", [("direction.1", _vector(1)), ("direction.2", _vector(2, 6))]
    )
    _assert_rejected(path, "tensor 'direction.2' has 6 elements, but 'direction.1' has 8")


def test_no_tensors_rejected(tmp_path: Path) -> None:
    path = craft_gguf(tmp_path / "cv.gguf", [])
    _assert_rejected(path, "no direction tensors")


@pytest.mark.parametrize(("hint", "shown"), [("", "''"), (None, "None")])
def test_empty_or_missing_model_hint_rejected(tmp_path: Path, hint: str | None, shown: str) -> None:
    path = craft_gguf(tmp_path / "cv.gguf", [("direction.1", _vector(1))], model_hint=hint)
    _assert_rejected(path, f"controlvector.model_hint is {shown}, expected a non-empty string")


@pytest.mark.parametrize(("architecture", "shown"), [("llama", "'llama'"), (None, "None")])
def test_wrong_or_missing_architecture_rejected(
    tmp_path: Path, architecture: str | None, shown: str
) -> None:
    path = craft_gguf(
        tmp_path / "cv.gguf", [("direction.1", _vector(1))], architecture=architecture
    )
    _assert_rejected(path, f"general.architecture is {shown}, expected 'controlvector'")


def test_nan_in_file_rejected(tmp_path: Path) -> None:
    vector = _vector(1)
    vector[[2, 5]] = [np.nan, np.inf]
    path = craft_gguf(tmp_path / "cv.gguf", [("direction.3", vector)])
    _assert_rejected(path, "tensor 'direction.3' has 2 non-finite values")


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = craft_gguf(
        tmp_path / "cv.gguf",
        [("direction.0", _vector(0)), ("direction.2", _vector(2).astype(np.float16))],
        model_hint="",
    )
    problems = llamacpp_problems(path)
    assert len(problems) == 3
    assert "direction.0" in problems[1]
    assert "F16" in problems[2]


def test_colon_in_name_is_a_problem_but_still_readable(tmp_path: Path) -> None:
    path = craft_gguf(tmp_path / "model:123b.gguf", [("direction.1", _vector(1))])
    problems = llamacpp_problems(path)
    assert len(problems) == 1
    assert "'model:123b.gguf' contains ':'" in problems[0]
    assert list(read_control_vector(path).directions) == [1]


def test_model_width_mismatch_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(path, {1: _vector(1)}, model_hint="m")
    assert llamacpp_problems(path, n_embd=N_EMBD) == []
    problems = llamacpp_problems(path, n_embd=16)
    assert problems == [
        "tensor 'direction.1' has width 8, but the model's n_embd is 16 "
        "(llama.cpp: 'control vector n_embd does not match model')"
    ]
    with pytest.raises(ControlVectorError, match="n_embd is 16"):
        gguf_io.check_llamacpp_rules(path, n_embd=16)


def test_blocks_beyond_model_are_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(path, {1: _vector(1), 3: _vector(3), 4: _vector(4)}, model_hint="m")
    assert llamacpp_problems(path, n_layer=5) == []
    problems = llamacpp_problems(path, n_layer=4)
    assert len(problems) == 1
    assert "tensor 'direction.4' steers block 4" in problems[0]
    assert "valid 1..3" in problems[0]


def test_same_block_twice_is_summed_like_llamacpp(tmp_path: Path) -> None:
    path = craft_gguf(
        tmp_path / "cv.gguf",
        [
            ("direction.3", np.ones(4, dtype=np.float32)),
            ("direction.03", np.full(4, 2.0, np.float32)),
        ],
    )
    cv = read_control_vector(path)
    assert list(cv.directions) == [3]
    np.testing.assert_array_equal(cv.directions[3], np.full(4, 3.0))


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
        read_control_vector(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)
    with pytest.raises(ControlVectorError, match="GGUF"):
        llamacpp_problems(path)


def test_missing_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(ControlVectorError, match=f"{path}: cannot open file"):
        read_control_vector(path)


# --------------------------------------------------------------------------- describe


def test_describe_lists_header_metadata_and_norms(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(
        path,
        {2: np.array([3.0, 4.0]), 7: np.array([6.0, 8.0]), 9: np.zeros(2)},
        model_hint="org/tiny",
        metadata={"cvgen.seed": 11, "cvgen.axis": "mood"},
    )
    text = describe_control_vector(read_control_vector(path))
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


def test_describe_without_optional_metadata() -> None:
    cv = ControlVectorFile(
        path=Path("x.gguf"),
        directions={1: np.array([1.0, 0.0], dtype=np.float32)},
        metadata={"controlvector.layer_count": True},
        n_embd=2,
    )
    assert cv.model_hint is None
    assert cv.layer_count is None
    text = describe_control_vector(cv)
    assert "model hint:  (none)" in text
    assert "layer count: (none)" in text
