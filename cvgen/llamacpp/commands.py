"""llama.cpp command lines that load a pack's control vectors (current and legacy syntax).

Pure functions over a pack manifest (the dict loaded from ``pack.json``): no model, no GGUF
reading, no CLI. The static HTML builder reimplements this module in JavaScript and is tested
string for string against it, so every rule below is stated exactly and uses only operations
that JavaScript reproduces bit for bit.

Selection
    A selection is a sequence of ``(axis, scale)`` pairs, in the user's order; the output follows
    that order. Each axis may appear once. For every axis the pack's ``debias`` file is loaded at
    scale 1. If the *rounded* scale (see below) is not zero, the pole file picked by its sign
    (``positive`` for > 0, ``negative`` for < 0) is added at the rounded absolute scale: as
    ``--control-vector PATH`` when that is exactly 1, otherwise as
    ``--control-vector-scaled PATH:SCALE`` (current llama.cpp) or
    ``--control-vector-scaled PATH SCALE`` (``legacy_syntax``, llama.cpp before December 2025).
    A scale that rounds to 0 (e.g. 0.004) loads the debias file only.

Paths
    ``PATH`` is ``vector_dir + "/" + file_name``; if ``vector_dir`` is empty it is the bare file
    name, and if it already ends with ``/`` no second ``/`` is added. Nothing else is normalised
    (``"."`` gives ``"./name.gguf"``). Current llama.cpp splits option values on ``,`` (several
    files) and ``FILE:SCALE`` on ``:``, so in current syntax a path the command uses that
    contains ``,`` or ``:`` is refused; the legacy syntax passes one path per argument and
    accepts both.

Number formatting (``format_scale``)
    Let ``x`` be the absolute value of the IEEE-754 double. Round the *exact* value of ``x`` to
    2 decimals, a tie (the double lies exactly halfway, e.g. 0.125 or 2.5) going up. This is what
    JavaScript's ``Math.abs(v).toFixed(2)`` does, and Python's
    ``Decimal(x).quantize(Decimal("0.01"), ROUND_HALF_UP)``. Strip trailing zeros of the fraction,
    then a trailing ``.``. Prefix ``-`` when ``v < 0`` and the result is not ``"0"`` (so ``-0``
    and ``-0.001`` both give ``"0"``). Because the exact double is rounded, ``1.005`` (stored as
    1.00499999999999989...) gives ``"1"`` and ``0.285`` gives ``"0.28"``; ``0.125`` gives
    ``"0.13"``. NaN, infinities and ``|v| >= 1e21`` (where ``toFixed`` switches to exponent
    notation) are refused.

Number parsing (``parse_assignment``)
    The scale must match ``^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?$`` (no spaces,
    no ``_``, no hex, no ``inf``/``nan`` words); it is then converted with ``float`` (JavaScript:
    ``Number``), both correctly rounded. A result that is not finite (``1e999``) is refused.

Shell quoting (``quote_argument``)
    An argument made only of the characters ``A-Z a-z 0-9 _ . / : = + , @ % -`` (ASCII only, at
    least one) is written bare. Any other argument, the empty one included, is wrapped in single
    quotes with each ``'`` written as ``'\\''``. This is valid for any POSIX shell.

Layout
    ``build_command`` joins the quoted arguments with one space. With ``multiline`` the target
    stands alone on the first line and each option with its values on its own line, the lines
    joined with ``" \\\\\\n  "`` (space, backslash, newline, two spaces).

Combination advice (``combination_advice``)
    ``n`` is the number of axes whose rounded scale is not ``"0"``. With ``n >= 2`` a safe common
    ``|scale|`` lies between ``1/n`` and ``sqrt(1/n)``; a note is given when the largest rounded
    ``|scale|`` (the ``format_scale`` string read back as a double) is greater than
    ``sqrt(1/n)`` as a double (``Math.sqrt(1 / n)``): for two axes 0.71 warns, 0.7 does not.

Messages
    ``CommandError`` messages are one line. Names and values the user gave are quoted verbatim
    in single quotes (no escaping), and lists of valid names follow the manifest's order,
    joined with ``", "``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from cvgen.common.errors import CvgenError

__all__ = [
    "TARGETS",
    "CommandError",
    "build_command",
    "combination_advice",
    "default_model_path",
    "format_scale",
    "parse_assignment",
    "parse_assignment_in",
    "pack_suggested_scale",
    "preset_selection",
    "quote_argument",
    "vector_arguments",
]

TARGETS = ("llama-server", "llama-cli", "llama-completion")

_SCALE_LIMIT = 1e21
_DECIMAL_CONTEXT = Context(prec=40)  # enough for 21 integer digits and 2 decimals
_NUMBER_PATTERN = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_BARE_ARGUMENT_PATTERN = re.compile(r"[A-Za-z0-9_./:=+,@%-]+")
_LINE_JOINER = " \\\n  "


class CommandError(CvgenError, ValueError):
    """A selection, option or manifest entry that cannot become a llama.cpp command line."""


def parse_assignment(text: str) -> tuple[str, float]:
    """Parse ``AXIS=SCALE`` (e.g. ``"language=+0.6"``) into ``("language", 0.6)``.

    The text is split at its first ``=``; the axis name must be non-empty and the scale must be
    a plain decimal number (see the module docstring). Whether the axis exists is checked later,
    against a manifest, by ``vector_arguments``.
    """
    axis, separator, value = text.partition("=")
    if not separator:
        raise CommandError(f"expected AXIS=SCALE, got '{text}' (no '=')")
    if not axis:
        raise CommandError(f"expected AXIS=SCALE, got '{text}' (no axis name before '=')")
    if _NUMBER_PATTERN.fullmatch(value) is None:
        raise CommandError(f"scale '{value}' for axis '{axis}' is not a number")
    scale = float(value)
    if not math.isfinite(scale):
        raise CommandError(f"scale '{value}' for axis '{axis}' is not a finite number")
    return axis, scale


def pack_suggested_scale(manifest: Mapping[str, Any], axis: str, sign: str) -> float:
    """The pack's suggested scale for ``AXIS=+`` or ``AXIS=-`` (``sign``): the pole's
    ``suggested_scale`` in the manifest, with its sign (``cvgen eval`` calibrates it where the
    KL reaches a share of the budget; a pack never evaluated suggests 1). Raises
    ``CommandError`` for an unknown axis."""
    axes = manifest.get("axes")
    if not isinstance(axes, Mapping) or axis not in axes:
        raise CommandError(
            f"unknown axis '{axis}'; the pack has: {', '.join(_axis_names(manifest))}"
        )
    record = axes[axis]
    suggested = record.get("suggested_scale") if isinstance(record, Mapping) else None
    role = "positive" if sign == "+" else "negative"
    value = suggested.get(role) if isinstance(suggested, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        value = 1.0
    return abs(float(value)) * (1.0 if sign == "+" else -1.0)


def parse_assignment_in(manifest: Mapping[str, Any], text: str) -> tuple[str, float]:
    """``parse_assignment``, where ``AXIS=+`` and ``AXIS=-`` also take the pack's suggested
    scale of that pole (``pack_suggested_scale``)."""
    axis, separator, value = text.partition("=")
    if separator and axis and value in ("+", "-"):
        return axis, pack_suggested_scale(manifest, axis, value)
    return parse_assignment(text)


def format_scale(value: float) -> str:
    """Write ``value`` rounded to 2 decimals, without trailing zeros: 0.5 -> "0.5", 1 -> "1".

    Rounding is on the exact double, ties away from zero; ``-0`` gives ``"0"``. See the module
    docstring for the rule and its JavaScript equivalent. Raises ``CommandError`` for NaN,
    infinities and magnitudes of 1e21 or more.
    """
    if not math.isfinite(value) or abs(value) >= _SCALE_LIMIT:
        raise CommandError("scale must be a finite number of magnitude below 1e21")
    exact = Decimal(abs(value))
    fixed = str(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP, context=_DECIMAL_CONTEXT))
    text = fixed.rstrip("0").rstrip(".")
    if value < 0 and text != "0":
        return "-" + text
    return text


def quote_argument(argument: str) -> str:
    """Quote one argument for a POSIX shell (rule in the module docstring)."""
    if _BARE_ARGUMENT_PATTERN.fullmatch(argument) is not None:
        return argument
    return "'" + argument.replace("'", "'\\''") + "'"


def _axis_names(manifest: Mapping[str, Any]) -> list[str]:
    axes = manifest.get("axes")
    if not isinstance(axes, Mapping):
        raise CommandError("pack manifest has no 'axes' object")
    return list(axes)


def _join_vector_path(vector_dir: str, file_name: str) -> str:
    if vector_dir == "":
        return file_name
    if vector_dir.endswith("/"):
        return vector_dir + file_name
    return vector_dir + "/" + file_name


def _vector_path(
    manifest: Mapping[str, Any], axis: str, role: str, vector_dir: str, legacy_syntax: bool
) -> str:
    """The path of one of ``axis``'s files, refused in current syntax if it holds ':' or ','."""
    entry = manifest["axes"][axis]
    files = entry.get("files") if isinstance(entry, Mapping) else None
    file_name = files.get(role) if isinstance(files, Mapping) else None
    if not isinstance(file_name, str) or not file_name:
        raise CommandError(f"pack manifest: axes.{axis}.files.{role} is missing or not a file name")
    path = _join_vector_path(vector_dir, file_name)
    if not legacy_syntax:
        for separator in (":", ","):
            if separator in path:
                raise CommandError(
                    f"control-vector path '{path}' contains '{separator}', which current "
                    "llama.cpp reads as a separator; rename the file or directory, or use "
                    "--legacy-syntax"
                )
    return path


