"""The measured table of a pack's axes: one row per axis, read from an eval report, the rule that
says whether an axis steers, and the tables that ship in `eval/measured/` for the models cvgen
was measured on (`cvgen axes --measured` shows them; `scripts/measure_axes.py` writes them).

The rule (issue 17's criterion): an axis **steers** when the lower end of the 95% interval of its
propensity slope is above 0 and above `STEER_FACTOR` times the absolute slope of the random
direction with the same per-block norms. Otherwise it is "not measurable on this model": the
probes cannot tell its effect from what any vector of its size does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.common.files import DataError
from cvgen.common.messages import NOT_MEASURABLE, signed_number, slope_interval
from cvgen.data.eval_data import eval_root
from cvgen.eval.records import AxisReport, EvalReport

STEER_FACTOR = 3.0
MEASURED_FORMAT = "cvgen-measured-axes"


@dataclass(frozen=True)
class AxisRow:
    """What one axis measured: slopes are propensity units (nats per token) per unit scale."""

    axis: str
    classes: tuple[str, str]
    slope: float
    low: float
    high: float
    wrong_sign: float
    random_slope: float | None
    negated_slope: float | None
    kl_at_one: tuple[float | None, float | None]  # at -1 and +1
    safe_scale: tuple[float, float]  # negative, positive
    limited_by: tuple[str, str]
    kl_at_safe: tuple[float | None, float | None]
    statistics: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    method: str = ""  # the solver of the axis's files ("" in a table from before it was kept)

    @property
    def steers(self) -> bool:
        """The criterion of the module docstring (no random control: judged on the slope)."""
        floor = STEER_FACTOR * abs(self.random_slope) if self.random_slope is not None else 0.0
        return self.low > 0 and self.low > floor

    @property
    def verdict(self) -> str:
        return "steers" if self.steers else NOT_MEASURABLE

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["statistics"] = {
            name: {"spearman": rho, "expected_sign": sign}
            for name, (rho, sign) in self.statistics.items()
        }
        values["steers"] = self.steers
        return values

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str) -> AxisRow:
        try:
            return cls(
                axis=str(raw["axis"]),
                classes=(str(raw["classes"][0]), str(raw["classes"][1])),
                slope=float(raw["slope"]),
                low=float(raw["low"]),
                high=float(raw["high"]),
                wrong_sign=float(raw["wrong_sign"]),
                random_slope=_number(raw["random_slope"]),
                negated_slope=_number(raw["negated_slope"]),
                kl_at_one=(_number(raw["kl_at_one"][0]), _number(raw["kl_at_one"][1])),
                safe_scale=(float(raw["safe_scale"][0]), float(raw["safe_scale"][1])),
                limited_by=(str(raw["limited_by"][0]), str(raw["limited_by"][1])),
                kl_at_safe=(_number(raw["kl_at_safe"][0]), _number(raw["kl_at_safe"][1])),
                statistics={
                    name: (_number(item["spearman"]), int(item["expected_sign"]))
                    for name, item in raw.get("statistics", {}).items()
                },
                method=str(raw.get("method", "")),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            name = raw.get("axis", "?") if isinstance(raw, dict) else "?"
            raise DataError(f"{source}: axis '{name}': bad or missing field ({exc})") from None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _interpolate(
    scales: Sequence[float], values: Sequence[float | None], at: float
) -> float | None:
    known = [(s, v) for s, v in zip(scales, values, strict=True) if v is not None]
    if not known or not min(s for s, _ in known) <= at <= max(s for s, _ in known):
        return None
    xs, ys = zip(*known, strict=True)
    return float(np.interp(at, xs, ys))


def axis_row(axis: str, report: AxisReport, method: str = "") -> AxisRow | None:
    """The table row of one axis of an eval report (None when it has no propensity);
    `method`: the solver of its files (pack.json's `axes.<axis>.method`)."""
    propensity = report.propensity
    if propensity is None:
        return None
    random = report.controls.random
    negated = report.controls.negated
    damage = report.damage
    safe = (report.safe_scale["negative"], report.safe_scale["positive"])
    return AxisRow(
        axis=axis,
        classes=(report.classes[0], report.classes[1]),
        slope=propensity.slope.slope,
        low=propensity.slope.low,
        high=propensity.slope.high,
        wrong_sign=propensity.slope.wrong_sign_fraction,
        random_slope=random.slope.slope if random and random.slope else None,
        negated_slope=negated.slope.slope if negated and negated.slope else None,
        kl_at_one=(
            _interpolate(damage.scales, damage.kl, -1.0),
            _interpolate(damage.scales, damage.kl, 1.0),
        ),
        safe_scale=(safe[0].scale, safe[1].scale),
        limited_by=(safe[0].limited_by, safe[1].limited_by),
        kl_at_safe=(
            _interpolate(damage.scales, damage.kl, -safe[0].scale),
            _interpolate(damage.scales, damage.kl, safe[1].scale),
        ),
        statistics={
            name: (summary.spearman, summary.expected_sign)
            for name, summary in report.statistics.items()
        },
        method=method,
    )


def report_rows(report: EvalReport, methods: Mapping[str, str] | None = None) -> list[AxisRow]:
    """Every axis of the report that has probes, in the report's order; `methods`: each
    axis's solver, as the pack records it."""
    methods = methods or {}
    rows = [axis_row(name, axis, methods.get(name, "")) for name, axis in report.axes.items()]
    return [row for row in rows if row is not None]


def _signed(value: float | None, digits: int = 3) -> str:
    return signed_number(value, digits)


def _plain(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _statistics_text(row: AxisRow) -> str:
    parts = [
        f"{name} ρ={_signed(rho, 2)} (expected {'+' if sign > 0 else '−'})"
        for name, (rho, sign) in row.statistics.items()
    ]
    return "; ".join(parts) or "–"


TABLE_HEADER = (
    "| axis (− / +) | method | slope [95% CI] | random | negated | KL at −1 / +1 | safe scale − / + "
    "| KL at safe − / + | text statistics | verdict |",
    "|---|---|---|---|---|---|---|---|---|---|",
)


def table_markdown(rows: Sequence[AxisRow]) -> list[str]:
    """The rows as a Markdown table (the header of `TABLE_HEADER`)."""
    lines = list(TABLE_HEADER)
    for row in rows:
        verdict = "**steers**" if row.steers else NOT_MEASURABLE
        lines.append(
            f"| {row.axis} ({row.classes[0]} / {row.classes[1]}) | {row.method or '–'} "
            f"| {slope_interval(row.slope, row.low, row.high)} "
            f"| {_signed(row.random_slope)} | {_signed(row.negated_slope)} "
            f"| {_plain(row.kl_at_one[0])} / {_plain(row.kl_at_one[1])} "
            f"| {row.safe_scale[0]:.2f} ({row.limited_by[0]}) / "
            f"{row.safe_scale[1]:.2f} ({row.limited_by[1]}) "
            f"| {_plain(row.kl_at_safe[0])} / {_plain(row.kl_at_safe[1])} "
            f"| {_statistics_text(row)} | {verdict} |"
        )
    return lines


@dataclass(frozen=True)
class MeasuredTable:
    """One model's measured table, as shipped in `eval/measured/<model>.json`."""

    model: str
    command: str
    date: str
    settings: dict[str, Any]
    rows: list[AxisRow]
    source: str = ""
    # point 4's check of the text statistics (scripts/measure_axes.py --statistics): its
    # settings and one entry per axis; empty where it was not run
    statistics_check: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = {
            "format": MEASURED_FORMAT,
            "model": self.model,
            "command": self.command,
            "date": self.date,
            "settings": self.settings,
            "rows": [row.to_dict() for row in self.rows],
        }
        if self.statistics_check:
            values["statistics_check"] = self.statistics_check
        return values

    def row(self, axis: str) -> AxisRow | None:
        return next((row for row in self.rows if row.axis == axis), None)


def measured_root() -> Path:
    return eval_root() / "measured"


def read_measured(path: Path) -> MeasuredTable:
    """One shipped table, checked (a bad file is a one-line error naming it)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the measured table ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != MEASURED_FORMAT:
        raise DataError(f"{path}: field 'format' is not '{MEASURED_FORMAT}'")
    rows = raw.get("rows")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: field 'rows' is not a list of objects")
    return MeasuredTable(
        model=str(raw.get("model", "")),
        command=str(raw.get("command", "")),
        date=str(raw.get("date", "")),
        settings=dict(raw.get("settings") or {}),
        rows=[AxisRow.from_dict(row, str(path)) for row in rows],
        source=str(path),
        statistics_check=dict(raw.get("statistics_check") or {}),
    )


def shipped_tables(root: Path | None = None) -> list[MeasuredTable]:
    """Every shipped measured table, by file name."""
    folder = root or measured_root()
    return [read_measured(path) for path in sorted(folder.glob("*.json"))]


def _short(model: str) -> str:
    return model.removesuffix(".gguf")


def measured_summary(axis: str, tables: Sequence[MeasuredTable]) -> str:
    """One line for `cvgen axes`: where the axis steers and where it is not measurable, with
    its slope."""
    parts = []
    for table in tables:
        row = table.row(axis)
        if row is not None:
            word = "steers" if row.steers else "not measurable"
            parts.append(f"{word} on {_short(table.model)} ({_signed(row.slope)})")
    return "; ".join(parts) or "not measured"


def measured_text(table: MeasuredTable) -> str:
    """One model's table as plain text (`cvgen axes --measured`)."""
    lines = [
        f"{table.model}: measured {table.date} with `{table.command}`",
        f"{'axis':<16} {'method':<16} {'slope [95% CI]':<25} {'random':>7} {'negated':>8} "
        f"{'KL at -1/+1':>13} {'safe -/+':>11}  verdict",
    ]
    for row in table.rows:
        interval = slope_interval(row.slope, row.low, row.high)
        kl = f"{_plain(row.kl_at_one[0])}/{_plain(row.kl_at_one[1])}"
        safe = f"{row.safe_scale[0]:.2f}/{row.safe_scale[1]:.2f}"
        lines.append(
            f"{row.axis:<16} {row.method or '–':<16} {interval:<25} {_signed(row.random_slope):>7} "
            f"{_signed(row.negated_slope):>8} {kl:>13} {safe:>11}  {row.verdict}"
        )
    lines.append(
        f"An axis steers when its slope's lower 95% bound is above 0 and above "
        f"{STEER_FACTOR:g}x the random direction's |slope| (propensity, nats per token per unit "
        "scale); docs/axes.md explains."
    )
    return "\n".join(lines)
