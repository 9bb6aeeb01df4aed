"""The measured table of a pack's axes: one row per axis (`cvgen.data.measured.AxisRow`), made
from an eval report, and the table as Markdown (docs/axes.md) and as text (`cvgen axes
--measured`). The rows, the rule that says whether an axis steers and the shipped tables live in
`cvgen.data.measured`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from cvgen.common.messages import NOT_MEASURABLE, signed_number, slope_interval
from cvgen.data.measured import STEER_FACTOR, AxisRow, MeasuredTable
from cvgen.eval.records import AxisReport, EvalReport


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


def measured_text(table: MeasuredTable) -> str:
    """One model's table as plain text (`cvgen axes --measured`)."""
    again = [
        f"{', '.join(item.get('axes', []))} re-measured {item.get('date', '?')}"
        for item in table.settings.get("remeasured", [])
    ]
    lines = [
        f"{table.model}: measured {table.date} with `{table.command}`"
        + (f" ({'; '.join(again)})" if again else ""),
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