def _vector_option_groups(
    manifest: Mapping[str, Any],
    selection: Sequence[tuple[str, float]],
    vector_dir: str,
    legacy_syntax: bool,
) -> list[list[str]]:
    """``vector_arguments`` as ``[option, values...]`` groups, one per llama.cpp option."""
    valid_axes = _axis_names(manifest)
    seen: set[str] = set()
    groups: list[list[str]] = []
    for axis, scale in selection:
        if axis not in valid_axes:
            raise CommandError(
                f"unknown axis '{axis}' in --set; the pack has: {', '.join(valid_axes)}"
            )
        if axis in seen:
            raise CommandError(f"axis '{axis}' is given twice; set each axis once")
        seen.add(axis)
        if not math.isfinite(scale) or abs(scale) >= _SCALE_LIMIT:
            raise CommandError(
                f"scale for axis '{axis}' must be a finite number of magnitude below 1e21"
            )
        rounded = format_scale(scale)
        debias_path = _vector_path(manifest, axis, "debias", vector_dir, legacy_syntax)
        groups.append(["--control-vector", debias_path])
        if rounded == "0":
            continue
        role = "negative" if rounded.startswith("-") else "positive"
        pole_path = _vector_path(manifest, axis, role, vector_dir, legacy_syntax)
        magnitude = rounded.lstrip("-")
        if magnitude == "1":
            groups.append(["--control-vector", pole_path])
        elif legacy_syntax:
            groups.append(["--control-vector-scaled", pole_path, magnitude])
        else:
            groups.append(["--control-vector-scaled", f"{pole_path}:{magnitude}"])
    return groups


