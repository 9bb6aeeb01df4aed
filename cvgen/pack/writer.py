"""A pack: a folder of control-vector GGUF files, `pack.json`, `samples.jsonl`, README.md and
`index.html` (the command-line page, see `cvgen.pack.page`).

`write_pack` stages the whole pack in a hidden sibling folder and swaps it into place, so a
failed run leaves either the previous pack or nothing, never a half-written one.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.common.messages import (
    json_error_text,
    longest_backtick_run,
    markdown_code,
    markdown_text,
)
from cvgen.extract.chat import PLAIN_FORMAT, PROMPT_FORMATS
from cvgen.llamacpp.commands import CommandError, preset_selection, vector_arguments
from cvgen.vectors.control_vector import ControlVector

log = logging.getLogger(__name__)

MANIFEST_NAME = "pack.json"
SAMPLES_NAME = "samples.jsonl"
README_NAME = "README.md"
PACK_FORMAT = "cvgen-pack"
PACK_FORMAT_VERSION = 1
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
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(part-\d+|[A-Za-z0-9_]{8}\.part|part)")


class PackError(CvgenError, ValueError):
    """A pack folder or manifest is missing or malformed; the message names the file."""


def safe_name(text: str) -> str:
    """`text` reduced to [A-Za-z0-9._-] (never ':' , which breaks llama.cpp's FILE:SCALE)."""
    return UNSAFE.sub("-", text).strip("-.") or "x"


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
                f"{where}field '{field}' ('{_shorten(value)}', {len(value.encode('utf-8'))} "
                f"bytes) makes the file name {_shorten(name)} {size} bytes long; file names "
                f"may have at most {MAX_FILE_NAME_BYTES} here (255 less the temporary suffix); "
                f"shorten the {field}"
            )
    return names


def _shorten(text: str, keep: int = 40) -> str:
    return text if len(text) <= keep else f"{text[: keep - 3]}..."


