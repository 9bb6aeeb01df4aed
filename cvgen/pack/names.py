"""The names of a pack's files: the fixed ones, and the vector files made from the model slug,
the axis and its classes (safe characters only, within the file-name length limit)."""

from __future__ import annotations

import re

from cvgen.pack.errors import PackError

MANIFEST_NAME = "pack.json"
SAMPLES_NAME = "samples.jsonl"
README_NAME = "README.md"
PAGE_NAME = "index.html"
EVAL_REPORT_NAMES = ("eval.json", "eval.md")
EVAL_PLOT_NAME = "eval-{axis}.png"
ROLES = ("debias", "negative", "positive")
# a file name has at most 255 bytes (NAME_MAX); each pack file is written through a temporary
# sibling named up to 16 bytes longer (".NAME.XXXXXXXX.part", ".NAME.part-PID")
MAX_FILE_NAME_BYTES = 255 - 16
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# what `vector_file_names` can produce: safe_name characters, never a leading '.' or '-'
VECTOR_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.gguf")
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe_name(text: str) -> str:
    """`text` reduced to [A-Za-z0-9._-] (never ':' , which breaks llama.cpp's FILE:SCALE)."""
    return UNSAFE.sub("-", text).strip("-.") or "x"


def shorten(text: str, keep: int = 40) -> str:
    """`text`, cut to `keep` characters with '...' when it is longer (for messages)."""
    return text if len(text) <= keep else f"{text[: keep - 3]}..."


def vector_file_names(
    model_slug: str, axis: str, classes: tuple[str, str], *, source: str = ""
) -> dict[str, str]:
    """`<model-slug>-<axis>__debias.gguf`, `__<negative>.gguf`, `__<positive>.gguf`.

    Refuses names that clash, or that are longer than a file name may be (with the temporary
    name each file is written through); `source` (the axis file) is named in the message."""
    where = f"{source}: " if source else ""
    stem = f"{safe_name(model_slug)}-{safe_name(axis)}"
    names = {
        "debias": f"{stem}__debias.gguf",
        "negative": f"{stem}__{safe_name(classes[0])}.gguf",
        "positive": f"{stem}__{safe_name(classes[1])}.gguf",
    }
    if len(set(names.values())) != 3:
        raise PackError(
            f"{where}axis '{axis}': class names {classes} give clashing file names {names}"
        )
    for role, name in names.items():
        size = len(name.encode("utf-8"))
        if size > MAX_FILE_NAME_BYTES:
            field = "name" if role == "debias" else "classes"
            value = axis if role == "debias" else classes[ROLES.index(role) - 1]
            raise PackError(
                f"{where}field '{field}' ('{shorten(value)}', {len(value.encode('utf-8'))} "
                f"bytes) makes the file name {shorten(name)} {size} bytes long; file names "
                f"may have at most {MAX_FILE_NAME_BYTES} here (255 less the temporary suffix); "
                f"shorten the {field}"
            )
    return names
