"""The measured table: the steering rule, the shipped JSON format, `cvgen axes --measured`, and
the suggested scale's calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cvgen.cli import main
from cvgen.common.files import DataError
from cvgen.data import measured
from cvgen.data.measured import AxisRow, MeasuredTable, read_measured
from cvgen.eval.axis_table import table_markdown
from cvgen.eval.calibration import suggested_scale


def _row(axis: str = "language", *, low: float = 0.2, random: float | None = -0.01) -> AxisRow:
    return AxisRow(
        axis=axis,
        classes=("simple", "ornate"),
        slope=low + 0.01,
        low=low,
        high=low + 0.02,
        wrong_sign=0.0,
        random_slope=random,
        negated_slope=-(low + 0.01),
        kl_at_one=(0.018, 0.017),
        safe_scale=(2.68, 2.4),
        limited_by=("kl", "kl"),
        kl_at_safe=(0.1, 0.1),
        statistics={"word_length": (0.12, 1)},
        method="cross-covariance",
    )


@pytest.mark.parametrize(
    ("low", "random", "steers"),
    [
        (0.2, -0.01, True),
        (0.05, 0.02, False),  # above 0, but not above 3x the random slope (0.06)
        (0.07, -0.02, True),
        (-0.01, 0.0, False),
        (0.01, None, True),  # no random control: judged on the interval alone
    ],
)
def test_an_axis_steers_when_its_interval_clears_zero_and_three_random_slopes(
    low: float, random: float | None, steers: bool
) -> None:
    row = _row(low=low, random=random)
    assert row.steers is steers
    assert row.verdict == ("steers" if steers else "not measurable on this model")


def test_a_table_round_trips_through_its_json_file(tmp_path: Path) -> None:
    table = MeasuredTable(
        "M.gguf", "python scripts/measure_axes.py --model M.gguf", "2026-12-01", {}, [_row()]
    )
    path = tmp_path / "M.json"
    path.write_text(json.dumps(table.to_dict()))
    back = read_measured(path)
    assert back.rows == table.rows and back.model == "M.gguf"
    lines = table_markdown(back.rows)
    assert lines[2].startswith(
        "| language (simple / ornate) | cross-covariance | +0.210 [+0.200, +0.220] | -0.010 |"
    )
    assert lines[2].endswith("| word_length ρ=+0.12 (expected +) | **steers** |")


def test_a_bad_table_names_the_file_and_the_axis(tmp_path: Path) -> None:
    path = tmp_path / "M.json"
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match=r"M\.json: field 'format' is not"):
        read_measured(path)
    raw = MeasuredTable("M.gguf", "", "", {}, [_row()]).to_dict()
    del raw["rows"][0]["slope"]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"M\.json: axis 'language': bad or missing field"):
        read_measured(path)


def test_cvgen_axes_shows_where_each_axis_steers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [_row(), _row("character_focus", low=0.009, random=-0.016)]
    table = MeasuredTable("Small.Q4_1.gguf", "cmd", "2026-12-01", {}, rows)
    (tmp_path / "Small.Q4_1.json").write_text(json.dumps(table.to_dict()))
    monkeypatch.setattr(measured, "measured_root", lambda: tmp_path)
    listed = CliRunner().invoke(main, ["axes"], catch_exceptions=False).output
    language = next(line for line in listed.splitlines() if line.startswith("language"))
    assert language.endswith("steers on Small.Q4_1 (+0.210)")
    focus = next(line for line in listed.splitlines() if line.startswith("character_focus"))
    assert focus.endswith("not measurable on Small.Q4_1 (+0.019)")
    storytelling = next(line for line in listed.splitlines() if line.startswith("storytelling"))
    assert storytelling.endswith("not measured")
    shown = CliRunner().invoke(main, ["axes", "--measured", "--model", "small"]).output
    assert shown.startswith("Small.Q4_1.gguf: measured 2026-12-01 with `cmd`")
    assert "character_focus  cross-covariance +0.019 [+0.009, +0.029]" in shown
    assert shown.splitlines()[3].endswith("not measurable on this model")
    missing = CliRunner().invoke(main, ["axes", "--measured", "--model", "gemma"])
    assert missing.exit_code == 1
    assert "no measured table for 'gemma' (Small.Q4_1.gguf)" in missing.output


def test_the_suggested_scale_is_where_the_kl_reaches_its_target_within_the_safe_scale() -> None:
    scales, kl = [0.0, 1.0, 2.0, 3.0], [0.0, 0.02, 0.08, 0.2]
    assert suggested_scale(scales, kl, kl_target=0.05, cap=3.0) == pytest.approx(1.5)
    assert suggested_scale(scales, kl, kl_target=0.05, cap=1.2) == pytest.approx(1.2)
    # a curve that never reaches the target suggests the safe scale itself
    assert suggested_scale(scales, kl, kl_target=0.5, cap=3.0) == 3.0


def test_the_measured_text_names_rows_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"remeasured": [{"axes": ["person", "tense"], "date": "2026-12-02"}]}
    table = MeasuredTable("Small.Q4_1.gguf", "cmd", "2026-12-01", settings, [_row()])
    (tmp_path / "Small.Q4_1.json").write_text(json.dumps(table.to_dict()))
    monkeypatch.setattr(measured, "measured_root", lambda: tmp_path)
    shown = CliRunner().invoke(main, ["axes", "--measured"]).output
    assert shown.splitlines()[0] == (
        "Small.Q4_1.gguf: measured 2026-12-01 with `cmd` (person, tense re-measured 2026-12-02)"
    )
