"""Write, read and validate llama.cpp control-vector GGUF files.

A control-vector file holds one F32 tensor ``direction.k`` of length ``n_embd`` per steered
block. llama.cpp adds ``direction.k`` to the output of block ``k`` (0-based, after the FFN
residual), so cvgen writes the vector measured at block ``k`` as ``direction.k``. Block 0
cannot be steered: llama.cpp rejects ``direction.0``.

The acceptance rules mirror llama.cpp 0c1e570: ``common_control_vector_load_one`` in
``common/common.cpp`` (names, dtype, shape, widths) and ``llama_adapter_cvec::apply`` in
``src/llama-adapter.cpp`` (model width, block range).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, ReaderTensor

from cvgen.common.errors import CvgenError
from cvgen.common.files import not_regular_message
from cvgen.common.messages import plural

ARCHITECTURE = "controlvector"
KEY_ARCHITECTURE = "general.architecture"
KEY_MODEL_HINT = "controlvector.model_hint"
KEY_LAYER_COUNT = "controlvector.layer_count"
METADATA_PREFIX = "cvgen."
KEY_LAYER_CONVENTION = "cvgen.layer_convention"
LAYER_CONVENTION = "direction.k = output of block k (0-based)"
DIRECTION_PREFIX = "direction"
TEMP_SUFFIX = ".part"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# What std::stoi accepts at the start of a string: C whitespace, an optional sign, digits.
_STOI_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_BAR_WIDTH = 40
_FLOAT32_MAX = float(np.finfo(np.float32).max)

MetadataValue = str | int | float | bool | list[int]
FloatVector = npt.NDArray[np.float32]


class ControlVectorError(CvgenError, ValueError):
    """A control-vector file (or the data for one) that llama.cpp or cvgen would refuse.

    The message is one line naming the file, the field or tensor, and the offending value.
    """


@dataclass(frozen=True)
class ControlVectorFile:
    """A control-vector file as read from disk.

    ``directions`` maps block index k (>= 1) to its float32 vector of shape ``(n_embd,)``;
    ``metadata`` holds every key/value field except the reader's ``GGUF.*`` bookkeeping.
    """

    path: Path
    directions: dict[int, FloatVector]
    metadata: dict[str, object]
    n_embd: int

    @property
    def model_hint(self) -> str | None:
        """The ``controlvector.model_hint`` string, or None when absent or not a string."""
        value = self.metadata.get(KEY_MODEL_HINT)
        return value if isinstance(value, str) else None

    @property
    def layer_count(self) -> int | None:
        """The ``controlvector.layer_count`` integer, or None when absent or not an integer."""
        value = self.metadata.get(KEY_LAYER_COUNT)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- writing


def write_control_vector(
    path: Path,
    directions: Mapping[int, np.ndarray],
    *,
    model_hint: str,
    metadata: Mapping[str, MetadataValue] | None = None,
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
    if norm > _FLOAT32_MAX:
        raise ControlVectorError(
            f"{path}: direction for block {block} has an L2 norm of {norm:.3g}, which "
            "overflows float32 (the steered states would become inf)"
        )
    return result


def l2_norm(vector: np.ndarray) -> float:
    """The L2 norm of a 1-D vector, computed in float64 so that float32 values near the top
    of their range (3e38) give a finite norm instead of overflowing to inf."""
    return float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))


def _check_model_hint(path: Path, model_hint: object) -> None:
    """The hint must be a non-empty string (GGUFWriter silently drops empty strings)."""
    if not isinstance(model_hint, str) or not model_hint.strip():
        raise ControlVectorError(
            f"{path}: {KEY_MODEL_HINT} must be a non-empty string, got {model_hint!r}"
        )


def _validated_metadata(
    path: Path, metadata: Mapping[str, MetadataValue]
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


# --------------------------------------------------------------------------- reading


def read_control_vector(path: Path) -> ControlVectorFile:
    """Read and validate a control-vector file.

    Raises ControlVectorError (one line: file and every reason) for a file that is not GGUF or
    that llama.cpp would skip or that lacks the conventional metadata; see ``llamacpp_problems``.
    Tensors that llama.cpp maps to the same block (``direction.3`` and ``direction.+3``) are
    summed, as llama.cpp does. Vectors are copied, so the file is not held open.
    """
    path = Path(path)
    reader = _open_reader(path)
    problems = _content_problems(reader, n_embd=None, n_layer=None)
    if problems:
        raise ControlVectorError(f"{path}: " + "; ".join(problems))
    directions: dict[int, FloatVector] = {}
    for tensor in reader.tensors:
        block = parse_direction_index(tensor.name)
        vector = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if block is not None:
            directions[block] = directions[block] + vector if block in directions else vector
    first = next(iter(directions.values()))
    ordered = {block: directions[block] for block in sorted(directions)}
    return ControlVectorFile(path, ordered, _decode_metadata(reader), int(first.shape[0]))


def check_regular_file(path: Path) -> None:
    """Refuse ``path`` when it exists but is not a regular file (a FIFO would block the open;
    a folder, device or socket is no GGUF file), before anything opens it."""
    message = not_regular_message(path)
    if message is not None:
        raise ControlVectorError(message)


def _open_reader(path: Path) -> GGUFReader:
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
        raise ControlVectorError(
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


def _decode_metadata(reader: GGUFReader) -> dict[str, object]:
    """Every key/value field except the reader's ``GGUF.*`` bookkeeping, as Python values."""
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