def vector_arguments(
    manifest: Mapping[str, Any],
    selection: Sequence[tuple[str, float]],
    *,
    vector_dir: str,
    legacy_syntax: bool = False,
) -> list[str]:
    """Return the llama.cpp arguments (unquoted) that load ``selection`` from a pack.

    ``manifest`` is the loaded ``pack.json``; ``selection`` lists ``(axis, scale)`` pairs in output
    order; ``vector_dir`` is the directory prefix the command should use for the GGUF files.
    Raises ``CommandError`` for an unknown or repeated axis, a non-finite scale, a manifest entry
    without its file, and (current syntax) a path it uses that contains ``:`` or ``,``.
    """
    groups = _vector_option_groups(manifest, selection, vector_dir, legacy_syntax)
    return [argument for group in groups for argument in group]


def _checked_layer_range(manifest: Mapping[str, Any], layer_range: tuple[int, int]) -> list[str]:
    model = manifest.get("model")
    n_layer = model.get("n_layer") if isinstance(model, Mapping) else None
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer < 2:
        raise CommandError(f"pack manifest: model.n_layer is {n_layer}, expected an integer >= 2")
    start, end = layer_range
    for value in (start, end):
        if not isinstance(value, int) or isinstance(value, bool):
            raise CommandError(f"layer range bound {value} is not an integer")
    if not 1 <= start <= end <= n_layer - 1:
        raise CommandError(
            f"layer range {start} {end} is invalid; need 1 <= START <= END <= {n_layer - 1} "
            f"(the model has {n_layer} layers and block 0 cannot be steered)"
        )
    return ["--control-vector-layer-range", str(start), str(end)]


