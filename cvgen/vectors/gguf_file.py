"""Write and open control-vector GGUF files.

Writing validates everything first, then makes the file appear atomically (a ``.part`` file
beside it, fsync, rename) or not at all. Opening turns every parse failure into a one-line
ControlVectorError; the rules a file must follow to be loaded live in ``llamacpp_rules``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from cvgen.common.files import not_regular_message
from cvgen.common.messages import plural
from cvgen.vectors.format import (
    ARCHITECTURE,
    DIRECTION_PREFIX,
    FLOAT32_MAX,
    KEY_ARCHITECTURE,
    KEY_LAYER_CONVENTION,
    KEY_LAYER_COUNT,
    KEY_MODEL_HINT,
    LAYER_CONVENTION,
    METADATA_PREFIX,
    ControlVectorError,
    FloatVector,
    l2_norm,
    parse_direction_index,
)

TEMP_SUFFIX = ".part"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# --------------------------------------------------------------------------- writing


def write_control_vector(
    path: Path,
    directions: Mapping[int, np.ndarray],
    *,
    model_hint: str,
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Write ``directions`` (block index k >= 1 -> 1-D vector) as a control-vector GGUF file.

    Block k's vector becomes tensor ``direction.k`` (float32), in ascending k. Everything is
    validated before a byte is written; the file appears atomically (temporary ``.part`` file
    in the same directory, fsync, rename) or not at all. Raises ControlVectorError.
    """
    path = Path(path)
    _check_file_name(path)
    vectors = _validated_directions(path, directions)
    _check_model_hint(path, model_hint)
    extra = _validated_metadata(path, metadata or {})
    writer = GGUFWriter(path=None, arch=ARCHITECTURE)
    writer.add_string(KEY_MODEL_HINT, model_hint)
    writer.add_uint32(KEY_LAYER_COUNT, len(vectors))
    writer.add_string(KEY_LAYER_CONVENTION, LAYER_CONVENTION)
    for key, value, value_type, sub_type in extra:
        writer.add_key_value(key, value, value_type, sub_type)
    for block, vector in vectors:
        writer.add_tensor(f"{DIRECTION_PREFIX}.{block}", vector)
    _write_atomically(path, writer)


def _check_file_name(path: Path) -> None:
    """Refuse names with ':' (llama.cpp's ``--control-vector-scaled FILE:SCALE`` splits on it)."""
    if ":" in path.name:
        raise ControlVectorError(
            f"{path}: file name {path.name!r} contains ':', which breaks llama.cpp's "
            "--control-vector-scaled FILE:SCALE syntax"
        )


def _validated_directions(
    path: Path, directions: Mapping[int, np.ndarray]
) -> list[tuple[int, FloatVector]]:
    """Check keys and vectors; return (block, float32 vector) pairs in ascending block order."""
    if not directions:
        raise ControlVectorError(f"{path}: no directions given (at least one block is required)")
    for block in directions:
        _check_block_index(path, block)
    vectors = [
        (int(block), _validated_vector(path, block, directions[block])) for block in directions
    ]
    vectors.sort(key=lambda pair: pair[0])
    first_block, first = vectors[0]
    for block, vector in vectors[1:]:
        if vector.shape != first.shape:
            raise ControlVectorError(
                f"{path}: direction for block {block} has length {vector.shape[0]}, "
                f"but block {first_block} has length {first.shape[0]}"
            )
    return vectors


def _check_block_index(path: Path, block: object) -> None:
    """A block index must be an integer >= 1 (llama.cpp rejects ``direction.0``)."""
    if isinstance(block, bool) or not isinstance(block, int | np.integer):
        raise ControlVectorError(f"{path}: block index {block!r} is not an integer")
    if block < 1:
        raise ControlVectorError(
            f"{path}: block index {block} is invalid; llama.cpp accepts direction.N only for "
            "N >= 1 (block 0's output cannot be steered)"
        )


