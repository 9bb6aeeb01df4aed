"""Rewrite a Hugging Face model (a folder of safetensors files, or one file) tensor by tensor.

Every tensor is copied as its bytes except those a caller edits: an edited tensor is read as
float32, edited, and stored again in its own dtype (F32, F16 or BF16; BF16 rounded to nearest
even). Its size is unchanged, so each file's header is written back as it was. The other files
of the folder (config.json, the tokenizer, the shard index) are copied byte for byte. Files are
read through a memory map and written in order, so memory stays near one tensor; the output is
written under a temporary name beside `out` and renamed only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.weights.gguf_copy import Edit, Rewritten, WeightsError, write_failure

FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file: where its bytes lie, and its dtype and shape."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int


def safetensors_files(model: Path) -> list[Path]:
    """The safetensors files of a model folder (or the one file given), sorted."""
    model = Path(model)
    if model.is_file():
        return [model]
    files = sorted(model.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"--model {model}: no .safetensors file in it")
    return files


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (JSON) and the offset where its data begins."""
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise WeightsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise WeightsError(f"{path}: not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file (header is not an object)")
    return header, 8 + size


def tensors_of(model: Path) -> dict[str, StoredTensor]:
    """Every tensor of a model, by name, over all its files."""
    found: dict[str, StoredTensor] = {}
    for path in safetensors_files(model):
        header, base = read_header(path)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            found[name] = StoredTensor(
                path, name, entry["dtype"], tuple(entry["shape"]), base + start, base + end
            )
    return found


def tensor_bytes(tensor: StoredTensor) -> np.ndarray:
    """A tensor's bytes, memory-mapped (uint8)."""
    size = tensor.end - tensor.start
    if size == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(tensor.file, dtype=np.uint8, mode="r", offset=tensor.start, shape=(size,))


def float_tensor(tensor: StoredTensor) -> np.ndarray:
    """A floating-point tensor's values in float32, in its shape."""
    kind = FLOAT_DTYPES.get(tensor.dtype)
    if kind is None:
        raise WeightsError(f"tensor {tensor.name}: dtype {tensor.dtype} is not F32, F16 or BF16")
    raw = tensor_bytes(tensor).view(kind)
    if tensor.dtype == "BF16":
        values = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        values = raw.astype(np.float32)
    return values.reshape(tensor.shape)


def encode_like(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 `values` as the bytes of `dtype` (F32, F16, BF16)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.view(np.uint8).ravel()
    if dtype == "F16":
        return values.astype(np.float16).view(np.uint8).ravel()
    bits = values.view(np.uint32).ravel()
    nan = np.isnan(values).ravel()
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded.view(np.uint8)


def rewrite_safetensors(
    source: Path, out: Path, *, edits: Mapping[str, Edit], records: Mapping[str, str] | None = None
) -> list[Rewritten]:
    """Write the model `source` (folder or file) to `out` with each tensor named in `edits`
    replaced by its edit's values; everything else byte for byte. `records` (file name ->
    text) are written into the output folder too (what cvgen did: each safetensors header is
    kept as it was). Returns what was edited."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise WeightsError(f"--out {out}: it is the input model; choose another path")
    if out.exists():
        raise WeightsError(f"--out {out}: it exists; cvgen writes only a new path")
    tensors = tensors_of(source)
    missing = sorted(set(edits) - set(tensors))
    if missing:
        raise WeightsError(f"tensor {missing[0]} (to edit) is not in {source}")
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    done: list[Rewritten] = []
    try:
        if source.is_file():
            _rewrite_file(source, tmp, tensors, edits, done)
        else:
            tmp.mkdir()
            for item in sorted(source.iterdir()):
                if item.suffix == ".safetensors":
                    _rewrite_file(item, tmp / item.name, tensors, edits, done)
                elif item.is_file() and item.name not in (records or {}):
                    shutil.copyfile(item, tmp / item.name)
            for name, text in (records or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        _remove(tmp)
        raise WeightsError(f"--out {out}: cannot write it ({write_failure(exc)})") from None
    except BaseException:
        _remove(tmp)
        raise
    return done


def _rewrite_file(
    path: Path,
    target: Path,
    tensors: Mapping[str, StoredTensor],
    edits: Mapping[str, Edit],
    done: list[Rewritten],
) -> None:
    """One safetensors file: its header and padding as they are, then each tensor's bytes."""
    _, base = read_header(path)
    with path.open("rb") as handle, target.open("wb") as writer:
        writer.write(handle.read(base))
        position = base
        for tensor in _in_order(path, tensors):
            if tensor.start != position:  # bytes between tensors, kept as they are
                handle.seek(position)
                writer.write(handle.read(tensor.start - position))
            writer.write(_tensor_out(tensor, edits, done).tobytes())
            position = tensor.end
        handle.seek(position)
        shutil.copyfileobj(handle, writer)
        writer.flush()
        os.fsync(writer.fileno())


def _in_order(path: Path, tensors: Mapping[str, StoredTensor]) -> Iterator[StoredTensor]:
    yield from sorted((t for t in tensors.values() if t.file == path), key=lambda t: t.start)


def _tensor_out(
    tensor: StoredTensor, edits: Mapping[str, Edit], done: list[Rewritten]
) -> np.ndarray:
    edit = edits.get(tensor.name)
    if edit is None:
        return tensor_bytes(tensor)
    new = edit(float_tensor(tensor))
    if new is None:
        return tensor_bytes(tensor)
    if tuple(new.shape) != tensor.shape:
        raise WeightsError(f"tensor {tensor.name}: edited shape {new.shape} != {tensor.shape}")
    done.append(Rewritten(tensor.name, tensor.dtype, tensor.dtype))
    return encode_like(new, tensor.dtype)


def _remove(tmp: Path) -> None:
    """Remove what this run wrote under its own temporary name."""
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
