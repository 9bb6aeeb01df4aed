"""The one error of the pack room."""

from __future__ import annotations

from cvgen.common.errors import CvgenError


class PackError(CvgenError, ValueError):
    """A pack folder or manifest is missing or malformed; the message names the file."""