# --------------------------------------------------------------------------- llama.cpp rules


def parse_direction_index(name: str) -> int | None:
    """The block index llama.cpp reads from a tensor name, or None where it fails to parse.

    Mirrors ``common_control_vector_load_one``: the text before the first '.' must be
    ``direction``, and the rest goes through ``std::stoi`` (leading whitespace, optional sign,
    digits; trailing text ignored; int32 overflow fails). A negative result is returned as is.
    """
    head, dot, tail = name.partition(".")
    if not dot or head != DIRECTION_PREFIX:
        return None
    match = _STOI_PREFIX.match(tail)
    if match is None:
        return None
    value = int(match.group(1))
    return value if _INT32_MIN <= value <= _INT32_MAX else None


def llamacpp_problems(
    path: Path, *, n_embd: int | None = None, n_layer: int | None = None
) -> list[str]:
    """Every reason llama.cpp (or tools following its conventions) would refuse or ignore ``path``.

    Returns [] when the file is fine. Items name the tensor or field and the offending value,
    not the file. ``n_embd`` and ``n_layer`` are the target model's width and block count;
    when given, a width mismatch (llama.cpp refuses the vector) and blocks >= n_layer
    (silently ignored) are problems too. A file that is not GGUF raises ControlVectorError.
    """
    path = Path(path)
    problems = _content_problems(_open_reader(path), n_embd=n_embd, n_layer=n_layer)
    if ":" in path.name:
        problems.append(
            f"file name {path.name!r} contains ':', which breaks llama.cpp's "
            "--control-vector-scaled FILE:SCALE syntax"
        )
    return problems


def check_llamacpp_rules(
    path: Path, *, n_embd: int | None = None, n_layer: int | None = None
) -> None:
    """Raise ControlVectorError listing every problem ``llamacpp_problems`` finds in ``path``."""
    problems = llamacpp_problems(path, n_embd=n_embd, n_layer=n_layer)
    if problems:
        raise ControlVectorError(f"{path}: " + "; ".join(problems))


def _content_problems(reader: GGUFReader, *, n_embd: int | None, n_layer: int | None) -> list[str]:
    """Problems in the file's metadata and tensors (everything but its name)."""
    problems = _metadata_problems(reader)
    problems += _tensor_problems(reader.tensors)
    width, width_source = _reference_width(reader.tensors)
    if n_embd is not None and width is not None and width != n_embd:
        problems.append(
            f"tensor {width_source!r} has width {width}, but the model's n_embd is {n_embd} "
            "(llama.cpp: 'control vector n_embd does not match model')"
        )
    if n_layer is not None:
        problems += _block_range_problems(reader.tensors, n_layer)
    return problems


