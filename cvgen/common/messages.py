"""Text shared by every module's messages and documents: counted nouns, JSON parse
positions, user-given text made safe for Markdown, and a measured slope as every table and
line that shows one writes it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

# Markdown's inline control characters ('|' splits a table cell), escaped with a backslash
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")
_HTML_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


NOT_MEASURABLE = "not measurable on this model"


def signed_number(value: object, digits: int = 3, missing: str = "–") -> str:
    """``value`` as ``+0.123``, or ``missing`` where it is no finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return missing
    return f"{value:+.{digits}f}"


def slope_interval(slope: object, low: object, high: object, missing: str = "–") -> str:
    """A slope with its 95% interval: ``+0.199 [+0.170, +0.228]``."""
    numbers = [signed_number(value, missing=missing) for value in (slope, low, high)]
    return f"{numbers[0]} [{numbers[1]}, {numbers[2]}]"


def measured_parts(record: object, missing: str = "–") -> tuple[str, str, str] | None:
    """The interval, the random direction's slope and the verdict of an axis's `measured`
    entry in pack.json (what `cvgen eval` stored), or None where it holds no slope."""
    if not isinstance(record, Mapping) or signed_number(record.get("slope")) == "–":
        return None
    interval = slope_interval(record.get("slope"), record.get("low"), record.get("high"), missing)
    verdict = "steers" if record.get("steers") else NOT_MEASURABLE
    return interval, signed_number(record.get("random_slope"), missing=missing), verdict


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


def markdown_text(value: object) -> str:
    """``value`` as literal text in Markdown, also inside a table cell: line breaks and other
    control characters become one space, ``&``, ``<`` and ``>`` become HTML entities (so no
    tag or comment can open), and Markdown's control characters (``\\ ` * _ [ ] | ~ # !``) are
    backslash-escaped, so the text renders as written and cannot add links, markup or cells."""
    text = _LINE_BREAKS.sub(" ", str(value))
    text = re.sub("[&<>]", lambda match: _HTML_SPECIAL[match.group(0)], text)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def longest_backtick_run(text: str) -> int:
    """The length of the longest run of backticks in ``text`` (0 when it has none)."""
    return max((len(run) for run in re.findall("`+", text)), default=0)


def markdown_code(value: object) -> str:
    """``value`` as one Markdown code span (not for table cells, where '|' still splits):
    fenced by more backticks than it holds, so nothing in it is read as markup."""
    text = _LINE_BREAKS.sub(" ", str(value))
    fence = "`" * (longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
