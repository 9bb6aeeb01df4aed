"""A request's steering: the selection rules of `cvgen commands`, the safe scales, and block
vectors equal to what llama.cpp sums for the same files (the eval's `Steering`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serve_pack import write_serve_pack

from cvgen.eval.backend import Steering
from cvgen.pack.steering import PackSteering, SteeringError, selection_object


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("steering")
    return write_serve_pack(folder / "pack", folder / "model.gguf")


@pytest.fixture(scope="module")
def steering(pack: Path) -> PackSteering:
    return PackSteering(pack)


def test_a_preset_then_the_request_s_own_scales_over_it(steering: PackSteering) -> None:
    assert steering.select(None, "vivid") == (("language", "0.8"), ("mood", "-0.5"))
    merged = steering.select({"mood": 0.25}, "vivid")
    assert merged == (("language", "0.8"), ("mood", "0.25"))
    assert steering.select({}, None, default=(("mood", "1"),)) == ()  # {}: no steering
    assert steering.select(None, None, default=(("mood", "1"),)) == (("mood", "1"),)


def test_scales_are_rounded_as_cvgen_commands_rounds_them(steering: PackSteering) -> None:
    assert steering.select({"language": 0.125, "mood": -0.004}) == (
        ("language", "0.13"),
        ("mood", "0"),
    )
    assert selection_object(steering.select({"language": -1})) == {"language": -1.0}


@pytest.mark.parametrize(
    ("control_vectors", "preset", "field", "words"),
    [
        ({"tone": 1}, None, "control_vectors.tone", "unknown axis 'tone'"),
        ({"language": float("nan")}, None, "control_vectors.language", "not a finite number"),
        ({"language": float("inf")}, None, "control_vectors.language", "not a finite number"),
        ({"language": "0.5"}, None, "control_vectors.language", "is not a number"),
        ({"language": True}, None, "control_vectors.language", "is not a number"),
        ({"language": 1.51}, None, "control_vectors.language", "safe positive scale 1.5"),
        ({"mood": -1.6}, None, "control_vectors.mood", "safe negative scale 1.5"),
        ([0.5], None, "control_vectors", "not an object"),
        (None, "loud", "preset", "unknown preset 'loud'; the pack has: vivid"),
        (None, 3, "preset", "is not a preset name"),
    ],
)
def test_a_bad_selection_names_its_field(
    steering: PackSteering, control_vectors: object, preset: object, field: str, words: str
) -> None:
    with pytest.raises(SteeringError) as caught:
        steering.select(control_vectors, preset)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and words in str(caught.value)


def test_unsafe_scales_pass_only_when_allowed(pack: Path, steering: PackSteering) -> None:
    assert steering.select({"language": 1.5}) == (("language", "1.5"),)
    assert PackSteering(pack, allow_unsafe_scales=True).select({"language": 9}) == (
        ("language", "9"),
    )
    with pytest.raises(SteeringError, match="--set: scale 2 of axis 'mood'"):
        steering.parse_assignments(("mood=2",), None)
    assert steering.parse_assignments(("mood=0.3",), "vivid") == (
        ("language", "0.8"),
        ("mood", "0.3"),
    )


def test_block_vectors_are_what_llama_cpp_sums_for_the_same_files(
    pack: Path, steering: PackSteering
) -> None:
    selection = steering.select({"mood": -0.7, "language": 1.2})
    ours = steering.block_vectors(selection)
    files = (
        (pack / "smollm2-mood__debias.gguf", 1.0),
        (pack / "smollm2-mood__negative.gguf", 0.7),
        (pack / "smollm2-language__debias.gguf", 1.0),
        (pack / "smollm2-language__positive.gguf", 1.2),
    )
    expected = Steering("same", files).block_vectors()
    assert sorted(ours) == sorted(expected) == list(range(8, 21))
    for block, vector in expected.items():
        np.testing.assert_array_equal(ours[block], vector)
    zero = steering.block_vectors(steering.select({"language": 0}))  # the debias file only
    debias = Steering("debias", ((pack / "smollm2-language__debias.gguf", 1.0),)).block_vectors()
    np.testing.assert_array_equal(zero[8], debias[8])
    assert steering.block_vectors(()) == {}
