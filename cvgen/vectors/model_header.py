"""A fast reader for a llama.cpp model GGUF's header: what cvgen needs, with no tensor read.

GGUFReader parses every array of a model's vocabulary up front (seconds); this reader walks the
header once, keeping only the arrays asked for (milliseconds). The GGUF layout and value types
come from the gguf package's own constants, so both readers agree field for field.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    Keys,
)
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

from cvgen.vectors.format import ARCHITECTURE, ControlVectorError
from cvgen.vectors.gguf_file import check_regular_file

# GGUF stores every scalar little-endian; GGUFReader's own table names each type's numpy type.
_SCALAR_DTYPES = {
    kind: np.dtype(scalar).newbyteorder("<")
    for kind, scalar in GGUFReader.gguf_scalar_to_np.items()
}
_MAGIC = GGUF_MAGIC.to_bytes(4, "little")


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
    """The key/value metadata of a GGUF file (key -> Python value), read straight from its
    header. Arrays are skipped (their value is None) unless named in ``wanted_arrays``; this
    reads a model's header in milliseconds where GGUFReader takes seconds.

    Also checks the file is whole: its tensor infos are read and the file must reach the end
    of the last tensor's data. A truncated file (a download cut short, the first 1 MB of a
    model) raises a one-line ControlVectorError naming it, not a parse error."""
    path = Path(path)
    check_regular_file(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise ControlVectorError(f"{path}: is empty, not a GGUF file")
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _HeaderCursor(path, m).read_all(wanted_arrays)
    except ControlVectorError:
        raise
    except OSError as error:
        raise ControlVectorError(f"{path}: cannot open file: {error.strerror}") from error
    except (ValueError, OverflowError, IndexError) as error:
        raise ControlVectorError(
            f"{path}: truncated or damaged: its GGUF header does not fit in its {size} bytes; "
            "not a whole GGUF file (download it again)"
        ) from error


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a GGUF's table: its name, ggml dims (ne order), type, and where its bytes
    lie (absolute offset in the file) and how many."""

    name: str
    dims: tuple[int, ...]
    kind: GGMLQuantizationType
    start: int
    nbytes: int


@dataclass(frozen=True)
class GgufLayout:
    """Where everything of a GGUF lies: each key/value entry's bytes (key -> (start, end)),
    the values of its scalars and strings (arrays are None), the tensor table, the alignment."""

    version: int
    entries: dict[str, tuple[int, int]]
    fields: dict[str, Any]
    tensors: list[TensorEntry]
    alignment: int


def read_gguf_layout(path: Path) -> GgufLayout:
    """The layout of the GGUF at `path`, read from its header in one pass (no array decoded,
    no tensor read); a damaged or truncated file raises ControlVectorError as
    `read_gguf_header` does."""
    path = Path(path)
    check_regular_file(path)
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _HeaderCursor(path, m).read_layout()
    except ControlVectorError:
        raise
    except OSError as error:
        raise ControlVectorError(f"{path}: cannot open file: {error.strerror}") from error
    except (ValueError, OverflowError, IndexError) as error:
        raise ControlVectorError(f"{path}: truncated or damaged GGUF header") from error