def load_manifest(pack: Path) -> dict[str, Any]:
    """Read `PACK/pack.json` and validate it with `check_manifest`: every command that opens a
    pack (commands, html, eval, compare, preset) goes through here, so all of them accept and
    refuse the same manifests."""
    path = Path(pack) / MANIFEST_NAME
    if not path.is_file():
        raise PackError(f"{pack}: not a cvgen pack (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PackError(f"{path}: not valid JSON ({json_error_text(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
        raise PackError(f"{path}: field 'format' is not '{PACK_FORMAT}'")
    check_manifest(manifest, str(path))
    return manifest


def check_manifest(manifest: Mapping[str, Any], source: str) -> None:
    """Refuse a manifest cvgen cannot use, naming `source` (the manifest's path), the field and
    its value: `model` (an object with an integer `n_layer` >= 2), each axis (a name, two
    distinct `classes`, three `files` that are plain file names inside the pack, an optional
    `description` and `safe_scale`), the presets, an optional `llama_cpp.commit` and an
    optional `prompt_format`. Fields added by later versions are ignored, and packs written
    before a field existed are accepted without it."""
    model = manifest.get("model")
    if not isinstance(model, Mapping):
        raise PackError(f"{source}: field 'model' is missing or not an object")
    n_layer = model.get("n_layer")
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer < 2:
        raise PackError(f"{source}: field 'model.n_layer' is {n_layer!r}, expected an integer >= 2")
    for key in ("name", "source", "hint"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise PackError(f"{source}: field 'model.{key}' is {model[key]!r}, expected a string")
    axes = manifest.get("axes")
    if not isinstance(axes, Mapping) or not axes:
        raise PackError(f"{source}: field 'axes' is missing, empty or not an object")
    for name, axis in axes.items():
        _check_axis(name, axis, source)
    _check_presets(manifest, source)
    llama = manifest.get("llama_cpp")
    if llama is not None:
        commit = llama.get("commit") if isinstance(llama, Mapping) else llama
        if commit is not None and not isinstance(commit, str):
            raise PackError(f"{source}: field 'llama_cpp.commit' is {commit!r}, expected a string")
    prompt_format = manifest.get("prompt_format")
    if prompt_format is not None and prompt_format not in PROMPT_FORMATS:
        raise PackError(
            f"{source}: field 'prompt_format' is {prompt_format!r}, expected one of: "
            + ", ".join(PROMPT_FORMATS)
        )


def _check_axis(name: str, axis: Any, source: str) -> None:
    field = f"axes.{name}"
    if not name or _CONTROL.search(name):
        raise PackError(f"{source}: axis name {name!r} is empty or holds control characters")
    if not isinstance(axis, Mapping):
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
    _check_files(field, axis.get("files"), source)
    _check_safe_scale(field, axis.get("safe_scale"), source)


def _check_files(field: str, files: Any, source: str) -> None:
    """Three distinct plain `.gguf` names (no folder, no '..'), as `vector_file_names` makes."""
    if not isinstance(files, Mapping):
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


def _check_safe_scale(field: str, safe: Any, source: str) -> None:
    if safe is None:
        return
    if not isinstance(safe, Mapping):
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


def _check_presets(manifest: Mapping[str, Any], source: str) -> None:
    presets = manifest.get("presets") or {}
    if not isinstance(presets, Mapping):
        raise PackError(f"{source}: field 'presets' is not an object")
    for preset in presets:
        try:
            preset_selection(manifest, preset)
        except CommandError as exc:
            raise PackError(f"{source}: {str(exc).removeprefix('pack manifest: ')}") from None


def save_manifest(pack: Path, manifest: Mapping[str, Any]) -> None:
    """Atomically rewrite `PACK/pack.json` (e.g. after adding a preset)."""
    write_text_atomically(Path(pack) / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling of `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def with_preset(
    manifest: Mapping[str, Any],
    name: str,
    selection: Sequence[tuple[str, float]],
    *,
    replace: bool = False,
) -> dict[str, Any]:
    """A copy of `manifest` with preset `name` = `selection` (axis -> scale, in that order).

    The selection is checked as `cvgen commands --set` checks it (known axes, each once, finite
    scales); the name must be non-empty, at most 80 characters, without control characters or
    surrounding spaces. An existing preset is replaced only with `replace`.
    """
    if not name or len(name) > 80 or name != name.strip() or _CONTROL.search(name):
        raise PackError(
            f"preset name '{name}' is invalid: use 1 to 80 characters, no control characters "
            "and no leading or trailing spaces"
        )
    if not selection:
        raise PackError(f"preset '{name}' is empty; give at least one --set AXIS=SCALE")
    vector_arguments(manifest, selection, vector_dir="", legacy_syntax=True)
    presets = dict(manifest.get("presets") or {})
    if name in presets and not replace:
        raise PackError(f"preset '{name}' already exists; pass --replace to overwrite it")
    presets[name] = {axis: float(scale) for axis, scale in selection}
    return {**manifest, "presets": presets}


def without_preset(manifest: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A copy of `manifest` without preset `name` (which must exist)."""
    presets = dict(manifest.get("presets") or {})
    if name not in presets:
        known = ", ".join(presets) if presets else "none"
        raise PackError(f"unknown preset '{name}'; the pack has: {known}")
    del presets[name]
    return {**manifest, "presets": presets}


def render_pack_readme(manifest: Mapping[str, Any], example_command: str) -> str:
    """The pack's README.md: what it is, its files, and how to load them in llama.cpp.

    Every value taken from the manifest (model name, axis names, classes, descriptions,
    settings) goes through `markdown_text`, so a name like `<script>` or a `|` in a
    description shows as written and cannot add markup or table cells.
    """
    md = markdown_text
    model = manifest["model"]
    settings = manifest["settings"]
    layers = manifest["layers"]
    lines = [
        f"# Control vectors for {md(model['name'])}",
        "",
        f"Made by cvgen {md(manifest['cvgen_version'])} with the "
        f"{markdown_code(settings['method'])} method from {md(settings['samples'])} samples per "
        f"class (seed {md(settings['seed'])}), features: {markdown_code(settings['features'])}, blocks {md(layers[0])}..{md(layers[-1])} "
        f"of {md(model['n_layer'])} (hidden size {md(model['n_embd'])}).",
        "",
        "Block k's vector is stored as `direction.k`: llama.cpp adds it to the output of block k.",
        *_prompt_format_line(manifest),
        *_llama_cpp_line(manifest),
        "",
        "| axis | negative | positive | description | files |",
        "|---|---|---|---|---|",
    ]
    for name, axis in manifest["axes"].items():
        files = ", ".join(f"`{axis['files'][role]}`" for role in ROLES)  # plain names
        negative, positive = (md(class_name) for class_name in axis["classes"])
        description = md(axis.get("description") or "")
        lines.append(f"| {md(name)} | {negative} | {positive} | {description} | {files} |")
    lines += _safe_scale_lines(manifest)
    fence = "`" * max(3, longest_backtick_run(example_command) + 1)
    lines += [
        "",
        "Always load an axis's `__debias` file at scale 1, plus ONE of its pole files at the",
        "scale you want (never both poles of one axis). Scale 1 reproduces the average shift of",
        "the pole's prompt; with several axes, keep each |scale| near 1/n to sqrt(1/n).",
        "",
        "Example (`cvgen commands PACK --set AXIS=SCALE` prints others):",
        "",
        f"{fence}sh",
        example_command,
        fence,
        "",
        "Open `index.html` in a browser to build command lines with sliders, presets and the",
        "options above; it works offline, from disk or from any static host.",
        "",
        f"`{SAMPLES_NAME}` lists every drawn sample (stem, writing prompt and, per axis, the",
        "continuation pair), so the run can be audited and reproduced.",
        "",
    ]
    return "\n".join(lines)


def _prompt_format_line(manifest: Mapping[str, Any]) -> list[str]:
    """A note when the prompts were plain text because the model has no chat template."""
    if manifest.get("prompt_format") != PLAIN_FORMAT:
        return []
    return [
        "The model has no chat template, so the prompts were given to it as plain text, not as "
        "chat turns (`prompt_format: plain` in `pack.json`)."
    ]


def _safe_scale_lines(manifest: Mapping[str, Any]) -> list[str]:
    """The calibrated safe scales that `cvgen eval` stored, if any."""
    rows = [
        f"| {markdown_text(name)} | {axis['safe_scale']['negative']:.2f} | "
        f"{axis['safe_scale']['positive']:.2f} |"
        for name, axis in manifest["axes"].items()
        if isinstance(axis.get("safe_scale"), Mapping)
    ]
    evaluation = manifest.get("evaluation")
    if not rows or not isinstance(evaluation, Mapping):
        return []
    return [
        "",
        f"Calibrated safe scales (`cvgen eval`, {markdown_text(evaluation.get('backend'))} "
        f"backend, KL budget {markdown_text(evaluation.get('kl_budget'))} nats/token; details "
        "in `eval.md`): stay within these |scale| values per pole.",
        "",
        "| axis | negative pole | positive pole |",
        "|---|---|---|",
        *rows,
    ]


def _llama_cpp_line(manifest: Mapping[str, Any]) -> list[str]:
    record = manifest.get("llama_cpp")
    if not isinstance(record, Mapping) or not record.get("commit"):
        return []
    commit = markdown_text(str(record["commit"])[:7])
    source = markdown_text(record.get("source", "unknown source"))
    return [
        f"The file format is checked against llama.cpp {commit} ({source}); load them with "
        "`--control-vector-scaled FILE:SCALE` there (llama.cpp before December 2025 took "
        "`FILE SCALE`)."
    ]


def carried_presets(out: Path, axes: Iterable[str]) -> dict[str, Any]:
    """The presets of the pack already at `out` whose axes all exist in the new pack, so that
    re-making a pack in place keeps them. A missing or unreadable old manifest gives none."""
    try:
        old = load_manifest(out)
    except PackError:
        return {}
    presets = old.get("presets")
    if not isinstance(presets, Mapping):
        return {}
    known = set(axes)
    kept = {
        name: dict(values)
        for name, values in presets.items()
        if isinstance(values, Mapping) and set(values) <= known
    }
    for name in presets:
        if name not in kept:
            log.warning(
                "preset '%s' of the old pack is dropped: it names an axis no longer here", name
            )
    return kept


def pack_file_names(manifest: Mapping[str, Any]) -> set[str]:
    """Every file name cvgen writes into a pack with this manifest: pack.json, the samples
    file, README.md, index.html, each axis's three vector files, and `cvgen eval`'s outputs
    (eval.json, eval.md, one eval-<axis>.png per axis). A malformed entry adds nothing."""
    names = {MANIFEST_NAME, SAMPLES_NAME, README_NAME, PAGE_NAME, *EVAL_REPORT_NAMES}
    samples = manifest.get("samples")
    if isinstance(samples, Mapping) and isinstance(samples.get("file"), str):
        names.add(samples["file"])
    axes = manifest.get("axes")
    for axis, entry in axes.items() if isinstance(axes, Mapping) else ():
        names.add(EVAL_PLOT_NAME.format(axis=safe_name(axis)))
        files = entry.get("files") if isinstance(entry, Mapping) else None
        if isinstance(files, Mapping):
            names.update(name for name in files.values() if isinstance(name, str))
    return names


def _is_own_temporary(name: str, own: set[str]) -> bool:
    """True for a temporary file cvgen writes a pack file through (`.NAME.part-PID`, the
    `.NAME.XXXXXXXX.part` of a GGUF file, `.NAME.part` of a plot), for a NAME of `own`."""
    match = _TEMPORARY.fullmatch(name)
    return match is not None and match["name"] in own


def foreign_entries(out: Path, manifest: Mapping[str, Any]) -> list[str]:
    """The names in the pack folder `out` that cvgen did not write there (sorted): anything
    not in `pack_file_names(manifest)` and not one of cvgen's own temporaries, folders too."""
    own = pack_file_names(manifest)
    return sorted(
        entry.name
        for entry in Path(out).iterdir()
        if not (
            entry.is_file()
            and not entry.is_symlink()
            and (entry.name in own or _is_own_temporary(entry.name, own))
        )
    )


def _cvgen_manifest(out: Path) -> dict[str, Any] | None:
    """`out/pack.json` when it is a JSON object with cvgen's format field, else None."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(manifest, dict) and manifest.get("format") == PACK_FORMAT:
        return manifest
    return None


def check_pack_target(out: Path, *, force: bool = False) -> Path:
    """The absolute pack folder for `--out`, after checking that it is absent, empty or
    provably a cvgen pack: its pack.json has `"format": "cvgen-pack"` and every file in it is
    one cvgen writes there (`foreign_entries`). A pack holding other files is refused unless
    `force` (which replaces them with the pack); a folder that is not a cvgen pack is always
    refused. Raises `PackError` naming the folder and the first foreign file.

    Also removes staging folders that killed runs left beside it (`.<name>.part-<pid>`,
    `.<name>.old-<pid>`) when their process is gone.
    """
    out = Path(out).expanduser().resolve()
    if len(out.name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise PackError(
            f"--out {_shorten(str(out), 60)}: the folder name has {len(out.name.encode('utf-8'))} "
            f"bytes; the pack is staged beside it under a longer name, so use at most "
            f"{MAX_FILE_NAME_BYTES}"
        )
    if out.exists() and not out.is_dir():
        raise PackError(f"--out {out}: exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()):
        manifest = _cvgen_manifest(out)
        if manifest is None:
            others = sorted(entry.name for entry in out.iterdir() if entry.name != MANIFEST_NAME)
            first = others[0] if others else MANIFEST_NAME
            reason = (
                f"its {MANIFEST_NAME} has no field 'format' of '{PACK_FORMAT}'"
                if (out / MANIFEST_NAME).exists()
                else f"it has no {MANIFEST_NAME}"
            )
            raise PackError(
                f"--out {out}: exists and is not a cvgen pack ({reason}; it holds {first}); "
                "choose another folder"
            )
        foreign = foreign_entries(out, manifest)
        if foreign and not force:
            raise PackError(
                f"--out {out}: the cvgen pack there holds {foreign[0]}"
                + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                + ", which cvgen did not write; move it out, or pass --force to delete it "
                "with the old pack"
            )
    if out.parent.is_dir():
        for leftover in out.parent.glob(f".{out.name}.*-*"):
            kind, _, pid = leftover.name.rpartition("-")
            if kind.endswith((".part", ".old")) and pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)
    return out


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_pack(
    out: Path,
    manifest: Mapping[str, Any],
    vectors: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]],
    file_metadata: Mapping[str, Mapping[str, Mapping[str, Any]]],
    samples: Iterable[Mapping[str, Any]],
    readme: str,
    extra_texts: Mapping[str, str] | None = None,
    *,
    force: bool = False,
) -> None:
    """Write a whole pack at `out`, replacing an earlier pack there.

    `vectors[axis][role]` maps block -> vector; `file_metadata[axis][role]` holds the
    `cvgen.*` keys of that file; `extra_texts` maps further file names (e.g. `index.html`) to
    their text. Everything is staged beside `out` and renamed into place. The folder at `out`
    is checked again first (`check_pack_target`, with `force`), so that files added to it
    during the run are not deleted with it either.
    """
    out = check_pack_target(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.part-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    texts = {
        SAMPLES_NAME: "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples),
        MANIFEST_NAME: json.dumps(manifest, indent=2) + "\n",
        README_NAME: readme,
        **(extra_texts or {}),
    }
    current = staging
    try:
        for axis, roles in vectors.items():
            for role, directions in roles.items():
                current = staging / manifest["axes"][axis]["files"][role]
                ControlVector(
                    directions,
                    model_hint=manifest["model"]["hint"],
                    metadata=file_metadata[axis][role],
                ).to_gguf(current)
        for name, text in texts.items():
            current = staging / name
            current.write_text(text, encoding="utf-8")
        _swap_into_place(staging, out)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise disk_full_error(
                f"--out {out}: disk full writing {current.name}",
                needed=_pack_bytes(vectors, texts.values()),
                where=out.parent,
            ) from None
        raise


GGUF_FILE_OVERHEAD = 4096  # bytes of header, metadata and alignment per vector file, at most


def _pack_bytes(
    vectors: Mapping[str, Mapping[str, Mapping[int, np.ndarray]]], texts: Iterable[str]
) -> int:
    """About how many bytes a pack takes: its vectors, a GGUF header each, and its texts."""
    files = [directions for roles in vectors.values() for directions in roles.values()]
    arrays = sum(int(np.asarray(v).size) * 4 for d in files for v in d.values())
    return arrays + GGUF_FILE_OVERHEAD * len(files) + sum(len(t.encode()) for t in texts)


def disk_full_error(context: str, *, needed: int, where: Path) -> PackError:
    """The one-line error for a full disk: what was being written, the bytes it needs and
    the bytes free on that disk."""
    try:
        free = f"{shutil.disk_usage(where).free} bytes free there"
    except OSError:
        free = "free space unknown"
    return PackError(
        f"{context}: needs about {needed} bytes, {free}; free some space or write elsewhere"
    )


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    retired = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(out, retired)
    os.replace(staging, out)
    shutil.rmtree(retired, ignore_errors=True)
