"""The text ``cvgen inspect`` prints for a control-vector file."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.format import KEY_LAYER_COUNT, FloatVector, l2_norm
from cvgen.vectors.gguf_file import open_control_vector_reader, read_fields

_BAR_WIDTH = 40


def describe_control_vector(path: Path) -> str:
    """Multi-line text for ``cvgen inspect``: header, sorted metadata (every key/value field
    of the file), per-block norm table. Raises ControlVectorError as ``ControlVector.from_gguf``
    does for a file that cannot be read as a control vector."""
    path = Path(path)
    vector = ControlVector.from_gguf(path)
    fields = read_fields(open_control_vector_reader(path))
    layer_count = fields.get(KEY_LAYER_COUNT)
    if not isinstance(layer_count, int) or isinstance(layer_count, bool):
        layer_count = None
    lines = [
        f"file:        {path}",
        f"model hint:  {vector.model_hint}",
        f"layer count: {layer_count if layer_count is not None else '(none)'}",
        f"n_embd:      {vector.n_embd}",
        f"directions:  {len(vector.directions)}",
        "metadata:",
    ]
    lines += [f"  {key} = {_value_text(fields[key])}" for key in sorted(fields)]
    lines += _norm_table(vector.directions)
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
