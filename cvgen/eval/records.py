"""eval.json as typed records: `EvalReport` (the whole run) holding an `AxisReport` per axis.

`EvalReport.to_dict` gives eval.json's content, `load_eval_report` reads a file back and
validates it once: every field's type, and the report's `format_version`, so a report of
another version is refused with a one-line message instead of being misread later.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from cvgen.common.errors import CvgenError
from cvgen.eval.calibration import SafeScale
from cvgen.eval.settings import EvalSettings
from cvgen.eval.statistics import SlopeEstimate

REPORT_FORMAT = "cvgen-eval"
REPORT_VERSION = 1


class ReportError(CvgenError, ValueError):
    """An eval.json that cannot be read: another format or version, or a malformed field."""


@dataclass(frozen=True)
class PropensitySummary:
    """The propensity along the sweep: per-scale mean with its bootstrap band, and its slope."""

    probe_pairs: int
    prompts: int
    mean: list[float]
    low: list[float]
    high: list[float]
    unsteered: float
    slope: SlopeEstimate


@dataclass(frozen=True)
class StatisticSummary:
    """One text statistic along the sweep (None where a scale has no generations)."""

    mean: list[float | None]
    unsteered: float
    spearman: float | None
    expected_sign: int


@dataclass(frozen=True)
class DebiasOnly:
    """The debias file alone (scale 0): its KL, and its shift of the propensity."""

    kl: float | None
    propensity_shift: float | None


@dataclass(frozen=True)
class ControlSummary:
    """A control (random direction or negated vector) at its scales; the propensity parts are
    absent without probes, the KL without a KL measurement (omitted from eval.json then)."""

    scales: list[float]
    slope: SlopeEstimate | None = None
    mean: list[float] | None = None
    kl: list[float | None] | None = None


@dataclass(frozen=True)
class Controls:
    debias_only: DebiasOnly
    random: ControlSummary | None = None
    negated: ControlSummary | None = None


@dataclass(frozen=True)
class Damage:
    """KL and repetition at every scale the axis ran at (the sweep and the calibration scales),
    with the repetition's rise over the unsteered model and its 95% lower bound."""

    scales: list[float]
    kl: list[float | None]
    repetition: list[float | None]
    repetition_rise: list[float]
    repetition_rise_low: list[float]


@dataclass(frozen=True)
class AxisReport:
    """eval.json's entry for one axis (`cvgen.eval.summary.summarise_axis`)."""

    classes: list[str]
    scales: list[float]
    kl: list[float | None]
    repetition: list[float | None]
    propensity: PropensitySummary | None
    statistics: dict[str, StatisticSummary]
    controls: Controls
    damage: Damage
    examples: dict[str, str]
    safe_scale: dict[str, SafeScale]  # "negative", "positive"
    # per pole, where the KL reaches SUGGESTED_KL_SHARE of the budget (within the safe scale);
    # empty in a report written before cvgen measured it
    suggested_scale: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class UnsteeredSummary:
    repetition: float
    examples: list[str]


@dataclass(frozen=True)
class EvalReport:
    """The whole of eval.json."""

    cvgen_version: str
    date: str
    pack_name: str
    model: str
    backend: str
    settings: EvalSettings
    seconds: float
    estimate_seconds: float
    prompts: list[str]
    neutral_positions: int
    unsteered: UnsteeredSummary
    axes: dict[str, AxisReport]
    format: str = REPORT_FORMAT
    format_version: int = REPORT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """eval.json's content: `format` and `format_version` first, absent parts omitted."""
        values = _plain(self)
        return {
            "format": values.pop("format"),
            "format_version": values.pop("format_version"),
            **values,
        }


def _plain(value: Any) -> Any:
    """A record as JSON-ready values; a `ControlSummary`'s None parts are left out, and
    `EvalSettings` is written as its `to_dict`."""
    if isinstance(value, EvalSettings):
        return _plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, ControlSummary | Controls):
            items = {key: item for key, item in items.items() if item is not None}
        return items
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def report_from_dict(raw: Any, source: str) -> EvalReport:
    """Validate eval.json's content (`source` names it in errors) and build the `EvalReport`."""
    if not isinstance(raw, dict) or raw.get("format") != REPORT_FORMAT:
        raise ReportError(f"{source}: not a cvgen eval report (field 'format' is not 'cvgen-eval')")
    version = raw.get("format_version")
    if version != REPORT_VERSION:
        raise ReportError(
            f"{source}: field 'format_version' is {json.dumps(version)}; this cvgen reads eval "
            f"reports of version {REPORT_VERSION} (run `cvgen eval` again)"
        )
    built: EvalReport = _build(EvalReport, raw, source, "")
    return built


def load_eval_report(path: Path) -> EvalReport:
    """Read and validate an eval.json file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read the eval report ({exc})") from None
    return report_from_dict(raw, str(path))


def _build(kind: Any, value: Any, source: str, where: str) -> Any:
    """`value` checked against the type `kind` and built into it (records, lists, dicts)."""
    origin, arguments = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return _build(inner, value, source, where)
    if kind is EvalSettings:
        if not isinstance(value, dict):
            raise _bad(source, where, value, "an object")
        try:
            return EvalSettings(**value)
        except (TypeError, CvgenError) as exc:
            raise ReportError(f"{source}: field '{where}': {exc}") from None
    if dataclasses.is_dataclass(kind):
        return _build_record(kind, value, source, where)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _bad(source, where, value, "a list")
        return [_build(arguments[0], item, source, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(source, where, value, "an object")
        return {
            key: _build(arguments[1], item, source, f"{where}.{key}") for key, item in value.items()
        }
    return _build_scalar(kind, value, source, where)


def _build_record(kind: Any, value: Any, source: str, where: str) -> Any:
    if not isinstance(value, dict):
        raise _bad(source, where, value, "an object")
    hints = get_type_hints(kind)
    values = {}
    for item in dataclasses.fields(kind):
        path = f"{where}.{item.name}" if where else item.name
        if item.name in value:
            values[item.name] = _build(hints[item.name], value[item.name], source, path)
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise ReportError(f"{source}: field '{path}' is missing")
    return kind(**values)


def _build_scalar(kind: Any, value: Any, source: str, where: str) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    names = {float: "a number", int: "an integer", str: "a string"}
    raise _bad(source, where, value, names.get(kind, str(kind)))


def _bad(source: str, where: str, value: Any, expected: str) -> ReportError:
    shown = json.dumps(value)[:60] if not isinstance(value, dict) else "an object"
    return ReportError(f"{source}: field '{where}' is {shown}, expected {expected}")
