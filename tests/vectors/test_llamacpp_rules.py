"""Tests for cvgen.vectors.llamacpp_rules: llama.cpp 0c1e570's rules for loading a control vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import craft_gguf

from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.format import ControlVectorError
from cvgen.vectors.gguf_file import write_control_vector
from cvgen.vectors.llamacpp_rules import check_llamacpp_rules, llamacpp_problems

N_EMBD = 8


def _vector(seed: int, n: int = N_EMBD) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _assert_rejected(path: Path, fragment: str) -> None:
    """The problem shows up in llamacpp_problems and in ControlVector.from_gguf's error."""
    problems = llamacpp_problems(path)
    assert any(fragment in problem for problem in problems), problems
    with pytest.raises(ControlVectorError) as caught:
        ControlVector.from_gguf(path)
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
    cv = ControlVector.from_gguf(path)
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
    assert list(ControlVector.from_gguf(path).directions) == [1]


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
        check_llamacpp_rules(path, n_embd=16)


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
    cv = ControlVector.from_gguf(path)
    assert list(cv.directions) == [3]
    np.testing.assert_array_equal(cv.directions[3], np.full(4, 3.0))
