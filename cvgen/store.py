"""On-disk state store: one memory-mappable float32 array per list of prompt texts.

An array holds the hidden states of `n` texts at a set of blocks, laid out (blocks, n, d) so
that the solver reads one block of all samples as one contiguous (n, d) slab. It lives at
`<root>/<key>.npy` beside `<key>.done` (one byte per row: 1 once the row is written) and
`<key>.json` (what the key was made of).

The key is a SHA-256 of the model's identity, dtype, the stored blocks and the texts
themselves, so a re-run with the same content reuses the array, anything else gets a new one,
and a killed run resumes from the rows it had finished. Rows are written with positioned
writes, not through a mapping, so the writer's memory does not grow with `n`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvgen.errors import CvgenError

STORE_FORMAT = 1


class StoreError(CvgenError, RuntimeError):
    """A store file is damaged or does not match what was asked for."""


def default_store_root() -> Path:
    """`$CVGEN_CACHE/states`, by default `~/.cache/cvgen/states`."""
    cache = os.environ.get("CVGEN_CACHE") or str(Path.home() / ".cache" / "cvgen")
    return Path(cache).expanduser() / "states"


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 over the texts, length-prefixed so that no two lists collide."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def content_key(
    *,
    model_identity: str,
    dtype: str,
    blocks: Sequence[int],
    texts: Sequence[str],
    quantization: str = "none",
    shard: str | None = None,
) -> str:
    """The store key of an array of states. `quantization` ("8bit"/"4bit") and `shard` ("i/N"
    for a part of a sharded run) enter the key only when set, so the keys of plain unsharded
    runs stay what they were."""
    description: dict[str, Any] = {
        "format": STORE_FORMAT,
        "model": model_identity,
        "dtype": dtype,
        "blocks": list(blocks),
        "texts": texts_digest(texts),
        "n": len(texts),
    }
    if quantization != "none":
        description["quantization"] = quantization
    if shard is not None:
        description["shard"] = shard
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


class BlockStates(Protocol):
    """Anything that yields the (n, d) float32 states of one stored block: a `StateArray`,
    or the shards of one array merged in sample order."""

    def block(self, block: int) -> np.ndarray: ...


@dataclass
class StateArray:
    """One array of states in the store. Create or reopen it with `StateArray.open`."""

    root: Path
    key: str
    n: int
    blocks: tuple[int, ...]
    width: int

    @property
    def data_path(self) -> Path:
        return self.root / f"{self.key}.npy"

    @property
    def done_path(self) -> Path:
        return self.root / f"{self.key}.done"

    @property
    def meta_path(self) -> Path:
        return self.root / f"{self.key}.json"

    @classmethod
    def open(
        cls,
        root: Path,
        key: str,
        *,
        n: int,
        blocks: Sequence[int],
        width: int,
        description: dict[str, Any] | None = None,
    ) -> StateArray:
        """Open the array `key`, creating it (all rows pending) when it does not exist."""
        array = cls(root=root, key=key, n=n, blocks=tuple(blocks), width=width)
        root.mkdir(parents=True, exist_ok=True)
        if array.data_path.exists() and array.done_path.exists():
            array._check_existing()
        else:
            array._create(description or {})
        return array

    @classmethod
    def open_existing(
        cls, root: Path, key: str, *, n: int, blocks: Sequence[int], width: int
    ) -> StateArray | None:
        """Reopen the array `key` (its shape checked), or None when its files are not there."""
        array = cls(root=root, key=key, n=n, blocks=tuple(blocks), width=width)
        if not (array.data_path.is_file() and array.done_path.is_file()):
            return None
        array._check_existing()
        return array

    def _create(self, description: dict[str, Any]) -> None:
        shape = (len(self.blocks), self.n, self.width)
        tmp = self.data_path.with_suffix(".npy.part")
        mapped = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        del mapped  # header written; the body stays sparse until rows arrive
        self.meta_path.write_text(json.dumps({**description, "shape": list(shape)}, indent=1))
        self.done_path.write_bytes(bytes(self.n))
        os.replace(tmp, self.data_path)

    def _check_existing(self) -> None:
        mapped = np.load(self.data_path, mmap_mode="r")
        expected = (len(self.blocks), self.n, self.width)
        if mapped.shape != expected or mapped.dtype != np.float32:
            raise StoreError(
                f"{self.data_path}: holds {mapped.dtype}{list(mapped.shape)}, expected "
                f"float32{list(expected)}; delete it to recollect"
            )
        if self.done_path.stat().st_size != self.n:
            raise StoreError(f"{self.done_path}: size is not {self.n} rows; delete it to recollect")

    def pending_rows(self) -> np.ndarray:
        """Indices of rows not yet written, ascending."""
        done = np.frombuffer(self.done_path.read_bytes(), dtype=np.uint8)
        return np.flatnonzero(done == 0)

    @property
    def complete(self) -> bool:
        return self.pending_rows().size == 0

    def write_rows(self, rows: Sequence[int], states: np.ndarray) -> None:
        """Write states (blocks, len(rows), d) for `rows`, then mark those rows done."""
        if states.shape != (len(self.blocks), len(rows), self.width):
            raise StoreError(
                f"{self.data_path}: got states of shape {states.shape} for {len(rows)} rows"
            )
        header = int(np.load(self.data_path, mmap_mode="r").offset)
        row_bytes = self.width * 4
        states = np.ascontiguousarray(states, dtype=np.float32)
        data_fd = os.open(self.data_path, os.O_WRONLY)
        try:
            for block_pos in range(len(self.blocks)):
                for col, row in enumerate(rows):
                    offset = header + (block_pos * self.n + int(row)) * row_bytes
                    os.pwrite(data_fd, states[block_pos, col].tobytes(), offset)
        finally:
            os.close(data_fd)
        done_fd = os.open(self.done_path, os.O_WRONLY)
        try:
            for row in rows:
                os.pwrite(done_fd, b"\x01", int(row))
        finally:
            os.close(done_fd)

    def block(self, block: int) -> np.ndarray:
        """The (n, d) float32 states of one block, read through a memory map."""
        if block not in self.blocks:
            raise StoreError(f"{self.data_path}: block {block} not stored (have {self.blocks})")
        if not self.complete:
            raise StoreError(f"{self.data_path}: {self.pending_rows().size} rows still pending")
        mapped = np.load(self.data_path, mmap_mode="r")
        return np.asarray(mapped[self.blocks.index(block)])