class _HeaderCursor:
    """Reads a GGUF header from a memory map: key/values, then tensor infos."""

    def __init__(self, path: Path, data: mmap.mmap) -> None:
        self.path = path
        self.data = data
        self.offset = 0

    def read_scalar(self, kind: GGUFValueType) -> Any:
        """One scalar of GGUF type ``kind`` as a Python value; advances past it."""
        dtype = _SCALAR_DTYPES[kind]
        start, self.offset = self.offset, self.offset + dtype.itemsize
        if self.offset > len(self.data):
            raise ValueError(f"{kind.name} past the end")
        if dtype.kind in "iu":  # the common case (lengths, counts, ids), kept fast
            return int.from_bytes(
                self.data[start : self.offset], "little", signed=dtype.kind == "i"
            )
        return np.frombuffer(self.data, dtype=dtype, count=1, offset=start)[0].item()

    def read_string(self) -> str:
        """A GGUF string: uint64 byte length, then UTF-8 bytes."""
        length = self.read_scalar(GGUFValueType.UINT64)
        if self.offset + length > len(self.data):
            raise ValueError("string past the end")
        text = bytes(self.data[self.offset : self.offset + length]).decode("utf-8", "replace")
        self.offset += length
        return text

    def read_value(self, kind: int, keep: bool) -> Any:
        """One value of GGUF type ``kind``; an array is skipped (None) unless ``keep``."""
        if kind == GGUFValueType.STRING:
            return self.read_string()
        if kind in _SCALAR_DTYPES:
            return self.read_scalar(GGUFValueType(kind))
        if kind != GGUFValueType.ARRAY:
            raise ControlVectorError(f"{self.path}: unknown GGUF value type {kind}")
        item_kind = self.read_scalar(GGUFValueType.UINT32)
        items = self.read_scalar(GGUFValueType.UINT64)
        if not keep and item_kind in _SCALAR_DTYPES:
            self.offset += items * _SCALAR_DTYPES[GGUFValueType(item_kind)].itemsize
            return None
        values = [self.read_value(item_kind, keep) for _ in range(items)]
        return values if keep else None

    def _preamble(self) -> tuple[int, int, int]:
        """The magic, then (version, tensor count, key/value count)."""
        if self.data[:4] != _MAGIC:
            raise ControlVectorError(f"{self.path}: not a GGUF file (no GGUF magic)")
        self.offset = len(_MAGIC)
        version = self.read_scalar(GGUFValueType.UINT32)
        tensor_count = self.read_scalar(GGUFValueType.UINT64)
        count = self.read_scalar(GGUFValueType.UINT64)
        if version not in READER_SUPPORTED_VERSIONS:
            raise ControlVectorError(f"{self.path}: unsupported GGUF version {version}")
        return version, tensor_count, count

    def read_all(self, wanted_arrays: frozenset[str]) -> dict[str, Any]:
        """Every key/value field (arrays not wanted are None), after checking the file
        reaches the end of its tensor data."""
        version, tensor_count, count = self._preamble()
        fields: dict[str, Any] = {}
        for _ in range(count):
            key = self.read_string()
            kind = self.read_scalar(GGUFValueType.UINT32)
            fields[key] = self.read_value(kind, key in wanted_arrays)
        self._check_tensor_data(tensor_count, fields.get(Keys.General.ALIGNMENT))
        return fields

    def read_layout(self) -> GgufLayout:
        """The whole header: key/value entries with their byte spans, then the tensor table."""
        version, tensor_count, count = self._preamble()
        entries: dict[str, tuple[int, int]] = {}
        fields: dict[str, Any] = {}
        for _ in range(count):
            start = self.offset
            key = self.read_string()
            fields[key] = self.read_value(self.read_scalar(GGUFValueType.UINT32), False)
            entries[key] = (start, self.offset)
        alignment = fields.get(Keys.General.ALIGNMENT)
        align = (
            alignment if isinstance(alignment, int) and alignment > 0 else GGUF_DEFAULT_ALIGNMENT
        )
        table: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
        for _ in range(tensor_count):
            name = self.read_string()
            n_dims = self.read_scalar(GGUFValueType.UINT32)
            ne = tuple(self.read_scalar(GGUFValueType.UINT64) for _ in range(n_dims))
            kind = GGMLQuantizationType(self.read_scalar(GGUFValueType.UINT32))
            table.append((name, ne, kind, self.read_scalar(GGUFValueType.UINT64)))
        base = -(-self.offset // align) * align
        tensors = []
        for name, dims, kind, offset in table:
            block_size, type_size = GGML_QUANT_SIZES[kind]
            nbytes = (int(np.prod(dims, dtype=np.uint64)) if dims else 1) // block_size * type_size
            if base + offset + nbytes > len(self.data):
                raise ControlVectorError(
                    f"{self.path}: truncated: tensor {name} ends past the file"
                )
            tensors.append(TensorEntry(name, dims, kind, base + offset, nbytes))
        return GgufLayout(version, entries, fields, tensors, align)

    def _check_tensor_data(self, tensor_count: int, alignment: object) -> None:
        """Raise unless the file reaches the end of the last tensor's data."""
        data_end = 0
        for _ in range(tensor_count):
            name = self.read_string()
            n_dims = self.read_scalar(GGUFValueType.UINT32)
            dims = [self.read_scalar(GGUFValueType.UINT64) for _ in range(n_dims)]
            kind = self.read_scalar(GGUFValueType.UINT32)
            offset = self.read_scalar(GGUFValueType.UINT64)
            try:
                block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise ControlVectorError(
                    f"{self.path}: tensor {name!r} has unknown type {kind}"
                ) from None
            elements = int(np.prod(dims, dtype=np.uint64)) if dims else 1
            data_end = max(data_end, offset + elements // block_size * type_size)
        align = (
            alignment if isinstance(alignment, int) and alignment > 0 else GGUF_DEFAULT_ALIGNMENT
        )
        start = -(-self.offset // align) * align
        if start + data_end > len(self.data):
            raise ControlVectorError(
                f"{self.path}: truncated: {len(self.data)} bytes, but its tensor data ends at "
                f"byte {start + data_end}; not a whole GGUF file (download it again)"
            )


def read_model_file_info(path: Path) -> ModelFileInfo:
    """The architecture, width (n_embd), depth (n_layer), name, chat template and BOS/EOS
    token texts of a llama.cpp model GGUF. Raises ControlVectorError for a control-vector file,
    a file without an architecture, or a missing or invalid width or block count."""
    path = Path(path)
    fields = read_gguf_header(path, frozenset({Keys.Tokenizer.LIST}))
    architecture = fields.get(Keys.General.ARCHITECTURE)
    if not isinstance(architecture, str):
        raise ControlVectorError(f"{path}: general.architecture: missing; is this a model file?")
    if architecture == ARCHITECTURE:
        raise ControlVectorError(f"{path}: is a control-vector file, not a model")
    dimensions = {}
    for what, key in (("n_embd", Keys.LLM.EMBEDDING_LENGTH), ("n_layer", Keys.LLM.BLOCK_COUNT)):
        field = key.format(arch=architecture)
        value = fields.get(field)
        if not isinstance(value, int) or value < 1:
            raise ControlVectorError(f"{path}: {field}: missing or invalid ({value!r})")
        dimensions[what] = value
    tokens = fields.get(Keys.Tokenizer.LIST) or []

    def token(key: str) -> str | None:
        index = fields.get(key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    name = fields.get(Keys.General.NAME)
    template = fields.get(Keys.Tokenizer.CHAT_TEMPLATE)
    return ModelFileInfo(
        path=path,
        architecture=architecture,
        n_embd=dimensions["n_embd"],
        n_layer=dimensions["n_layer"],
        name=name if isinstance(name, str) else None,
        chat_template=template if isinstance(template, str) else None,
        bos_token=token(Keys.Tokenizer.BOS_ID),
        eos_token=token(Keys.Tokenizer.EOS_ID),
    )
