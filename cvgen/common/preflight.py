"""Checks of a run's folders before any model work: where the pack and the state store go.

`check_run_folders` is the one place that `generate`, `collect` and `solve` call: the pack
folder is not a mount point, the store is neither the pack folder nor inside it (nor the pack
inside the store), and cvgen can create files where it will write (a probe file of cvgen's own
is created and removed there). `check_free_space` refuses a store that the disk cannot hold.
Every failure is a `TargetError` naming the path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cvgen.common.errors import CvgenError

PROBE_PREFIX = ".cvgen-write-probe-"


class TargetError(CvgenError, OSError):
    """A folder a run would write cannot be used; the message names it and says why."""


def nearest_existing_folder(path: Path, *, what: str) -> Path:
    """`path` itself, or its nearest ancestor that exists, which must be a folder: the folder
    in which the missing part of `path` would be created. `what` names `path` in errors."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise TargetError(f"{what} {path}: {candidate} is a file, not a folder")
            return candidate
    raise TargetError(f"{what} {path}: no part of the path exists")  # pragma: no cover


def probe_writable(folder: Path, *, what: str, path: Path) -> None:
    """Create and remove a probe file of cvgen's own in `folder`, or raise a `TargetError`
    naming `what` `path` and the reason (a read-only file system, /proc, no permission)."""
    probe = folder / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise TargetError(
            f"{what} {path}: cannot create files in {folder} ({exc.strerror or exc})"
        ) from None
    os.close(descriptor)
    probe.unlink()


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_run_folders(
    *, out: Path | None, store: Path, store_option: str, store_written: bool = True
) -> None:
    """Check the folders of a run before any model work: the pack folder `out` (None for a
    collection) and the state store `store` (named `store_option` in errors).

    Refuses: `out` a mount point (the final rename would fail with EBUSY); the store equal to
    `out`, inside it (it would be deleted with the old pack) or holding it; a path under a
    regular file; a folder where cvgen cannot create files (the pack is staged in `out`'s
    parent, so that is where the probe goes; the store is probed when `store_written`)."""
    store = Path(store).expanduser().resolve()
    if out is not None:
        out = Path(out).expanduser().resolve()
        if os.path.ismount(out):
            raise TargetError(
                f"--out {out}: is a mount point, which cannot be replaced by a rename; "
                "write the pack into a folder inside it"
            )
        if _inside(store, out) or _inside(out, store):
            relation = (
                "is"
                if store == out
                else ("is inside" if _inside(store, out) else "holds the pack folder")
            )
            raise TargetError(
                f"the state store {store_option} {store} {relation} --out {out}; the pack "
                "folder is replaced on every run, so keep the store outside it"
            )
        folder = nearest_existing_folder(out, what="--out")
        probe_writable(out.parent if folder == out else folder, what="--out", path=out)
    folder = nearest_existing_folder(store, what=store_option)
    if store_written:
        probe_writable(folder, what=store_option, path=store)


def check_free_space(store: Path, needed: int, *, what: str) -> None:
    """Refuse, naming `store` and the bytes, when the file system of `store` (or of its
    nearest existing ancestor) has fewer than `needed` bytes free. `what` says what needs
    them."""
    if needed <= 0:
        return
    folder = nearest_existing_folder(Path(store), what="the state store")
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TargetError(
            f"the state store {store}: {what} needs {needed} bytes ({_size(needed)}) but "
            f"{folder} has {free} bytes ({_size(free)}) free; free some space, use another "
            "store folder, or lower --samples"
        )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover
