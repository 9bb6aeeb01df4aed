"""llama.cpp's rules for loading a control-vector file, as problems in plain words.

The rules mirror llama.cpp 0c1e570: ``common_control_vector_load_one`` in
``common/common.cpp`` (names, dtype, shape, widths) and ``llama_adapter_cvec::apply`` in
``src/llama-adapter.cpp`` (model width, block range).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor

from cvgen.common.messages import plural
from cvgen.vectors.format import (
    ARCHITECTURE,
    FLOAT32_MAX,
    KEY_ARCHITECTURE,
    KEY_MODEL_HINT,
    ControlVectorError,
    l2_norm,
    parse_direction_index,
)
from cvgen.vectors.gguf_file import open_control_vector_reader, read_fields


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
    problems = content_problems(open_control_vector_reader(path), n_embd=n_embd, n_layer=n_layer)
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


def content_problems(reader: GGUFReader, *, n_embd: int | None, n_layer: int | None) -> list[str]:
    """Problems in an open file's metadata and tensors (everything but its name), each one
    item naming the field or tensor; ``n_embd``/``n_layer`` as in ``llamacpp_problems``."""
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
    metadata = read_fields(reader)
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
    if norm > FLOAT32_MAX:
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
