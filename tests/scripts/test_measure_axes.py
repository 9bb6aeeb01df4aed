"""scripts/measure_axes.py without a model: rows measured again replace only their own, and a
model's section of docs/axes.md is made from its table's JSON alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script

from cvgen.data.measured import AxisRow, MeasuredTable


def _script() -> ModuleType:
    return load_script("measure_axes")


def _row(axis: str, slope: float, method: str = "cross-covariance") -> AxisRow:
    return AxisRow(
        axis=axis,
        classes=("a", "b"),
        slope=slope,
        low=slope - 0.01,
        high=slope + 0.01,
        wrong_sign=0.0,
        random_slope=0.001,
        negated_slope=-slope,
        kl_at_one=(0.01, 0.01),
        safe_scale=(4.0, 4.0),
        limited_by=("sweep", "sweep"),
        kl_at_safe=(0.05, 0.05),
        method=method,
    )


def _table(rows: list[AxisRow], seconds: int = 1800) -> MeasuredTable:
    settings = {"seconds": seconds, "threads": 2, "generated": False}
    return MeasuredTable(
        "M.gguf", "python scripts/measure_axes.py --model M.gguf", "2026-12-01", settings, rows
    )


def test_rows_measured_again_replace_their_own_and_are_recorded() -> None:
    old = _table([_row("language", 0.2), _row("person", 0.004), _row("tense", 0.02)])
    again = replace(
        _table([_row("person", 0.06, "mean-diff")], seconds=240),
        command="python scripts/measure_axes.py --model M.gguf --axis person",
        date="2026-12-02",
    )
    merged = _script()._merged(old, again, "person names mean-diff now")
    assert [(row.axis, row.slope, row.method) for row in merged.rows] == [
        ("language", 0.2, "cross-covariance"),
        ("person", 0.06, "mean-diff"),
        ("tense", 0.02, "cross-covariance"),
    ]
    assert merged.date == "2026-12-01" and merged.settings["seconds"] == 1800
    assert merged.settings["remeasured"] == [
        {
            "axes": ["person"],
            "date": "2026-12-02",
            "command": "python scripts/measure_axes.py --model M.gguf --axis person",
            "seconds": 240,
            "why": "person names mean-diff now",
        }
    ]
    section = _script()._section("M", merged)
    assert section.startswith("<!-- measured:M -->\n### M.gguf\n")
    assert "the evaluation (of a pack made before) took 30 min with `--threads 2`." in section
    assert (
        "Re-measured 2026-12-02: person, with `python scripts/measure_axes.py --model M.gguf "
        "--axis person` (4 min): person names mean-diff now." in section
    )
    assert "| person (a / b) | mean-diff | +0.060 [+0.050, +0.070] |" in section
    assert section.endswith("<!-- /measured:M -->")


def test_the_statistics_check_is_shown_with_its_verdicts() -> None:
    check = {
        "date": "2026-12-02",
        "command": "python scripts/measure_axes.py --model M.gguf --statistics",
        "settings": {"prompts": 16, "max_tokens": 256, "seconds": 600},
        "axes": {
            "register": {
                "method": "cross-covariance",
                "scales": [-1.5, -0.75, 0.0, 0.75, 1.5],
                "statistics": {
                    "contraction_rate": {"spearman": -0.61, "expected_sign": -1},
                    "words_per_sentence": {"spearman": 0.2, "expected_sign": 1},
                },
                "slope": 0.5,
                "low": 0.45,
                "high": 0.55,
                "meets": True,
            },
            "tense": {
                "method": "cross-covariance",
                "scales": [-4.0, -2.0, 0.0, 2.0, 4.0],
                "statistics": {"past_tense_share": {"spearman": None, "expected_sign": -1}},
                "slope": None,
                "low": None,
                "high": None,
                "meets": False,
                "calibrated": {
                    "negative": {"scale": 4.0, "limited_by": "kl"},
                    "positive": {"scale": 4.2, "limited_by": "repetition"},
                },
            },
        },
    }
    lines = _script()._check_lines(check)
    assert "16 prompts × 5 scales" in lines[1] and "up to 256 tokens" in lines[1]
    assert "(10 min)" in lines[1]
    assert lines[5] == (
        "| register | cross-covariance | -1.5, -0.75, 0, 0.75, 1.5 | contraction_rate ρ=-0.61 (−); "
        "words_per_sentence ρ=+0.20 (+) | +0.500 [+0.450, +0.550] | **yes** |"
    )
    assert lines[6] == (
        "| tense | cross-covariance | -4, -2, 0, 2, 4 (calibrated: kl/repetition) | "
        "past_tense_share ρ=– (−) | – [–, –] | no |"
    )
    assert _script()._check_lines({}) == []


def test_the_statistics_check_never_removes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "pack.json").write_text('{"axes": {}}')
    mine = tmp_path / "statistics-person"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own")
    table = _table([_row("person", 0.06, "mean-diff")])
    with pytest.raises(SystemExit, match="is not a pack copy this script made"):
        _script()._statistics_check(["python"], tmp_path / "pack", tmp_path, table, ["person"], 2)
    assert (mine / "notes.txt").read_text() == "the user's own"