def _metadata_problems(reader: GGUFReader) -> list[str]:
    """Missing or wrong ``general.architecture`` and ``controlvector.model_hint``."""
    metadata = _decode_metadata(reader)
    problems = []
    architecture = metadata.get(KEY_ARCHITECTURE)
    if architecture != ARCHITECTURE:
        problems.append(f"{KEY_ARCHITECTURE} is {architecture!r}, expected {ARCHITECTURE!r}")
    hint = metadata.get(KEY_MODEL_HINT)
    if not isinstance(hint, str) or not hint.strip():
        problems.append(
            f"{KEY_MODEL_HINT} is {hint!r}, expected a non-empty string (other tools refuse it)"
        )
    return problems


def _tensor_problems(tensors: list[ReaderTensor]) -> list[str]:
    """Every tensor that would make llama.cpp skip the whole file, plus non-finite values."""
    if not tensors:
        return ["no direction tensors (llama.cpp warns and the file does nothing)"]
    problems = []
    width, width_source = _reference_width(tensors)
    for tensor in tensors:
        problems += _single_tensor_problems(tensor)
        if _is_well_formed(tensor) and width is not None and tensor.n_elements != width:
            problems.append(
                f"tensor {tensor.name!r} has {tensor.n_elements} elements, but "
                f"{width_source!r} has {width} (llama.cpp skips the whole file)"
            )
    return problems


def _single_tensor_problems(tensor: ReaderTensor) -> list[str]:
    """Name, dtype and shape checks for one tensor, in llama.cpp's order; then finiteness."""
    problems = []
    block = parse_direction_index(tensor.name)
    if block is None or block < 0:
        problems.append(
            f"tensor {tensor.name!r} is not named direction.N with an integer N "
            "(llama.cpp skips the whole file)"
        )
    elif block == 0:
        problems.append(
            f"tensor {tensor.name!r} has block index 0, which llama.cpp rejects "
            "(it skips the whole file)"
        )
    if tensor.tensor_type != GGMLQuantizationType.F32:
        problems.append(
            f"tensor {tensor.name!r} has type {tensor.tensor_type.name}, expected F32 "
            "(llama.cpp skips the whole file)"
        )
    elif _ggml_n_dims(tensor) != 1:
        problems.append(
            f"tensor {tensor.name!r} has shape {_ne_text(tensor)}, expected 1-D "
            "(llama.cpp skips the whole file)"
        )
    else:
        problems += _value_problems(tensor)
    return problems


def _value_problems(tensor: ReaderTensor) -> list[str]:
    """NaN or inf values, or finite values whose L2 norm overflows float32 (3e38 each)."""
    bad = int(np.count_nonzero(~np.isfinite(tensor.data)))
    if bad:
        return [f"tensor {tensor.name!r} has {plural(bad, 'non-finite value')} (NaN/inf)"]
    norm = l2_norm(tensor.data.reshape(-1))
    if norm > _FLOAT32_MAX:
        return [
            f"tensor {tensor.name!r} has an L2 norm of {norm:.3g}, which overflows float32 "
            "(the steered states would become inf)"
        ]
    return []


def _block_range_problems(tensors: list[ReaderTensor], n_layer: int) -> list[str]:
    """Blocks llama.cpp silently ignores in a model with ``n_layer`` blocks (valid 1..n_layer-1)."""
    problems = []
    for tensor in tensors:
        block = parse_direction_index(tensor.name)
        if block is not None and block >= max(n_layer, 1):
            problems.append(
                f"tensor {tensor.name!r} steers block {block}, but the model has {n_layer} "
                f"blocks (valid 1..{n_layer - 1}); llama.cpp silently ignores it"
            )
    return problems


def _reference_width(tensors: list[ReaderTensor]) -> tuple[int | None, str]:
    """The width llama.cpp takes as n_embd: that of the first well-formed direction tensor."""
    for tensor in tensors:
        if _is_well_formed(tensor):
            return int(tensor.n_elements), tensor.name
    return None, ""


