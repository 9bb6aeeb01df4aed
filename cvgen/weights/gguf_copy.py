"""Rewrite a model GGUF tensor by tensor: every metadata field and every tensor copied as it
is, except the tensors a caller edits or adds, with metadata fields added or replaced.

The file's header is read once (`cvgen.vectors.model_header.read_gguf_layout`: no vocabulary
decoded, where GGUFReader takes seconds to minutes on a large one) and the output is written
straight in GGUF's layout: the source's key/value entries as their own bytes, the new ones
after them, the tensor table, then each tensor's bytes in order from the memory-mapped input,
so memory stays near one tensor (dequantised to float32, and its edit) whatever the model's
size. It is written to a temporary name beside `out` and renamed over it only when complete; a
failure (a full disk included) leaves no output.

An edited tensor is dequantised to float32, edited, and stored again in its own type where
gguf-py can quantise it (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0); any other type (the
K-quants, the I-quants) is stored as Q8_0, and the returned `Rewritten` list says so.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize

from cvgen.common.errors import CvgenError
from cvgen.vectors.model_header import GgufLayout, TensorEntry, read_gguf_layout

Q = GGMLQuantizationType
# types gguf-py 0.19 quantises (checked: each round-trips through gguf.quants)
REQUANTISABLE = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0})
FALLBACK = Q.Q8_0
CHUNK = 64 << 20  # bytes copied per write


class WeightsError(CvgenError, ValueError):
    """A model file cvgen cannot rewrite as asked."""


@dataclass(frozen=True)
class NewTensor:
    """A float32 tensor to write: `after` names the tensor it follows (None: at the end)."""

    data: np.ndarray
    after: str | None = None


# an edit takes a tensor's float32 values (numpy shape: rows last) and returns the new values,
# same shape, or None to keep the tensor's bytes as they are
Edit = Callable[[np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class Rewritten:
    """One tensor that was edited: its type in the source and the type it was stored as."""

    name: str
    source_type: str
    stored_type: str

    @property
    def fell_back(self) -> bool:
        return self.source_type != self.stored_type


def write_failure(exc: OSError) -> str:
    """Why a write failed, in words; a full disk (or a file-size limit) says so."""
    short = exc.errno is None and "requested and" in str(exc)  # numpy's tofile: a short write
    if short or exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "no space left: the disk is full or the file-size limit is reached"
    return exc.strerror or str(exc)


def stored_type(kind: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type an edited tensor of type `kind` is written in."""
    return kind if kind in REQUANTISABLE else FALLBACK


def numpy_shape(dims: tuple[int, ...]) -> tuple[int, ...]:
    """The numpy shape (rows last) of a tensor of ggml dims `dims` (ne order)."""
    return tuple(int(n) for n in reversed(dims))


