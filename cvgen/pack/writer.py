"""Writing a pack: a folder of control-vector GGUF files, `pack.json`, `samples.jsonl`,
README.md and `index.html` (the command-line page, see `cvgen.pack.page`).

`check_pack_target` refuses an `--out` that is not provably a cvgen pack of cvgen's own files;
`write_pack` stages the whole pack in a hidden sibling folder and swaps it into place, so a
failed run leaves either the previous pack or nothing, never a half-written one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.pack.errors import PackError
from cvgen.pack.manifest import PACK_FORMAT, manifest_text
from cvgen.pack.names import (
    EVAL_PLOT_NAME,
    EVAL_REPORT_NAMES,
    MANIFEST_NAME,
    MAX_FILE_NAME_BYTES,
    PAGE_NAME,
    README_NAME,
    SAMPLES_NAME,
    safe_name,
    shorten,
)
from cvgen.pack.records import PackManifest
from cvgen.vectors.control_vector import ControlVector

_TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(part-\d+|[A-Za-z0-9_]{8}\.part|part)")
Vectors = Mapping[str, Mapping[str, Mapping[int, np.ndarray]]]  # axis -> role -> block -> vector


def pack_file_names(manifest: Mapping[str, Any]) -> set[str]:
    """Every file name cvgen writes into a pack with this manifest (its JSON form, as found in
    a folder, checked or not): pack.json, the samples file, README.md, index.html, each axis's
    three vector files, and `cvgen eval`'s outputs (eval.json, eval.md, one eval-<axis>.png per
    axis). A malformed entry adds nothing."""
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
            f"--out {shorten(str(out), 60)}: the folder name has {len(out.name.encode('utf-8'))} "
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
    manifest: PackManifest,
    vectors: Vectors,
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
        MANIFEST_NAME: manifest_text(manifest),
        README_NAME: readme,
        **(extra_texts or {}),
    }
    current = staging
    try:
        for axis, roles in vectors.items():
            for role, directions in roles.items():
                current = staging / manifest.axes[axis].files.of(role)
                ControlVector(
                    directions,
                    model_hint=manifest.model.hint or "",
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


def _pack_bytes(vectors: Vectors, texts: Iterable[str]) -> int:
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
