"""What `cvgen inspect` prints for a model file that cvgen wrote steering into: the model's
shape and every `cvgen.*` metadata field (`cvgen.bake.*`, `cvgen.enhance.*`,
`cvgen.transfer.*`), which record what was written in, from which pack, at which scales."""

from __future__ import annotations

from pathlib import Path

from cvgen.vectors.model_header import GgufLayout, read_gguf_layout, read_model_file_info

PREFIX = "cvgen."


def cvgen_fields(layout: GgufLayout) -> dict[str, object]:
    """The `cvgen.*` metadata fields of a GGUF, by key."""
    return {key: value for key, value in layout.fields.items() if key.startswith(PREFIX)}


def describe_written_model(path: Path) -> str | None:
    """Lines for `cvgen inspect` on a model GGUF with cvgen metadata, or None when the file
    has none (it is then not cvgen's to describe)."""
    path = Path(path)
    layout = read_gguf_layout(path)
    fields = cvgen_fields(layout)
    if not fields:
        return None
    info = read_model_file_info(path)
    added = [t.name for t in layout.tensors if t.name.endswith("ffn_down.bias")]
    lines = [
        f"file:         {path}",
        f"model:        {info.name or '(no name)'} (architecture {info.architecture})",
        f"blocks:       {info.n_layer}",
        f"n_embd:       {info.n_embd}",
        f"tensors:      {len(layout.tensors)} ({len(added)} ffn_down biases)",
        "written by cvgen:",
    ]
    lines += [f"  {key} = {fields[key]}" for key in sorted(fields)]
    return "\n".join(lines)
