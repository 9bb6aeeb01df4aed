"""Tests for cvgen.vectors.model_header: the fast model-header reader, cross-checked field for
field against gguf's own GGUFReader, on crafted model-like files and on the real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_real_model
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from cvgen.vectors.format import ControlVectorError
from cvgen.vectors.gguf_file import write_control_vector
from cvgen.vectors.model_header import read_gguf_header, read_model_file_info

TOKENS = ["<s>", "</s>", "héllo", "", "wörld ✓"]
SCALARS: list[tuple[str, Any, GGUFValueType]] = [
    ("test.u8", 255, GGUFValueType.UINT8),
    ("test.i8", -128, GGUFValueType.INT8),
    ("test.u16", 65535, GGUFValueType.UINT16),
    ("test.i16", -32768, GGUFValueType.INT16),
    ("test.u32", 2**32 - 1, GGUFValueType.UINT32),
    ("test.i32", -(2**31), GGUFValueType.INT32),
    ("test.f32", 0.1, GGUFValueType.FLOAT32),
    ("test.bool_true", True, GGUFValueType.BOOL),
    ("test.bool_false", False, GGUFValueType.BOOL),
    ("test.string", "ünïcode text", GGUFValueType.STRING),
    ("test.empty_string", "", GGUFValueType.STRING),
    ("test.u64", 2**64 - 1, GGUFValueType.UINT64),
    ("test.i64", -(2**63), GGUFValueType.INT64),
    ("test.f64", 1e-300, GGUFValueType.FLOAT64),
]
ARRAYS: list[tuple[str, list[Any], GGUFValueType]] = [
    ("test.array_u8", [0, 7, 255], GGUFValueType.UINT8),
    ("test.array_i16", [-3, 4], GGUFValueType.INT16),
    ("test.array_i32", [1, -2, 3], GGUFValueType.INT32),
    ("test.array_u64", [2**63, 1], GGUFValueType.UINT64),
    ("test.array_f32", [0.5, -1.25, 3.0], GGUFValueType.FLOAT32),
    ("test.array_f64", [0.1, 2.5], GGUFValueType.FLOAT64),
    ("test.array_bool", [True, False, True], GGUFValueType.BOOL),
    ("tokenizer.ggml.tokens", TOKENS, GGUFValueType.STRING),
]


def _craft_model(path: Path, *, alignment: int | None = None) -> Path:
    """A small model-like GGUF: every value type, arrays of each kind, and two tensors."""
    writer = GGUFWriter(path, "llama")
    writer.add_name("Tiny Model")
    writer.add_uint32("llama.embedding_length", 4)
    writer.add_uint32("llama.block_count", 3)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 0)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 4)
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, value, kind in SCALARS:
        writer.add_key_value(key, value, kind)
    for key, values, item_kind in ARRAYS:
        writer.add_key_value(key, values, GGUFValueType.ARRAY, sub_type=item_kind)
    writer.add_tensor("token_embd.weight", np.arange(20, dtype=np.float32).reshape(5, 4))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _reader_fields(path: Path) -> dict[str, Any]:
    reader = GGUFReader(path)
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def _assert_same_fields(path: Path) -> None:
    """Every field read by read_gguf_header equals GGUFReader's, in value and Python type."""
    expected = _reader_fields(path)
    got = read_gguf_header(path, frozenset(expected))
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == value, key
        assert type(got[key]) is type(value), key
        if isinstance(value, list):
            assert [type(item) for item in got[key]] == [type(item) for item in value], key


@pytest.mark.parametrize("alignment", [None, 64])
def test_crafted_model_matches_gguf_reader_field_for_field(
    tmp_path: Path, alignment: int | None
) -> None:
    path = _craft_model(tmp_path / "tiny.gguf", alignment=alignment)
    _assert_same_fields(path)
    header = read_gguf_header(path, frozenset(_reader_fields(path)))
    assert header["test.f32"] == float(np.float32(0.1)) != 0.1
    assert header["test.u64"] == 2**64 - 1 and header["test.i64"] == -(2**63)
    assert header["tokenizer.ggml.tokens"] == TOKENS


def test_arrays_not_asked_for_are_none_and_scalars_still_read(tmp_path: Path) -> None:
    path = _craft_model(tmp_path / "tiny.gguf")
    header = read_gguf_header(path)
    assert all(header[key] is None for key, _, _ in ARRAYS)
    assert all(header[key] == value for key, value, _ in SCALARS if key != "test.f32")


def test_control_vector_file_matches_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(
        path, {1: np.ones(4), 3: np.ones(4)}, model_hint="m", metadata={"cvgen.l": [1, 3]}
    )
    _assert_same_fields(path)


def test_model_file_info_from_the_crafted_model(tmp_path: Path) -> None:
    info = read_model_file_info(_craft_model(tmp_path / "tiny.gguf"))
    assert (info.architecture, info.n_embd, info.n_layer) == ("llama", 4, 3)
    assert (info.name, info.chat_template) == ("Tiny Model", "{{ messages }}")
    assert (info.bos_token, info.eos_token) == ("<s>", "wörld ✓")


def test_truncated_model_is_named_in_one_line(tmp_path: Path) -> None:
    whole = _craft_model(tmp_path / "tiny.gguf").read_bytes()
    for cut, fragment in ((len(whole) - 40, "truncated: "), (200, "truncated or damaged")):
        path = tmp_path / f"cut-{cut}.gguf"
        path.write_bytes(whole[:cut])
        with pytest.raises(ControlVectorError, match=f"^{path}: {fragment}") as caught:
            read_gguf_header(path)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"GG", "no GGUF magic"),
        (b"GGUF\x09\x00\x00\x00" + bytes(16), "version 9"),
    ],
)
def test_not_a_gguf_file(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    with pytest.raises(ControlVectorError, match=fragment):
        read_gguf_header(path)


def test_control_vector_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_control_vector(path, {1: np.ones(4)}, model_hint="m")
    with pytest.raises(ControlVectorError, match="is a control-vector file, not a model"):
        read_model_file_info(path)


@pytest.mark.slow
def test_real_model_matches_gguf_reader_field_for_field() -> None:
    path = require_real_model()
    _assert_same_fields(path)
    info = read_model_file_info(path)
    assert (info.architecture, info.n_embd, info.n_layer) == ("llama", 576, 30)
