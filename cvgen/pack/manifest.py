"""Reading and writing `pack.json`: `parse_manifest` checks a manifest once and returns the
typed record (`cvgen.pack.records`); `load_manifest` reads it from a pack folder, and
`save_manifest` writes it back atomically.

Every command that opens a pack goes through `load_manifest`, so all of them accept and refuse
the same manifests, each refusal one line naming the file, the field and its value.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from cvgen.common.messages import json_error_text
from cvgen.extract.chat import PROMPT_FORMATS
from cvgen.llamacpp.commands import CommandError, preset_selection
from cvgen.pack.errors import PackError
from cvgen.pack.names import CONTROL_CHARACTERS, MANIFEST_NAME, ROLES, VECTOR_FILE_NAME
from cvgen.pack.records import (
    AxisRecord,
    Layout,
    ModelRecord,
    PackManifest,
    Presets,
    SafeScale,
    SamplesRecord,
    VectorFiles,
)

PACK_FORMAT = "cvgen-pack"
PACK_FORMAT_VERSION = 1
# the fields the records type; every other key of the object stays in the record's `extra`
_MANIFEST_FIELDS = (
    "format",
    "format_version",
    "model",
    "axes",
    "samples",
    "presets",
    "llama_cpp",
    "prompt_format",
)


def _extra(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in known}


def load_manifest(pack: Path) -> PackManifest:
    """Read `PACK/pack.json` and check it (`parse_manifest`), naming the file in any error."""
    path = Path(pack) / MANIFEST_NAME
    if not path.is_file():
        raise PackError(f"{pack}: not a cvgen pack (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PackError(f"{path}: not valid JSON ({json_error_text(exc)})") from None
    return parse_manifest(data, str(path))


def parse_manifest(data: Any, source: str) -> PackManifest:
    """The typed manifest of the JSON value `data`, refusing, with a one-line `PackError` that
    names `source` (the manifest's path), the field and its value, one cvgen cannot use:
    `format` must be "cvgen-pack" and `format_version` (when present) 1; `model` an object
    with an integer `n_layer` >= 2; each axis a name, two distinct `classes`, three `files`
    that are plain file names inside the pack, an optional `description` and `safe_scale`;
    then the presets, an optional `llama_cpp.commit` and an optional `prompt_format`. Fields
    added by later versions are kept in `extra`, and packs written before a field existed are
    accepted without it."""
    if not isinstance(data, dict) or data.get("format") != PACK_FORMAT:
        raise PackError(f"{source}: field 'format' is not '{PACK_FORMAT}'")
    version = data.get("format_version")
    if "format_version" in data and (version != PACK_FORMAT_VERSION or isinstance(version, bool)):
        raise PackError(
            f"{source}: field 'format_version' is {version!r}, but this cvgen reads packs of "
            f"format version {PACK_FORMAT_VERSION} only; use the cvgen that wrote the pack, "
            "or make the pack again"
        )
    model = _parse_model(data.get("model"), source)
    axes = data.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise PackError(f"{source}: field 'axes' is missing, empty or not an object")
    records = {name: _parse_axis(name, axis, source) for name, axis in axes.items()}
    presets = _parse_presets(data, source)
    llama = data.get("llama_cpp")
    if llama is not None:
        commit = llama.get("commit") if isinstance(llama, dict) else llama
        if commit is not None and not isinstance(commit, str):
            raise PackError(f"{source}: field 'llama_cpp.commit' is {commit!r}, expected a string")
    prompt_format = data.get("prompt_format")
    if prompt_format is not None and prompt_format not in PROMPT_FORMATS:
        raise PackError(
            f"{source}: field 'prompt_format' is {prompt_format!r}, expected one of: "
            + ", ".join(PROMPT_FORMATS)
        )
    extra = _extra(data, _MANIFEST_FIELDS)
    if "samples" in data and not isinstance(data["samples"], dict):
        extra["samples"] = data["samples"]  # kept as written: nothing reads it
    return PackManifest(
        format=PACK_FORMAT,
        format_version=version,
        model=model,
        axes=records,
        presets=presets,
        llama_cpp=llama,
        prompt_format=prompt_format,
        samples=_parse_samples(data.get("samples")),
        extra=extra,
        layout=Layout.of(data),
    )


def _parse_model(model: Any, source: str) -> ModelRecord:
    if not isinstance(model, dict):
        raise PackError(f"{source}: field 'model' is missing or not an object")
    n_layer = model.get("n_layer")
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer < 2:
        raise PackError(f"{source}: field 'model.n_layer' is {n_layer!r}, expected an integer >= 2")
    for key in ("name", "source", "hint"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise PackError(f"{source}: field 'model.{key}' is {model[key]!r}, expected a string")
    return ModelRecord(
        n_layer=n_layer,
        name=model.get("name"),
        source=model.get("source"),
        hint=model.get("hint"),
        extra=_extra(model, ("name", "source", "hint", "n_layer")),
        layout=Layout.of(model),
    )


def _parse_axis(name: str, axis: Any, source: str) -> AxisRecord:
    field = f"axes.{name}"
    if not name or CONTROL_CHARACTERS.search(name):
        raise PackError(f"{source}: axis name {name!r} is empty or holds control characters")
    if not isinstance(axis, dict):
        raise PackError(f"{source}: field '{field}' is not an object")
    classes = axis.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) != 2
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise PackError(
            f"{source}: field '{field}.classes' is {classes!r}, expected two non-empty names"
        )
    if classes[0] == classes[1]:
        raise PackError(f"{source}: field '{field}.classes' names the class {classes[0]!r} twice")
    description = axis.get("description")
    if description is not None and not isinstance(description, str):
        raise PackError(
            f"{source}: field '{field}.description' is {description!r}, expected a string"
        )
    return AxisRecord(
        classes=(classes[0], classes[1]),
        files=_parse_files(field, axis.get("files"), source),
        description=description,
        safe_scale=_parse_safe_scale(field, axis.get("safe_scale"), source),
        extra=_extra(axis, ("classes", "description", "files", "safe_scale")),
        layout=Layout.of(axis),
    )


def _parse_files(field: str, files: Any, source: str) -> VectorFiles:
    """Three distinct plain `.gguf` names (no folder, no '..'), as `vector_file_names` makes."""
    if not isinstance(files, dict):
        raise PackError(f"{source}: field '{field}.files' is missing or not an object")
    for role in ROLES:
        value = files.get(role)
        if not isinstance(value, str) or not value:
            raise PackError(
                f"{source}: field '{field}.files.{role}' is {value!r}, expected a file name"
            )
        if VECTOR_FILE_NAME.fullmatch(value) is None:
            raise PackError(
                f"{source}: field '{field}.files.{role}' is {value!r}, expected a plain .gguf "
                "file name in the pack folder (letters, digits, '_', '-', '.'; no '/')"
            )
    if len({files[role] for role in ROLES}) != len(ROLES):
        raise PackError(f"{source}: field '{field}.files' names the same file twice")
    return VectorFiles(
        debias=files["debias"],
        negative=files["negative"],
        positive=files["positive"],
        extra=_extra(files, ROLES),
        layout=Layout.of(files),
    )


def _parse_safe_scale(field: str, safe: Any, source: str) -> SafeScale | None:
    if safe is None:
        return None
    if not isinstance(safe, dict):
        raise PackError(f"{source}: field '{field}.safe_scale' is {safe!r}, expected an object")
    for role in ("negative", "positive"):
        value = safe.get(role)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise PackError(
                f"{source}: field '{field}.safe_scale.{role}' is {value!r}, "
                "expected a positive number"
            )
    return SafeScale(
        negative=safe["negative"],
        positive=safe["positive"],
        extra=_extra(safe, ("negative", "positive")),
        layout=Layout.of(safe),
    )


def _parse_presets(data: dict[str, Any], source: str) -> Presets | None:
    """The presets, each checked as `cvgen commands --preset` reads it (known axes, finite
    numbers); None when the manifest has none (a false value such as [] counts as none)."""
    presets = data.get("presets")
    if not presets:
        return None if presets is None else {}
    if not isinstance(presets, dict):
        raise PackError(f"{source}: field 'presets' is not an object")
    for preset in presets:
        try:
            preset_selection(data, preset)
        except CommandError as exc:
            raise PackError(f"{source}: {str(exc).removeprefix('pack manifest: ')}") from None
    return {name: dict(values) for name, values in presets.items()}


def _parse_samples(samples: Any) -> SamplesRecord | None:
    """The samples record (not checked: nothing reads it back but the pack's file list)."""
    if not isinstance(samples, dict):
        return None
    file = samples.get("file")
    return SamplesRecord(
        file=file if isinstance(file, str) else None,
        extra=_extra(samples, ("file",)) if isinstance(file, str) else dict(samples),
        layout=Layout.of(samples),
    )


def manifest_text(manifest: PackManifest) -> str:
    """The text of `pack.json` for `manifest` (indented JSON and a final newline)."""
    return json.dumps(manifest.to_json(), indent=2) + "\n"


def save_manifest(pack: Path, manifest: PackManifest) -> None:
    """Atomically rewrite `PACK/pack.json` (e.g. after adding a preset)."""
    write_text_atomically(Path(pack) / MANIFEST_NAME, manifest_text(manifest))


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling of `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
