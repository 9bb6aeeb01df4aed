"""Reuse of stored rows: a pending row whose exact text is done in another array of the same
family (model identity, dtype, quantisation, stored blocks, width) is copied, not recollected.

Rows are matched by the SHA-256 of their text in each array's `<key>.digests` sidecar, so
growing `--samples` runs only the new prompts. Arrays written before the sidecar existed are
never used as a source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.extract.store import StateArray, StoreError, read_meta
from cvgen.extract.store_keys import DIGEST_BYTES

REUSE_CHUNK_ROWS = 256  # rows copied per read-and-write when reusing stored rows


def _family_sources(root: Path, family: dict[str, Any]) -> Iterator[tuple[StateArray, bytes]]:
    """Every array in the store folder `root` of `family` that has a digests sidecar and
    files of the recorded shape: (array, its row digests). Anything else is skipped."""
    for meta_path in sorted(root.glob("*.json")):
        meta = read_meta(meta_path)
        shape = meta.get("shape") if meta is not None else None
        if meta is None or meta.get("family") != family or not isinstance(shape, list):
            continue
        if len(shape) != 3 or not all(isinstance(size, int) for size in shape):
            continue
        try:
            source = StateArray.open_existing(
                root, meta_path.stem, n=shape[1], blocks=family["blocks"], width=family["width"]
            )
        except StoreError:
            continue
        digests = source.row_digests() if source is not None else None
        if source is not None and digests is not None:
            yield source, digests


def _wanted_rows(targets: Sequence[StateArray]) -> dict[bytes, list[tuple[StateArray, int]]]:
    """Row digest -> the (target, row) pending rows of that text, over `targets`."""
    wanted: dict[bytes, list[tuple[StateArray, int]]] = {}
    for target in targets:
        digests = target.row_digests()
        if digests is None:
            continue
        for row in target.pending_rows().tolist():
            digest = digests[row * DIGEST_BYTES : (row + 1) * DIGEST_BYTES]
            wanted.setdefault(digest, []).append((target, row))
    return wanted


def _copy_rows(target: StateArray, source: StateArray, pairs: list[tuple[int, int]]) -> None:
    """Copy the states of source rows into target rows, `pairs` = [(target row, source row)],
    in chunks, through `write_rows` (so with its fsync before the done markers)."""
    for start in range(0, len(pairs), REUSE_CHUNK_ROWS):
        chunk = pairs[start : start + REUSE_CHUNK_ROWS]
        mapped = np.load(source.data_path, mmap_mode="r")
        states = np.asarray(mapped[:, [source_row for _, source_row in chunk], :])
        del mapped
        target.write_rows([target_row for target_row, _ in chunk], states)


def _reuse_in_family(root: Path, family: dict[str, Any], targets: Sequence[StateArray]) -> int:
    """`reuse_stored_rows` for targets of one store folder and one family."""
    wanted = _wanted_rows(targets)
    plan: dict[tuple[str, str], tuple[StateArray, StateArray, list[tuple[int, int]]]] = {}
    for source, digests in _family_sources(root, family):
        for source_row in source.done_rows().tolist():
            digest = digests[source_row * DIGEST_BYTES : (source_row + 1) * DIGEST_BYTES]
            for target, row in wanted.pop(digest, []):
                entry = plan.setdefault((target.key, source.key), (target, source, []))
                entry[2].append((row, source_row))
    for target, source, pairs in plan.values():
        _copy_rows(target, source, pairs)
    return sum(len(pairs) for _, _, pairs in plan.values())


def reuse_stored_rows(targets: Sequence[StateArray]) -> int:
    """Fill the pending rows of `targets` from the store: a pending row whose text (by its
    digest) is a done row of any array of the same family in the same folder, the targets
    themselves included, gets that row's states copied in, (blocks, d) per row, and is
    marked done. Targets without a family or digests sidecar are left as they are; arrays
    without them are never read. Returns the number of rows copied."""
    groups: dict[tuple[Path, str], list[StateArray]] = {}
    families: dict[tuple[Path, str], dict[str, Any]] = {}
    for target in targets:
        family = target.family()
        if family is None:
            continue
        group = (target.root, json.dumps(family, sort_keys=True))
        groups.setdefault(group, []).append(target)
        families[group] = family
    return sum(
        _reuse_in_family(root, families[(root, name)], members)
        for (root, name), members in groups.items()
    )
