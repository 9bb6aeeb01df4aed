"""Rewrite a model GGUF tensor by tensor: every metadata field and every tensor copied as it
is, except the tensors a caller edits or adds, with new metadata fields added.

The output is streamed: the header, the metadata and the tensor table are written first, then
each tensor's bytes in order, read from the memory-mapped input one at a time, so memory stays
near one tensor (dequantised to float32, and its edit) whatever the model's size. It is written
to a temporary name beside `out` and renamed over it only when complete; a failure (a full disk
included) leaves no output.

An edited tensor is dequantised to float32, edited, and stored again in its own type where
gguf-py can quantise that type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0); any other type
(the K-quants, the I-quants) is stored as Q8_0, and the returned `Rewritten` list says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize

from cvgen.common.errors import CvgenError

Q = GGMLQuantizationType
# types gguf-py 0.19 quantises (checked: each round-trips through gguf.quants)
REQUANTISABLE = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0})
FALLBACK = Q.Q8_0


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


def stored_type(kind: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type an edited tensor of type `kind` is written in."""
    return kind if kind in REQUANTISABLE else FALLBACK


def float_values(tensor: Any) -> np.ndarray:
    """A GGUFReader tensor's values in float32, numpy shape (rows last)."""
    kind = GGMLQuantizationType(tensor.tensor_type)
    if kind == Q.F32:
        return np.asarray(tensor.data, dtype=np.float32)
    return np.asarray(dequantize(np.asarray(tensor.data), kind), dtype=np.float32)


def encode(values: np.ndarray, kind: GGMLQuantizationType) -> np.ndarray:
    """float32 `values` in `kind`'s bytes (F32 and F16 as their numpy dtypes)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if kind == Q.F32:
        return values
    if kind == Q.F16:
        return values.astype(np.float16)
    return quantize(values, kind)


def copy_fields(reader: GGUFReader, writer: GGUFWriter) -> None:
    """Every metadata field of `reader` into `writer` (the architecture is the writer's own)."""
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        main = field.types[0]
        if main == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), main, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), main)


@dataclass
class _Slot:
    """One tensor of the output: where its values come from and how it is stored."""

    name: str
    shape: tuple[int, ...]  # numpy shape of the values (rows last)
    kind: GGMLQuantizationType
    source: Any = None  # the reader's tensor, or None for an added one
    added: np.ndarray | None = None
    edit: Edit | None = None

    def byte_size(self) -> int:
        if self.kind in (Q.F32, Q.F16):
            return int(np.prod(self.shape)) * (4 if self.kind == Q.F32 else 2)
        return int(np.prod(quant_shape_to_byte_shape(self.shape, self.kind)))

    def declare(self, writer: GGUFWriter) -> None:
        if self.kind in (Q.F32, Q.F16):
            dtype = np.dtype(np.float32 if self.kind == Q.F32 else np.float16)
            writer.add_tensor_info(self.name, self.shape, dtype, self.byte_size())
            return
        byte_shape = quant_shape_to_byte_shape(self.shape, self.kind)
        writer.add_tensor_info(
            self.name, byte_shape, np.dtype(np.uint8), self.byte_size(), raw_dtype=self.kind
        )

    def data(self, done: list[Rewritten]) -> np.ndarray:
        if self.added is not None:
            return np.ascontiguousarray(self.added, dtype=np.float32)
        raw = np.asarray(self.source.data)
        if self.edit is None:
            return raw
        source_kind = GGMLQuantizationType(self.source.tensor_type)
        new = self.edit(float_values(self.source))
        if new is None:
            if self.kind != source_kind:
                new = float_values(self.source)
            else:
                return raw
        if tuple(new.shape) != self.shape:
            raise WeightsError(f"tensor {self.name}: edited shape {new.shape} != {self.shape}")
        done.append(Rewritten(self.name, source_kind.name, self.kind.name))
        return encode(new, self.kind)


def rewrite_gguf(
    source: Path,
    out: Path,
    *,
    fields: Mapping[str, tuple[Any, GGUFValueType]],
    added: Mapping[str, NewTensor] | None = None,
    edits: Mapping[str, Edit] | None = None,
    store: Mapping[str, GGMLQuantizationType] | None = None,
) -> list[Rewritten]:
    """Write `source` to `out` with `fields` added to its metadata, the `added` float32
    tensors inserted, and each tensor named in `edits` replaced by its edit's values, stored
    as `stored_type` says, or in the type `store` names for it. Everything else is copied
    byte for byte. Returns what was edited."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise WeightsError(f"--out {out}: it is the input model; choose another file")
    reader = GGUFReader(source)
    architecture = str(reader.fields["general.architecture"].contents())
    plan = _plan(reader, added or {}, edits or {}, store or {})
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    writer = GGUFWriter(tmp, architecture)
    done: list[Rewritten] = []
    try:
        copy_fields(reader, writer)
        for key, (value, kind) in fields.items():
            writer.add_key_value(key, value, kind)
        for slot in plan:
            slot.declare(writer)
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for slot in plan:
            writer.write_tensor_data(np.ascontiguousarray(slot.data(done)))
        writer.close()
        os.replace(tmp, out)
    except OSError as exc:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return done


def _plan(
    reader: GGUFReader,
    added: Mapping[str, NewTensor],
    edits: Mapping[str, Edit],
    store: Mapping[str, GGMLQuantizationType],
) -> list[_Slot]:
    """Every tensor to write, in order: the source's, each followed by those added after it."""
    names = {tensor.name for tensor in reader.tensors}
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
    for tensor in reader.tensors:
        kind = GGMLQuantizationType(tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))
        edit = edits.get(tensor.name)
        if edit:
            kind = store.get(tensor.name, stored_type(kind))
        plan.append(_Slot(tensor.name, shape, kind, tensor, edit=edit))
        plan.extend(new_slot(name) for name in following.get(tensor.name, []))
    plan.extend(new_slot(name) for name in following.get(None, []))
    return plan
