"""Rows reused by their own text across the arrays of one family in a store folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from small_arrays import distinct_states, open_array

from cvgen.extract.row_reuse import reuse_stored_rows
from cvgen.extract.store import StateArray
from cvgen.extract.store_keys import ArrayFamily


def _array(array: StateArray) -> np.ndarray:
    return np.array(np.load(array.data_path, mmap_mode="r"))


def test_pending_rows_are_copied_from_done_rows_of_the_same_text(tmp_path: Path) -> None:
    first = open_array(tmp_path, "first", ["a", "b", "c", "d"])
    first.write_rows([0, 1, 2], distinct_states(3, 100.0))  # "d" stays pending there
    second = open_array(tmp_path, "second", ["c", "x", "a", "d"])
    assert reuse_stored_rows([second]) == 2
    assert second.pending_rows().tolist() == [1, 3]
    stored, copied = _array(first), _array(second)
    np.testing.assert_array_equal(copied[:, 0], stored[:, 2])  # "c"
    np.testing.assert_array_equal(copied[:, 2], stored[:, 0])  # "a"
    assert reuse_stored_rows([second]) == 0  # nothing more to find


def test_other_families_and_arrays_without_a_sidecar_are_not_sources(tmp_path: Path) -> None:
    other_dtype = ArrayFamily(
        model_identity="model-a", dtype="bfloat16", quantization="none", blocks=(0, 2), width=3
    )
    open_array(tmp_path, "bf16", ["a", "b"], other_dtype).write_rows(
        [0, 1], distinct_states(2, 1.0)
    )
    open_array(tmp_path, "legacy", ["a", "b"], family=None).write_rows(
        [0, 1], distinct_states(2, 2.0)
    )
    (tmp_path / "notes.json").write_text("{not json")  # a foreign or damaged file: skipped
    (tmp_path / "list.json").write_text("[1, 2]")
    target = open_array(tmp_path, "target", ["b", "a"])
    assert reuse_stored_rows([target]) == 0
    assert target.pending_rows().tolist() == [0, 1]
    assert not (tmp_path / "legacy.digests").exists()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "bf16.json",
        "legacy.json",
        "list.json",
        "notes.json",
        "target.json",
    ]


def test_a_target_without_a_sidecar_is_left_alone(tmp_path: Path) -> None:
    open_array(tmp_path, "source", ["a"]).write_rows([0], distinct_states(1, 5.0))
    legacy = open_array(tmp_path, "legacy", ["a"], family=None)
    assert reuse_stored_rows([legacy]) == 0
    assert legacy.pending_rows().tolist() == [0]