class GgufModel:
    """A model GGUF opened for reading: its layout (header read once) and its tensors' bytes,
    read with pread when asked for (no memory map, so a large model's pages do not pile up in
    this process's resident memory). Use as a context manager, or call `close`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.layout: GgufLayout = read_gguf_layout(self.path)
        self.tensors: dict[str, TensorEntry] = {t.name: t for t in self.layout.tensors}
        self._fd = os.open(self.path, os.O_RDONLY)

    @property
    def architecture(self) -> str:
        return str(self.layout.fields.get("general.architecture"))

    def read(self, start: int, size: int) -> bytes:
        """`size` bytes of the file from `start` (raises on a short read)."""
        data = os.pread(self._fd, size, start)
        if len(data) != size:
            raise WeightsError(f"{self.path}: ends at byte {start + len(data)}, inside a tensor")
        return data

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as gguf-py holds them: F32/F16 as their dtype in numpy shape,
        other types as uint8 rows (numpy shape with the last axis in bytes)."""
        entry = self.tensors[name]
        shape = numpy_shape(entry.dims)
        data = self.read(entry.start, entry.nbytes)
        if entry.kind in (Q.F32, Q.F16):
            return np.frombuffer(data, np.float32 if entry.kind == Q.F32 else np.float16).reshape(
                shape
            )
        return np.frombuffer(data, np.uint8).reshape(quant_shape_to_byte_shape(shape, entry.kind))

    def values(self, name: str) -> np.ndarray:
        """A tensor's values in float32, numpy shape (rows last)."""
        kind = self.tensors[name].kind
        raw = self.raw(name)
        if kind == Q.F32:
            return np.array(raw, dtype=np.float32)
        return np.asarray(dequantize(raw, kind), dtype=np.float32)

    def copy(self, start: int, size: int, handle: BinaryIO) -> None:
        """Copy `size` bytes from `start` to `handle`, CHUNK bytes at a time."""
        for offset in range(start, start + size, CHUNK):
            handle.write(self.read(offset, min(CHUNK, start + size - offset)))

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> GgufModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def encode(values: np.ndarray, kind: GGMLQuantizationType) -> np.ndarray:
    """float32 `values` in `kind`'s bytes (F32 and F16 as their numpy dtypes)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if kind == Q.F32:
        return values
    if kind == Q.F16:
        return values.astype(np.float16)
    return quantize(values, kind)


@dataclass
class _Slot:
    """One tensor of the output: where its values come from and how it is stored."""

    name: str
    shape: tuple[int, ...]  # numpy shape of the values (rows last)
    kind: GGMLQuantizationType
    entry: TensorEntry | None = None  # the source's tensor, or None for an added one
    added: np.ndarray | None = None
    edit: Edit | None = None

    def byte_size(self) -> int:
        block, size = GGML_QUANT_SIZES[self.kind]
        return int(np.prod(self.shape)) // block * size

    def write(self, model: GgufModel, handle: BinaryIO, done: list[Rewritten]) -> None:
        if self.added is not None:
            handle.write(np.ascontiguousarray(self.added, dtype=np.float32).tobytes())
            return
        assert self.entry is not None
        new = self.edit(model.values(self.name)) if self.edit is not None else None
        if new is None and self.kind == self.entry.kind:
            model.copy(self.entry.start, self.entry.nbytes, handle)
            return
        if new is None:
            new = model.values(self.name)
        if tuple(new.shape) != self.shape:
            raise WeightsError(f"tensor {self.name}: edited shape {new.shape} != {self.shape}")
        done.append(Rewritten(self.name, self.entry.kind.name, self.kind.name))
        handle.write(np.ascontiguousarray(encode(new, self.kind)).tobytes())


def rewrite_gguf(
    source: Path,
    out: Path,
    *,
    fields: Mapping[str, tuple[Any, GGUFValueType]],
    added: Mapping[str, NewTensor] | None = None,
    edits: Mapping[str, Edit] | None = None,
    store_as: Mapping[str, GGMLQuantizationType] | None = None,
) -> list[Rewritten]:
    """Write `source` to `out` with `fields` added to its metadata (replacing a field of the
    same key), the `added` float32 tensors inserted, and each tensor named in `edits` replaced
    by its edit's values, stored as `stored_type` says (or as `store_as` names: a type gguf-py
    can encode). Everything else is copied byte for byte. Returns what was edited."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise WeightsError(f"--out {out}: it is the input model; choose another file")
    done: list[Rewritten] = []
    with GgufModel(source) as model:
        plan = _plan(model, added or {}, edits or {}, store_as or {})
        tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
        try:
            with tmp.open("wb") as handle:
                _write(model, handle, fields, plan, done)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise WeightsError(f"--out {out}: cannot write it ({write_failure(exc)})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return done


def _write(
    model: GgufModel,
    handle: BinaryIO,
    fields: Mapping[str, tuple[Any, GGUFValueType]],
    plan: list[_Slot],
    done: list[Rewritten],
) -> None:
    """The GGUF: header, key/values (the source's bytes, then the new ones), tensor table,
    then each tensor's bytes at its aligned offset."""
    layout = model.layout
    kept = [key for key in layout.entries if key not in fields]
    handle.write(
        struct.pack("<IIQQ", GGUF_MAGIC, layout.version, len(plan), len(kept) + len(fields))
    )
    for key in kept:
        start, end = layout.entries[key]
        model.copy(start, end - start, handle)
    for key, (value, kind) in fields.items():
        handle.write(_string(key) + struct.pack("<I", kind) + _value(value, kind))
    align = layout.alignment
    offset = 0
    offsets = []
    for slot in plan:
        offsets.append(offset)
        offset += -(-slot.byte_size() // align) * align
    for slot, at in zip(plan, offsets, strict=True):
        dims = tuple(reversed(slot.shape))
        handle.write(
            _string(slot.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, slot.kind, at)
        )
    _pad(handle, align)
    for slot in plan:
        slot.write(model, handle, done)
        _pad(handle, align)


def _pad(handle: BinaryIO, align: int) -> None:
    handle.write(b"\0" * (-handle.tell() % align))


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


_SCALARS = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT32: "f",
    GGUFValueType.FLOAT64: "d", GGUFValueType.BOOL: "?",
}  # fmt: skip


def _value(value: Any, kind: GGUFValueType) -> bytes:
    if kind == GGUFValueType.STRING:
        return _string(str(value))
    if kind not in _SCALARS:
        raise WeightsError(f"metadata of type {kind.name} is not written by cvgen")
    return struct.pack("<" + _SCALARS[kind], value)


def _plan(
    model: GgufModel,
    added: Mapping[str, NewTensor],
    edits: Mapping[str, Edit],
    store_as: Mapping[str, GGMLQuantizationType],
) -> list[_Slot]:
    """Every tensor to write, in order: the source's, each followed by those added after it."""
    names = set(model.tensors)
    for name, new in added.items():
        if name in names:
            raise WeightsError(f"tensor {name} is already in the model")
        if new.after is not None and new.after not in names:
            raise WeightsError(f"tensor {new.after} (to place {name} after) is not in the model")
    missing = sorted(set(edits) - names)
    if missing:
        raise WeightsError(f"tensor {missing[0]} (to edit) is not in the model")
    following: dict[str | None, list[str]] = {}
    for name, new in added.items():
        following.setdefault(new.after, []).append(name)

    def new_slot(name: str) -> _Slot:
        data = np.asarray(added[name].data, dtype=np.float32)
        return _Slot(name, tuple(data.shape), Q.F32, added=data)

    plan: list[_Slot] = []
    for entry in model.layout.tensors:
        kind = entry.kind
        edit = edits.get(entry.name)
        if edit is not None:
            kind = store_as.get(entry.name, stored_type(kind))
            if kind not in REQUANTISABLE:
                raise WeightsError(f"tensor {entry.name}: cvgen cannot store it as {kind.name}")
        plan.append(_Slot(entry.name, numpy_shape(entry.dims), kind, entry, edit=edit))
        plan.extend(new_slot(name) for name in following.get(entry.name, []))
    plan.extend(new_slot(name) for name in following.get(None, []))
    return plan
