"""Tests for cvgen.vectors.control_vector: the ControlVector value, its arithmetic and GGUF I/O."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.format import ControlVectorError
from cvgen.vectors.gguf_file import write_control_vector


def _vec(directions: dict[int, list[float]], hint: str = "org/tiny") -> ControlVector:
    return ControlVector({k: np.array(v, dtype=np.float32) for k, v in directions.items()}, hint)


def _as_lists(vector: ControlVector) -> dict[int, list[float]]:
    return {block: values.tolist() for block, values in vector.directions.items()}


A = {1: [1.0, 2.0, 3.0], 3: [0.5, -1.0, 4.0]}
B = {3: [2.0, 1.0, -4.0], 5: [-1.0, 0.0, 0.25]}


def test_add_sums_shared_blocks_and_keeps_the_others() -> None:
    total = _vec(A) + _vec(B)
    assert _as_lists(total) == {1: [1.0, 2.0, 3.0], 3: [2.5, 0.0, 0.0], 5: [-1.0, 0.0, 0.25]}
    assert total.blocks == (1, 3, 5)
    assert total.model_hint == "org/tiny"
    assert all(vector.dtype == np.float32 for vector in total.directions.values())


def test_subtract_negates_blocks_only_on_the_right() -> None:
    difference = _vec(A) - _vec(B)
    assert _as_lists(difference) == {1: [1.0, 2.0, 3.0], 3: [-1.5, -2.0, 8.0], 5: [1.0, 0.0, -0.25]}


def test_subtract_then_add_gives_back_the_vector_exactly() -> None:
    rng = np.random.default_rng(0)
    a = ControlVector({2: rng.standard_normal(16), 4: rng.standard_normal(16)}, "m")
    b = ControlVector({2: rng.standard_normal(16)}, "m")
    np.testing.assert_array_equal(((a + b) - b).directions[4], a.directions[4])
    expected = (a.directions[2] + b.directions[2]).astype(np.float32)
    np.testing.assert_array_equal((a + b).directions[2], expected)


def test_scale_on_both_sides_in_float32_and_negate() -> None:
    vector = _vec(A)
    assert _as_lists(2 * vector) == {1: [2.0, 4.0, 6.0], 3: [1.0, -2.0, 8.0]}
    assert _as_lists(vector * -0.5) == {1: [-0.5, -1.0, -1.5], 3: [-0.25, 0.5, -2.0]}
    assert _as_lists(-vector) == {1: [-1.0, -2.0, -3.0], 3: [-0.5, 1.0, -4.0]}
    assert vector * np.float64(3.0) == 3 * vector
    third = ControlVector({1: np.array([1.0], np.float32)}, "m") * 0.1
    assert third.directions[1][0] == np.float32(1.0) * np.float32(0.1)


def test_arithmetic_drops_metadata_and_leaves_operands_alone() -> None:
    vector = ControlVector({1: np.ones(2)}, "m", {"cvgen.role": "positive"})
    assert (2 * vector).metadata == {}
    assert (vector + vector).metadata == {}
    assert (-vector).metadata == {}
    assert vector.metadata == {"cvgen.role": "positive"}
    assert _as_lists(vector) == {1: [1.0, 1.0]}


def test_different_model_hints_refuse_to_combine_naming_both() -> None:
    with pytest.raises(ControlVectorError) as caught:
        _vec(A, "org/a") + _vec(B, "org/b")
    assert str(caught.value) == (
        "cannot add control vectors for different models: model hint 'org/a' and 'org/b'"
    )
    with pytest.raises(ControlVectorError, match="cannot subtract .* 'org/a' and 'org/b'"):
        _vec(A, "org/a") - _vec(B, "org/b")


def test_different_widths_refuse_to_combine_naming_both() -> None:
    with pytest.raises(ControlVectorError) as caught:
        _vec({1: [1.0, 2.0]}) - _vec({1: [1.0, 2.0, 3.0]})
    assert str(caught.value) == (
        "cannot subtract control vectors of different widths: "
        "n_embd 2 ('org/tiny') and 3 ('org/tiny')"
    )


def test_non_numbers_are_not_scales() -> None:
    with pytest.raises(TypeError):
        _vec(A) * "2"  # type: ignore[operator]
    with pytest.raises(TypeError):
        _vec(A) * True
    with pytest.raises(TypeError):
        _vec(A) + 1  # type: ignore[operator]


def test_the_value_is_frozen_and_copied() -> None:
    source = np.array([1.0, 2.0])
    vector = ControlVector({1: source}, "m")
    source[0] = 99.0
    assert vector.directions[1].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        vector.directions[1][0] = 5.0
    with pytest.raises(TypeError):
        vector.directions[2] = np.ones(2)  # type: ignore[index]
    with pytest.raises(AttributeError):
        vector.model_hint = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(vector)


@pytest.mark.parametrize(
    ("directions", "hint", "fragment"),
    [
        ({}, "m", "no directions given"),
        ({-1: np.ones(2)}, "m", "block index -1 is not an int >= 0"),
        ({True: np.ones(2)}, "m", "block index True"),
        ({"2": np.ones(2)}, "m", "block index '2'"),
        ({1: np.ones((2, 2))}, "m", "block 1 has dtype float64 and shape (2, 2)"),
        ({1: np.array(["a"])}, "m", "dtype <U1"),
        ({1: np.ones(2), 4: np.ones(3)}, "m", "block 4 has length 3, but block 1 has length 2"),
        ({1: np.ones(2)}, " ", "model hint must be a non-empty string, got ' '"),
    ],
)
def test_bad_values_are_refused(
    directions: dict[object, np.ndarray], hint: str, fragment: str
) -> None:
    with pytest.raises(ControlVectorError, match="^control vector: ") as caught:
        ControlVector(directions, hint)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_blocks_are_sorted_and_width_is_shared() -> None:
    vector = ControlVector({np.int64(7): np.zeros(4), 2: np.ones(4)}, "m")
    assert vector.blocks == (2, 7)
    assert list(vector.directions) == [2, 7]
    assert all(type(block) is int for block in vector.directions)
    assert vector.n_embd == 4
    assert repr(vector) == "ControlVector(model_hint='m', n_embd=4, blocks=2..7 (2), metadata=[])"


def test_equality_compares_values_hint_and_metadata() -> None:
    vector = _vec(A)
    assert vector == _vec(A)
    assert vector != _vec({1: [1.0, 2.0, 3.0], 3: [0.5, -1.0, 4.5]})
    assert vector != _vec({1: A[1]})
    assert vector != _vec(A, "other")
    assert vector != replace(vector, metadata={"cvgen.role": "x"})


# --------------------------------------------------------------------------- files


def _example() -> ControlVector:
    rng = np.random.default_rng(4)
    directions = {block: rng.standard_normal(8).astype(np.float32) for block in (9, 1, 4)}
    metadata = {"cvgen.axis": "mood", "cvgen.seed": 7, "cvgen.layers": [1, 4, 9], "cvgen.s": 0.5}
    return ControlVector(directions, "org/tiny-llama", metadata)


def test_to_gguf_writes_the_same_bytes_as_write_control_vector(tmp_path: Path) -> None:
    vector = _example()
    vector.to_gguf(tmp_path / "new.gguf")
    write_control_vector(
        tmp_path / "old.gguf",
        {block: vector.directions[block] for block in (9, 1, 4)},
        model_hint="org/tiny-llama",
        metadata=dict(vector.metadata),
    )
    assert (tmp_path / "new.gguf").read_bytes() == (tmp_path / "old.gguf").read_bytes()


def test_round_trip_from_gguf_equals_the_vector_and_rewrites_the_same_bytes(
    tmp_path: Path,
) -> None:
    vector = _example()
    vector.to_gguf(tmp_path / "a.gguf")
    again = ControlVector.from_gguf(tmp_path / "a.gguf")
    assert again == vector
    assert dict(again.metadata) == dict(vector.metadata)
    again.to_gguf(tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_arithmetic_result_round_trips(tmp_path: Path) -> None:
    vector = _example()
    blend = 0.5 * vector - 2 * ControlVector({4: np.ones(8), 12: np.ones(8)}, "org/tiny-llama")
    blend.to_gguf(tmp_path / "blend.gguf")
    read = ControlVector.from_gguf(tmp_path / "blend.gguf")
    assert read == blend
    assert read.blocks == (1, 4, 9, 12)
    np.testing.assert_array_equal(read.directions[12], np.full(8, -2.0, np.float32))


def test_to_gguf_refuses_block_zero_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "zero.gguf"
    with pytest.raises(ControlVectorError, match=f"^{path}: block index 0 is invalid"):
        ControlVector({0: np.ones(4)}, "m").to_gguf(path)
    assert not path.exists()