def _is_well_formed(tensor: ReaderTensor) -> bool:
    """True for a tensor llama.cpp loads: ``direction.N`` (N >= 1), F32, 1-D for ggml."""
    block = parse_direction_index(tensor.name)
    return (
        block is not None
        and block > 0
        and tensor.tensor_type == GGMLQuantizationType.F32
        and _ggml_n_dims(tensor) == 1
    )


def _ggml_n_dims(tensor: ReaderTensor) -> int:
    """``ggml_n_dims``: 1 + the last axis (in ne order) longer than 1; trailing 1s don't count."""
    ne = [int(size) for size in tensor.shape]
    for axis in range(len(ne) - 1, 0, -1):
        if ne[axis] > 1:
            return axis + 1
    return 1


def _ne_text(tensor: ReaderTensor) -> str:
    """The tensor's ggml shape (ne order) as text, e.g. ``ne=[64, 2]``."""
    return "ne=[" + ", ".join(str(int(size)) for size in tensor.shape) + "]"


# --------------------------------------------------------------------------- describing


def describe_control_vector(cv: ControlVectorFile) -> str:
    """Multi-line text for ``cvgen inspect``: header, sorted metadata, per-block norm table."""
    lines = [
        f"file:        {cv.path}",
        f"model hint:  {cv.model_hint if cv.model_hint is not None else '(none)'}",
        f"layer count: {cv.layer_count if cv.layer_count is not None else '(none)'}",
        f"n_embd:      {cv.n_embd}",
        f"directions:  {len(cv.directions)}",
        "metadata:",
    ]
    lines += [f"  {key} = {_value_text(cv.metadata[key])}" for key in sorted(cv.metadata)]
    lines += _norm_table(cv.directions)
    return "\n".join(lines)


def _value_text(value: object) -> str:
    """Compact text for a metadata value (long arrays abbreviated)."""
    if isinstance(value, list) and len(value) > 16:
        return f"[{', '.join(map(repr, value[:16]))}, ...] ({len(value)} items)"
    return repr(value)


def _norm_table(directions: Mapping[int, FloatVector]) -> list[str]:
    """Rows of block index, L2 norm and a bar proportional to the norm (largest = full width)."""
    norms = {block: l2_norm(vector) for block, vector in directions.items()}
    largest = max((norm for norm in norms.values() if math.isfinite(norm)), default=0.0)
    rows = ["block  L2 norm", "-----  ----------"]
    for block in sorted(norms):
        norm = norms[block]
        length = round(_BAR_WIDTH * norm / largest) if largest > 0 and math.isfinite(norm) else 0
        rows.append(f"{block:5d}  {norm:10.4f}  {'#' * length}")
    return rows


# --------------------------------------------------------------------------- model files