def build_command(
    manifest: Mapping[str, Any],
    selection: Sequence[tuple[str, float]],
    *,
    target: str = "llama-server",
    model_path: str,
    vector_dir: str,
    legacy_syntax: bool = False,
    layer_range: tuple[int, int] | None = None,
    multiline: bool = False,
) -> str:
    """Return a shell command line running ``target`` with the model and selected vectors.

    The arguments are: ``target``, ``-m model_path``, ``vector_arguments(...)``, then
    ``--control-vector-layer-range START END`` if ``layer_range`` is given (inclusive, checked
    against ``manifest["model"]["n_layer"]``). Each is quoted with ``quote_argument``. Raises
    ``CommandError`` for an unknown target, an empty model path, a bad layer range, and
    everything ``vector_arguments`` refuses.
    """
    if target not in TARGETS:
        raise CommandError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    if not model_path:
        raise CommandError("model path is empty")
    groups = [[target], ["-m", model_path]]
    groups += _vector_option_groups(manifest, selection, vector_dir, legacy_syntax)
    if layer_range is not None:
        groups.append(_checked_layer_range(manifest, layer_range))
    lines = [" ".join(quote_argument(argument) for argument in group) for group in groups]
    return _LINE_JOINER.join(lines) if multiline else " ".join(lines)


def preset_selection(manifest: Mapping[str, Any], name: str) -> list[tuple[str, float]]:
    """Return the preset ``name`` of the pack as a selection, in the manifest's order.

    Raises ``CommandError`` for an unknown preset (listing the pack's presets), and for a preset
    naming an unknown axis or holding a scale that is not a finite number.
    """
    presets = manifest.get("presets") or {}
    if not isinstance(presets, Mapping):
        raise CommandError("pack manifest: 'presets' is not an object")
    if name not in presets:
        if not presets:
            raise CommandError(f"unknown preset '{name}'; the pack has no presets")
        raise CommandError(f"unknown preset '{name}'; the pack has: {', '.join(presets)}")
    entries = presets[name]
    if not isinstance(entries, Mapping):
        raise CommandError(f"pack manifest: presets.{name} is not an object")
    valid_axes = _axis_names(manifest)
    selection: list[tuple[str, float]] = []
    for axis, scale in entries.items():
        if axis not in valid_axes:
            raise CommandError(
                f"preset '{name}' names unknown axis '{axis}'; the pack has: "
                f"{', '.join(valid_axes)}"
            )
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise CommandError(f"pack manifest: presets.{name}.{axis} is {scale}, not a number")
        if not math.isfinite(scale):
            raise CommandError(f"pack manifest: presets.{name}.{axis} is {scale}, not finite")
        selection.append((axis, float(scale)))
    return selection


def combination_advice(selection: Sequence[tuple[str, float]]) -> str | None:
    """Return a one-line note when several active axes are set too strongly, else ``None``.

    ``n`` counts the axes whose rounded scale is not zero. With ``n >= 2``, a safe common
    ``|scale|`` lies between ``1/n`` and ``sqrt(1/n)``; the note is returned when the largest
    rounded ``|scale|`` exceeds ``sqrt(1/n)`` (compared as doubles).
    """
    magnitudes = [float(format_scale(abs(scale))) for _, scale in selection]
    active = [magnitude for magnitude in magnitudes if magnitude != 0]
    count = len(active)
    if count < 2:
        return None
    upper = math.sqrt(1 / count)
    largest = max(active)
    if largest <= upper:
        return None
    return (
        f"note: {count} axes are combined at up to |scale| {format_scale(largest)}; with "
        f"{count} axes a safe common |scale| lies between {format_scale(1 / count)} and "
        f"{format_scale(upper)} (1/n to sqrt(1/n)); lower them if the text degrades"
    )


def default_model_path(manifest: Mapping[str, Any]) -> str:
    """Return ``manifest["model"]["source"]`` when it names a ``.gguf`` file, else ``MODEL.gguf``.

    The suffix test ignores ASCII case only.
    """
    model = manifest.get("model")
    source = model.get("source") if isinstance(model, Mapping) else None
    if isinstance(source, str) and _ascii_lower(source).endswith(".gguf"):
        return source
    return "MODEL.gguf"


def _ascii_lower(text: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
