"""Checks on a file the user names, made with ``stat`` before cvgen opens it.

Opening a FIFO blocks until some writer comes, and a device or a socket is never a data file,
so every place that opens a GGUF (or other input) it was given asks ``irregular_file_kind``
first and refuses such a path in its own error type.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def irregular_file_kind(path: Path) -> str | None:
    """What ``path`` is when it exists but is not a regular file (links followed), e.g.
    ``"a FIFO (named pipe)"``; None for a regular file, and for a path that cannot be
    stat'ed (absent, or no permission): the caller's own open then reports that."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a plain file")


def not_regular_message(path: Path) -> str | None:
    """``"PATH: is a FIFO (named pipe), not a regular file"``, or None (see
    ``irregular_file_kind``)."""
    kind = irregular_file_kind(path)
    return None if kind is None else f"{path}: is {kind}, not a regular file"