_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALAR_FORMATS |= {10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class ModelFileInfo:
    """What cvgen needs from a llama.cpp model GGUF's header (no tensor is read)."""

    path: Path
    architecture: str
    n_embd: int
    n_layer: int
    name: str | None
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None


def read_gguf_header(path: Path, wanted_arrays: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The key/value metadata of a GGUF file, read straight from its header. Arrays are skipped
    (their value is None) unless named in ``wanted_arrays``; this reads a model's header in
    milliseconds where GGUFReader takes seconds.

    Also checks the file is whole: its tensor infos are read and the file must reach the end
    of the last tensor's data. A truncated file (a download cut short, the first 1 MB of a
    model) raises a one-line ControlVectorError naming it, not a struct error."""
    import mmap

    path = Path(path)
    check_regular_file(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise ControlVectorError(f"{path}: is empty, not a GGUF file")
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            header = _HeaderCursor(path, m)
            return header.read_all(wanted_arrays)
    except ControlVectorError:
        raise
    except OSError as error:
        raise ControlVectorError(f"{path}: cannot open file: {error.strerror}") from error
    except (struct.error, ValueError, OverflowError, IndexError) as error:
        raise ControlVectorError(
            f"{path}: truncated or damaged: its GGUF header does not fit in its {size} bytes; "
            "not a whole GGUF file (download it again)"
        ) from error


class _HeaderCursor:
    """Reads a GGUF header from a memory map: key/values, then tensor infos."""

    def __init__(self, path: Path, data: Any) -> None:
        self.path = path
        self.data = data
        self.offset = 0

    def read(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def read_string(self) -> str:
        length = self.read("<Q")
        if self.offset + length > len(self.data):
            raise ValueError("string past the end")
        text = bytes(self.data[self.offset : self.offset + length]).decode("utf-8", "replace")
        self.offset += length
        return text

    def read_value(self, kind: int, keep: bool) -> Any:
        if kind == _GGUF_STRING:
            return self.read_string()
        if kind in _SCALAR_FORMATS:
            return self.read(_SCALAR_FORMATS[kind])
        if kind != _GGUF_ARRAY:
            raise ControlVectorError(f"{self.path}: unknown GGUF value type {kind}")
        item_kind, items = self.read("<I"), self.read("<Q")
        if not keep and item_kind in _SCALAR_FORMATS:
            self.offset += items * struct.calcsize(_SCALAR_FORMATS[item_kind])
            return None
        values = [self.read_value(item_kind, keep) for _ in range(items)]
        return values if keep else None

    def read_all(self, wanted_arrays: frozenset[str]) -> dict[str, Any]:
        """Every key/value field (arrays not wanted are None), after checking the file
        reaches the end of its tensor data."""
        if self.data[:4] != b"GGUF":
            raise ControlVectorError(f"{self.path}: not a GGUF file (no GGUF magic)")
        self.offset = 4
        version, tensor_count, count = self.read("<I"), self.read("<Q"), self.read("<Q")
        if version not in (2, 3):
            raise ControlVectorError(f"{self.path}: unsupported GGUF version {version}")
        fields: dict[str, Any] = {}
        for _ in range(count):
            key = self.read_string()
            fields[key] = self.read_value(self.read("<I"), key in wanted_arrays)
        self._check_tensor_data(tensor_count, fields.get("general.alignment"))
        return fields

    def _check_tensor_data(self, tensor_count: int, alignment: object) -> None:
        from gguf.constants import GGML_QUANT_SIZES

        data_end = 0
        for _ in range(tensor_count):
            name = self.read_string()
            dims = [self.read("<Q") for _ in range(self.read("<I"))]
            kind, offset = self.read("<I"), self.read("<Q")
            try:
                block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise ControlVectorError(
                    f"{self.path}: tensor {name!r} has unknown type {kind}"
                ) from None
            elements = int(np.prod(dims, dtype=np.uint64)) if dims else 1
            data_end = max(data_end, offset + elements // block_size * type_size)
        align = alignment if isinstance(alignment, int) and alignment > 0 else 32
        start = -(-self.offset // align) * align
        if start + data_end > len(self.data):
            raise ControlVectorError(
                f"{self.path}: truncated: {len(self.data)} bytes, but its tensor data ends at "
                f"byte {start + data_end}; not a whole GGUF file (download it again)"
            )


def read_model_file_info(path: Path) -> ModelFileInfo:
    """The architecture, width, depth and chat template of a llama.cpp model GGUF."""
    path = Path(path)
    fields = read_gguf_header(path, frozenset({"tokenizer.ggml.tokens"}))
    architecture = fields.get("general.architecture")
    if not isinstance(architecture, str):
        raise ControlVectorError(f"{path}: general.architecture: missing; is this a model file?")
    if architecture == ARCHITECTURE:
        raise ControlVectorError(f"{path}: is a control-vector file, not a model")
    dimensions = {}
    for what, key in (("n_embd", "embedding_length"), ("n_layer", "block_count")):
        value = fields.get(f"{architecture}.{key}")
        if not isinstance(value, int) or value < 1:
            raise ControlVectorError(
                f"{path}: {architecture}.{key}: missing or invalid ({value!r})"
            )
        dimensions[what] = value
    tokens = fields.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str | None:
        index = fields.get(key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    name = fields.get("general.name")
    template = fields.get("tokenizer.chat_template")
    return ModelFileInfo(
        path=path,
        architecture=architecture,
        n_embd=dimensions["n_embd"],
        n_layer=dimensions["n_layer"],
        name=name if isinstance(name, str) else None,
        chat_template=template if isinstance(template, str) else None,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
    )