def _validated_vector(path: Path, block: int, vector: object) -> FloatVector:
    """Return ``vector`` as a contiguous float32 1-D array, or raise if it is unusable."""
    array = np.asarray(vector)
    if array.dtype.kind not in "fiu":
        raise ControlVectorError(
            f"{path}: direction for block {block} has dtype {array.dtype}, expected real numbers"
        )
    if array.ndim != 1 or array.shape[0] == 0:
        raise ControlVectorError(
            f"{path}: direction for block {block} has shape {array.shape}, expected (n_embd,)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        result = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(result))
    if bad.size:
        index = int(bad[0])
        raise ControlVectorError(
            f"{path}: direction for block {block} has "
            f"{plural(int(bad.size), 'non-finite float32 value')}, "
            f"first at index {index}: {array[index].item()!r}"
        )
    norm = l2_norm(result)
    if norm > FLOAT32_MAX:
        raise ControlVectorError(
            f"{path}: direction for block {block} has an L2 norm of {norm:.3g}, which "
            "overflows float32 (the steered states would become inf)"
        )
    return result


def _check_model_hint(path: Path, model_hint: object) -> None:
    """The hint must be a non-empty string (GGUFWriter silently drops empty strings)."""
    if not isinstance(model_hint, str) or not model_hint.strip():
        raise ControlVectorError(
            f"{path}: {KEY_MODEL_HINT} must be a non-empty string, got {model_hint!r}"
        )


def _validated_metadata(
    path: Path, metadata: Mapping[str, object]
) -> list[tuple[str, Any, GGUFValueType, GGUFValueType | None]]:
    """Map extra ``cvgen.*`` metadata to (key, value, GGUF type, array item type) rows."""
    rows: list[tuple[str, Any, GGUFValueType, GGUFValueType | None]] = []
    for key in sorted(metadata):
        if not isinstance(key, str) or not key.startswith(METADATA_PREFIX):
            raise ControlVectorError(
                f"{path}: metadata key {key!r} must start with {METADATA_PREFIX!r}"
            )
        if key == KEY_LAYER_CONVENTION:
            raise ControlVectorError(f"{path}: metadata key {key!r} is reserved; cvgen writes it")
        value, value_type, sub_type = _gguf_value(path, key, metadata[key])
        rows.append((key, value, value_type, sub_type))
    return rows


def _gguf_value(
    path: Path, key: str, value: object
) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    """Choose the GGUF type for one metadata value: str, bool, int64, float64 or int64 array."""
    if isinstance(value, str):
        return value, GGUFValueType.STRING, None
    if isinstance(value, bool | np.bool_):
        return bool(value), GGUFValueType.BOOL, None
    if isinstance(value, int | np.integer):
        return _int64(path, key, value), GGUFValueType.INT64, None
    if isinstance(value, float | np.floating):
        return float(value), GGUFValueType.FLOAT64, None
    if isinstance(value, list | tuple) and value:
        items = [_int64(path, key, item) for item in value]
        return items, GGUFValueType.ARRAY, GGUFValueType.INT64
    raise ControlVectorError(
        f"{path}: metadata {key} has unsupported value {value!r}; expected str, bool, int, "
        "float or a non-empty list of int"
    )


def _int64(path: Path, key: str, value: object) -> int:
    """Return ``value`` as a Python int that fits int64, or raise naming the key."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ControlVectorError(f"{path}: metadata {key} has non-integer item {value!r}")
    if not _INT64_MIN <= int(value) <= _INT64_MAX:
        raise ControlVectorError(f"{path}: metadata {key} value {value} does not fit int64")
    return int(value)


def _write_atomically(path: Path, writer: GGUFWriter) -> None:
    """Write through ``writer`` to a ``.part`` file beside ``path``, fsync, then rename."""
    descriptor, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX
    )
    os.close(descriptor)
    temp_path = Path(temp_name)
    try:
        try:
            writer.write_header_to_file(path=temp_path)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        _fsync_file(temp_path)
        os.chmod(temp_path, 0o666 & ~_current_umask())  # mkstemp made it 0600
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp_path.unlink()
        raise
    _fsync_directory(path.parent)


def _current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    """Flush a closed file's contents to stable storage."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    """Flush the rename to stable storage where the platform allows it (POSIX)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# --------------------------------------------------------------------------- opening


def check_regular_file(path: Path) -> None:
    """Refuse ``path`` when it exists but is not a regular file (a FIFO would block the open;
    a folder, device or socket is no GGUF file), before anything opens it."""
    message = not_regular_message(path)
    if message is not None:
        raise ControlVectorError(message)


class ModelFileGiven(ControlVectorError):
    """A model GGUF was given where a control vector was expected."""


def open_control_vector_reader(path: Path) -> GGUFReader:
    """Open the control-vector file ``path`` with GGUFReader, turning every parse failure
    into ControlVectorError; a model GGUF is refused as one, in one short line."""
    check_regular_file(path)
    try:
        reader = GGUFReader(path)
    except OSError as error:
        raise ControlVectorError(f"{path}: cannot open file: {error.strerror}") from error
    except (ValueError, KeyError, IndexError, TypeError) as error:
        reason = str(error).strip("'\"") or type(error).__name__
        raise ControlVectorError(f"{path}: not a valid GGUF file: {reason}") from error
    architecture = _model_architecture(reader)
    if architecture is not None:
        raise ModelFileGiven(
            f"{path}: this is a model (architecture {architecture}), not a control vector"
        )
    return reader


def _model_architecture(reader: GGUFReader) -> str | None:
    """The architecture of a model GGUF, else None. A model names an architecture other than
    ``controlvector`` and holds no ``direction.N`` tensor, but other tensors or keys of its
    architecture (``llama.block_count``). A control vector with a wrong architecture field
    still holds its direction tensors, and is reported problem by problem instead."""
    field = reader.fields.get(KEY_ARCHITECTURE)
    architecture = field.contents() if field is not None else None
    if not isinstance(architecture, str) or architecture == ARCHITECTURE:
        return None
    if any(parse_direction_index(tensor.name) is not None for tensor in reader.tensors):
        return None
    own_keys = any(name.startswith(f"{architecture}.") for name in reader.fields)
    return architecture if reader.tensors or own_keys else None


def read_fields(reader: GGUFReader) -> dict[str, object]:
    """Every key/value field except the reader's ``GGUF.*`` bookkeeping, as Python values."""
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


def read_direction_tensors(reader: GGUFReader) -> dict[int, FloatVector]:
    """Block index -> float32 copy of its ``direction.N`` tensor(s), in ascending block order.

    Tensors that llama.cpp maps to the same block (``direction.3`` and ``direction.+3``) are
    summed, as llama.cpp does; tensors that are no direction are left out. The copies do not
    hold the file open."""
    directions: dict[int, FloatVector] = {}
    for tensor in reader.tensors:
        block = parse_direction_index(tensor.name)
        vector = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if block is not None:
            directions[block] = directions[block] + vector if block in directions else vector
    return {block: directions[block] for block in sorted(directions)}
