"""The optional fields of an axis file, checked: `evaluation.statistics` (the text statistics
`cvgen eval` measures on the axis) and `method` (the axis's own solver under `cvgen generate
--method auto`). Every error is a one-line `DataError` naming the file, the field and the value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.common.files import DataError

# The solvers an axis file's `method` may name (`cvgen.solve.methods.METHODS`, which a test
# holds to this list): the method `cvgen generate --method auto` uses for that axis.
AXIS_METHODS = ("cross-covariance", "mean-diff", "pca-diff")
# The text statistics `cvgen eval` can measure (registered in `cvgen.eval.textstats`); an axis
# file's `evaluation.statistics` names some of them.
TEXT_STATISTIC_NAMES = (
    "casual_rate", "casual_word_rate", "contraction_rate", "first_person_share", "past_tense_share",
    "quoted_fraction", "sentiment", "word_length", "words_per_reply", "words_per_sentence",
    "zipf_frequency",
)  # fmt: skip


@dataclass(frozen=True)
class AxisStatistic:
    """A text statistic that shows an axis at work (from the axis file's `evaluation` field):
    its name (one of `TEXT_STATISTIC_NAMES`) and the sign of its change, +1 or -1, as the
    scale rises toward the axis's SECOND (positive) class."""

    name: str
    expected_sign: int


def json_type(value: Any) -> str:
    """A parsed JSON value described for a message: "the number 1", "null", "a list", ..."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return f"the number {json.dumps(value)}"
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def _check_statistic(path: Path, field: str, item: Any) -> AxisStatistic:
    """One entry of `evaluation.statistics`: {"name": ..., "expected_sign": 1 or -1}."""
    if not isinstance(item, dict) or set(item) != {"name", "expected_sign"}:
        raise DataError(
            f"{path}: field '{field}' is {json.dumps(item)}; expected an object with exactly "
            "'name' and 'expected_sign'"
        )
    name, sign = item["name"], item["expected_sign"]
    if name not in TEXT_STATISTIC_NAMES:
        raise DataError(
            f"{path}: field '{field}.name' is {json.dumps(name)}; "
            f"choose one of: {', '.join(TEXT_STATISTIC_NAMES)}"
        )
    if isinstance(sign, bool) or sign not in (1, -1):
        raise DataError(
            f"{path}: field '{field}.expected_sign' is {json.dumps(sign)}; expected 1 (rises "
            "toward the second class) or -1 (falls)"
        )
    return AxisStatistic(name, int(sign))


def axis_statistics(path: Path, raw: dict[str, Any]) -> tuple[AxisStatistic, ...]:
    """The optional `evaluation` field: {"statistics": [{"name", "expected_sign"}, ...]}."""
    if "evaluation" not in raw:
        return ()
    evaluation = raw["evaluation"]
    if not isinstance(evaluation, dict) or set(evaluation) != {"statistics"}:
        raise DataError(
            f"{path}: field 'evaluation' is {json.dumps(evaluation)}; expected an object "
            'with one field \'statistics\': [{"name": ..., "expected_sign": 1 or -1}, ...]'
        )
    items = evaluation["statistics"]
    if not isinstance(items, list):
        raise DataError(
            f"{path}: field 'evaluation.statistics' is {json_type(items)}, expected a list"
        )
    found: list[AxisStatistic] = []
    for index, item in enumerate(items):
        statistic = _check_statistic(path, f"evaluation.statistics[{index}]", item)
        if statistic.name in [earlier.name for earlier in found]:
            raise DataError(
                f"{path}: field 'evaluation.statistics[{index}].name' repeats '{statistic.name}'"
            )
        found.append(statistic)
    return tuple(found)


def axis_method_field(path: Path, raw: dict[str, Any]) -> str | None:
    """The optional `method` field: one of `AXIS_METHODS`, or None where the file names none."""
    method = raw.get("method")
    if method is not None and method not in AXIS_METHODS:
        raise DataError(
            f"{path}: field 'method' is {json.dumps(method)}; expected one of "
            f"{', '.join(AXIS_METHODS)}"
        )
    return method
