"""Checks on a file the user names, made with ``stat`` before cvgen opens it.

Opening a FIFO blocks until some writer comes, and a device or a socket is never a data file,
so every place that opens a GGUF (or other input) it was given asks ``irregular_file_kind``
first and refuses such a path in its own error type. ``read_text_file`` reads a user's text
file (an axis, a prompts file) and names it in a ``DataError`` when it cannot.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cvgen.common.errors import CvgenError

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


class DataError(CvgenError, ValueError):
    """Bad data file or field; the message names the file, the field and the value."""


def read_text_file(path: Path, what: str) -> str:
    """The whole of a UTF-8 text file (a leading byte-order mark dropped); a one-line
    `DataError` naming the file when it is missing, a folder, unreadable or not UTF-8 (with
    the line and the first bad byte). `what` says what the file should be ("an axis file")."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not {what}") from None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}); save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None
