"""Merging a run's shards: open each shard's complete arrays in the store, and read every
array of the run in sample order (`MergedStates`), as the solver reads one unsharded array."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvgen.extract.shard_descriptions import ShardDescription
from cvgen.extract.shard_spec import ShardError
from cvgen.extract.store import StateArray


def open_shard_arrays(
    description: ShardDescription, keys: Mapping[str, str], *, root: Path
) -> dict[str, StateArray]:
    """The complete store arrays of a shard, opened read-only in spirit (never created).
    `keys` are the array keys computed from this machine's texts; they must be the recorded
    ones. A one-line `ShardError` when a file is missing or rows are still pending."""
    if sorted(keys) != sorted(description.arrays) or any(
        description.arrays[name] != key for name, key in keys.items()
    ):
        raise ShardError(
            f"{description.path}: shard {description.spec} records other state arrays than "
            "these settings give; recollect it"
        )
    arrays = {}
    pending = 0
    for name, key in keys.items():
        array = StateArray.open_existing(
            root,
            key,
            n=len(description.samples),
            blocks=description.blocks,
            width=description.width,
        )
        if array is None:
            raise ShardError(
                f"shard {description.spec}: state file {root / key}.npy or .done is missing; "
                "copy the whole store folder (rsync -a) or recollect the shard"
            )
        pending += int(array.pending_rows().size)
        arrays[name] = array
    if pending:
        total = len(description.samples) * len(keys)
        raise ShardError(
            f"{root}: shard {description.spec} is incomplete ({pending} of {total} prompts "
            f"pending); rerun cvgen collect --shard {description.spec} with the same options"
        )
    return arrays


@dataclass
class MergedStates:
    """One array of a run, assembled from its shards: `block(k)` is (n, d) in sample order."""

    n: int
    width: int
    parts: list[tuple[tuple[int, ...], StateArray]]

    def block(self, block: int) -> np.ndarray:
        merged = np.empty((self.n, self.width), dtype=np.float32)
        for rows, array in self.parts:
            if rows:
                merged[list(rows)] = array.block(block)
        return merged
