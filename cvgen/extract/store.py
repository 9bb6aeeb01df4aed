"""On-disk state store: one memory-mappable float32 array per list of prompt texts.

An array holds the hidden states of `n` texts at a set of blocks, laid out (blocks, n, d) so
that the solver reads one block of all samples as one contiguous (n, d) slab. It lives at
`<root>/<key>.npy` beside `<key>.done` (one byte per row: 1 once the row is written) and
`<key>.json` (what the key was made of).

The key is a SHA-256 of the model's identity, dtype, the stored blocks and the texts
themselves (`cvgen.extract.store_keys`), so a re-run with the same content reuses the array, anything else gets a new one,
and a killed run resumes from the rows it had finished. Rows are written with positioned
writes, not through a mapping, so the writer's memory does not grow with `n`. A batch's rows
are fsynced before their done markers are written, so a power loss cannot leave a row marked
done without its data.

Rows are also found by their own text: `<key>.digests` holds one SHA-256 per row, and the
JSON records the array's family (model identity, dtype, quantisation, stored blocks, width);
`cvgen.extract.row_reuse` copies rows between arrays of one family by these digests.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.extract.store_keys import DIGEST_BYTES, ArrayFamily, row_digests

log = logging.getLogger(__name__)

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class StoreError(CvgenError, RuntimeError):
    """A store file is damaged or does not match what was asked for."""


def default_store_root() -> Path:
    """`$CVGEN_CACHE/states`, by default `~/.cache/cvgen/states`."""
    cache = os.environ.get("CVGEN_CACHE") or str(Path.home() / ".cache" / "cvgen")
    return Path(cache).expanduser() / "states"


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` as the whole of `path` and fsync it before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    """fsync a file or folder that is already written (a folder records its renames)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    @property
    def digests_path(self) -> Path:
        return self.root / f"{self.key}.digests"

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
        texts: Sequence[str] | None = None,
        family: ArrayFamily | None = None,
    ) -> StateArray:
        """Open the array `key`, creating it (all rows pending) when it does not exist.

        A new array given its n `texts` and its `family` gets the `<key>.digests` sidecar and
        a "family" entry in its JSON, which make its done rows a source for
        `reuse_stored_rows`; without them it is an ordinary array that nothing reuses."""
        array = cls(root=root, key=key, n=n, blocks=tuple(blocks), width=width)
        if texts is not None and len(texts) != n:
            raise StoreError(f"{array.data_path}: {len(texts)} texts for {n} rows")
        root.mkdir(parents=True, exist_ok=True)
        damage = array.damage() if array.data_path.exists() else None
        if damage is not None:
            log.warning("%s: damaged (%s); re-collecting this array", array.data_path, damage)
        if array.data_path.exists() and array.done_path.exists() and damage is None:
            array._check_existing()
        else:
            sidecar = row_digests(texts) if texts is not None and family is not None else None
            array._create(description or {}, family=family, digests=sidecar)
        return array

    @classmethod
    def open_existing(
        cls, root: Path, key: str, *, n: int, blocks: Sequence[int], width: int
    ) -> StateArray | None:
        """Reopen the array `key` (its shape checked), or None when its files are not there."""
        array = cls(root=root, key=key, n=n, blocks=tuple(blocks), width=width)
        if not (array.data_path.is_file() and array.done_path.is_file()):
            return None
        damage = array.damage()
        if damage is not None:
            raise StoreError(
                f"{array.data_path}: damaged ({damage}); run the collection that made it again "
                "(it re-collects this array), or delete it"
            )
        array._check_existing()
        return array

    def damage(self) -> str | None:
        """Why the array's files are not whole, or None when they are: the data file's .npy
        header cannot be read, or the file is shorter than its header and shape say (a copy
        or a disk cut short), or the done markers are not one byte per row."""
        try:
            with self.data_path.open("rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version not in _HEADER_READERS:
                    return f"its .npy format version {version} is not one cvgen writes"
                shape, _, dtype = _HEADER_READERS[version](handle)
                header = handle.tell()
            size = self.data_path.stat().st_size
        except (OSError, ValueError, SyntaxError, TypeError) as error:
            return f"its .npy header cannot be read: {_first_line(error)}"
        needed = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size < needed:
            return f"{size} bytes, but its header and shape {list(shape)} need {needed}"
        try:
            done = self.done_path.stat().st_size
        except FileNotFoundError:
            return f"{self.done_path.name} is missing"
        if done != self.n:
            return f"{self.done_path.name} has {done} bytes for {self.n} rows"
        return None

    def _create(
        self, description: dict[str, Any], *, family: ArrayFamily | None, digests: bytes | None
    ) -> None:
        """Write every file of a new array, each fsynced, the data file last: it appears (by
        an atomic rename) only once the others are whole, so its presence means a whole array."""
        shape = (len(self.blocks), self.n, self.width)
        tmp = self.data_path.with_suffix(".npy.part")
        try:
            mapped = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            del mapped  # header written; the body stays sparse until rows arrive
            _fsync_path(tmp)
            meta = {**description, "shape": list(shape)}
            if family is not None and digests is not None:
                meta["family"] = family.to_json()
                _write_synced(self.digests_path, digests)
            _write_synced(self.meta_path, json.dumps(meta, indent=1).encode())
            _write_synced(self.done_path, bytes(self.n))
            os.replace(tmp, self.data_path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if error.errno == errno.ENOSPC:
                raise self._disk_full(self.n) from None
            raise
        _fsync_path(self.root)

    def _disk_full(self, rows: int) -> StoreError:
        """The one-line error for a full disk under the store: the array's data file, the
        bytes its `rows` pending rows need and the bytes free there."""
        needed = len(self.blocks) * rows * self.width * 4
        try:
            free = f"{shutil.disk_usage(self.root).free} bytes free there"
        except OSError:
            free = "free space unknown"
        return StoreError(
            f"{self.data_path}: disk full: the store needs {needed} more bytes for this "
            f"array's {rows} pending rows, {free}; free some space or put the store on "
            "another disk (--cache-dir, or --store for collect and solve)"
        )

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

    def done_rows(self) -> np.ndarray:
        """Indices of rows written (and marked done), ascending."""
        done = np.frombuffer(self.done_path.read_bytes(), dtype=np.uint8)
        return np.flatnonzero(done != 0)

    def family(self) -> dict[str, Any] | None:
        """The "family" entry of this array's JSON (`ArrayFamily.to_json()`), or None for an
        array written without one (or whose JSON cannot be read)."""
        meta = read_meta(self.meta_path)
        family = meta.get("family") if meta is not None else None
        return family if isinstance(family, dict) else None

    def row_digests(self) -> bytes | None:
        """The `<key>.digests` sidecar (n * DIGEST_BYTES bytes), or None when it is missing
        or not of that size (an array written before sidecars existed)."""
        try:
            digests = self.digests_path.read_bytes()
        except FileNotFoundError:
            return None
        return digests if len(digests) == self.n * DIGEST_BYTES else None

    @property
    def complete(self) -> bool:
        return self.pending_rows().size == 0

    def write_rows(self, rows: Sequence[int], states: np.ndarray) -> None:
        """Write states (blocks, len(rows), d) for `rows` and fsync them, then mark those rows
        done and fsync the markers."""
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
            os.fsync(data_fd)  # the data is on disk before any of its rows is marked done
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise self._disk_full(int(self.pending_rows().size)) from None
            raise
        finally:
            os.close(data_fd)
        done_fd = os.open(self.done_path, os.O_WRONLY)
        try:
            for row in rows:
                os.pwrite(done_fd, b"\x01", int(row))
            os.fsync(done_fd)
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


def store_bytes_needed(root: Path, key: str, *, n: int, blocks: Sequence[int], width: int) -> int:
    """The disk bytes the array `key` of n rows still needs: a new one its whole data (blocks x
    n x width x 4 bytes, sparse until the rows arrive) and its done, digests and JSON files;
    an existing one the data of its pending rows."""
    row_bytes = len(blocks) * width * 4
    array = StateArray(root=root, key=key, n=n, blocks=tuple(blocks), width=width)
    if array.data_path.is_file() and array.done_path.is_file():
        return int(array.pending_rows().size) * row_bytes
    return n * row_bytes + n * (1 + DIGEST_BYTES) + 4096


def read_meta(path: Path) -> dict[str, Any] | None:
    """An array's JSON, or None when it is missing or is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
