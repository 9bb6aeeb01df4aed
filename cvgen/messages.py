"""Wording shared by every module's messages: counted nouns and JSON parse positions."""

from __future__ import annotations

import json


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``count`` and the noun in the matching number: ``plural(1, "item")`` -> ``"1 item"``,
    ``plural(2, "item")`` -> ``"2 items"``, ``plural(3, "axis", "axes")`` -> ``"3 axes"``."""
    noun = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {noun}"


def json_error_text(error: json.JSONDecodeError) -> str:
    """Where and why JSON parsing failed, e.g. ``"Expecting value at line 3, column 5"``.

    Some of the json module's reasons already end in "at" ("Unterminated string starting at"),
    which then reads on into the position instead of doubling the word.
    """
    reason = error.msg.removesuffix(" at")
    return f"{reason} at line {error.lineno}, column {error.colno}"
