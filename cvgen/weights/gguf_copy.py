"""Rewrite a model GGUF tensor by tensor: every metadata field and every tensor copied as it
is, except the tensors a caller replaces or adds, with new metadata fields added.

The output is streamed: the header, the metadata and the tensor table are written first, then
each tensor's bytes in order, read from the memory-mapped input one at a time, so memory stays
near one tensor whatever the model's size. It is written to a temporary name beside `out` and
renamed over it only when complete; a failure (a full disk included) leaves no output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from cvgen.common.errors import CvgenError


class WeightsError(CvgenError, ValueError):
    """A model file cvgen cannot rewrite as asked."""


@dataclass(frozen=True)
class NewTensor:
    """A float32 tensor to write: `after` names the tensor it follows (None: at the end)."""

    data: np.ndarray
    after: str | None = None


Replace = Callable[[str, np.ndarray], np.ndarray | None]


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


def rewrite_gguf(
    source: Path,
    out: Path,
    *,
    fields: Mapping[str, tuple[Any, GGUFValueType]],
    added: Mapping[str, NewTensor],
    replace: Replace | None = None,
) -> None:
    """Write `source` to `out` with `fields` added to its metadata, the `added` float32
    tensors inserted, and each float32 tensor for which `replace(name, data)` returns an array
    written as that array instead (same shape). Everything else is copied byte for byte."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise WeightsError(f"--out {out}: it is the input model; choose another file")
    reader = GGUFReader(source)
    architecture = str(reader.fields["general.architecture"].contents())
    plan = _plan(reader, added)
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    writer = GGUFWriter(tmp, architecture)
    try:
        copy_fields(reader, writer)
        for key, (value, kind) in fields.items():
            writer.add_key_value(key, value, kind)
        for name, data, raw in plan:
            if raw is None:
                writer.add_tensor_info(name, data.shape, np.dtype(np.float32), data.nbytes)
            else:
                writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, raw_dtype=raw)
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, data, raw in plan:
            new = replace(name, data) if replace is not None and raw is None else None
            writer.write_tensor_data(np.ascontiguousarray(new if new is not None else data))
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


def _plan(
    reader: GGUFReader, added: Mapping[str, NewTensor]
) -> list[tuple[str, np.ndarray, GGMLQuantizationType | None]]:
    """(name, data, raw type or None for float32) of every tensor to write, in order."""
    names = {tensor.name for tensor in reader.tensors}
    for name, new in added.items():
        if name in names:
            raise WeightsError(f"tensor {name} is already in the model")
        if new.after is not None and new.after not in names:
            raise WeightsError(f"tensor {new.after} (to place {name} after) is not in the model")
    following: dict[str | None, list[str]] = {}
    for name, new in added.items():
        following.setdefault(new.after, []).append(name)
    plan: list[tuple[str, np.ndarray, GGMLQuantizationType | None]] = []
    for tensor in reader.tensors:
        kind = GGMLQuantizationType(tensor.tensor_type)
        data = np.asarray(tensor.data)
        plan.append((tensor.name, data, None if kind == GGMLQuantizationType.F32 else kind))
        for name in following.get(tensor.name, []):
            plan.append((name, np.asarray(added[name].data, dtype=np.float32), None))
    for name in following.get(None, []):
        plan.append((name, np.asarray(added[name].data, dtype=np.float32), None))
    return plan
