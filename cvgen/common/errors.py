"""The base class of every error cvgen raises on purpose.

Each stage has its own subclass (DataError, ModelError, ControlVectorError, ...) whose one-line
message names the file, field and value. The CLI turns any `CvgenError` into `Error: <message>`
and a non-zero exit; anything else is a bug and is reported as one.
"""


class CvgenError(Exception):
    """An expected failure with a one-line, user-facing message."""
