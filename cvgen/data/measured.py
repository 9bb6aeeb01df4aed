"""The measured tables that ship in `eval/measured/`, one per model cvgen was measured on: a
row per axis, and the rule that says whether an axis steers (`cvgen axes` and the pack README
read them; `cvgen.eval.axis_table` makes the rows from an eval report, and
`scripts/measure_axes.py` writes the files).

The rule (issue 17's criterion): an axis **steers** when the lower end of the 95% interval of its
propensity slope is above 0 and above `STEER_FACTOR` times the absolute slope of the random
direction with the same per-block norms. Otherwise it is "not measurable on this model": the
probes cannot tell its effect from what any vector of its size does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvgen.common.files import DataError
from cvgen.common.messages import NOT_MEASURABLE, signed_number
from cvgen.data.eval_data import eval_root

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
            parts.append(f"{word} on {_short(table.model)} ({signed_number(row.slope)})")
    return "; ".join(parts) or "not measured"


def table_for_model(
    file_name: str, tables: Sequence[MeasuredTable] | None = None
) -> MeasuredTable | None:
    """The shipped table measured on a model file of this name (`SmolLM2-135M-Instruct.Q4_1.gguf`),
    or None."""
    found = shipped_tables() if tables is None else tables
    return next((table for table in found if table.model == file_name), None)
