"""cvgen.eval.records: eval.json as typed records, written as before and read back validated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cvgen.eval.calibration import SafeScale
from cvgen.eval.records import (
    AxisReport,
    Controls,
    ControlSummary,
    Damage,
    DebiasOnly,
    EvalReport,
    ReportError,
    UnsteeredSummary,
    load_eval_report,
    report_from_dict,
)
from cvgen.eval.settings import EvalSettings
from cvgen.eval.statistics import SlopeEstimate


def small_report() -> EvalReport:
    slope = SlopeEstimate(0.5, 0.1, 0.9, 0.2, 5)
    axis = AxisReport(
        classes=["simple", "ornate"],
        scales=[-1.0, 0.0, 1.0],
        kl=[0.2, 0.0, 0.3],
        repetition=[0.0, None, 0.1],
        propensity=None,
        statistics={},
        controls=Controls(DebiasOnly(0.01, None), random=ControlSummary([-1.0, 0.0, 1.0], slope)),
        damage=Damage([-1.0, 0.0, 1.0], [0.2, 0.0, 0.3], [0.0, 0.0, 0.1], [0.0] * 3, [0.0] * 3),
        examples={"-1": "a", "0": "b", "1": "c"},
        safe_scale={"negative": SafeScale(1.0, "sweep"), "positive": SafeScale(0.5, "kl")},
    )
    return EvalReport(
        cvgen_version="0",
        date="2025-01-01T00:00:00+00:00",
        pack_name="pack",
        model="m.gguf",
        backend="hf",
        settings=EvalSettings(scales=(-1.0, 0.0, 1.0)),
        seconds=1.0,
        estimate_seconds=2.0,
        prompts=["p"],
        neutral_positions=6,
        unsteered=UnsteeredSummary(0.0, ["x"]),
        axes={"language": axis},
    )


def test_the_report_is_written_in_the_old_shape_and_read_back_equal(tmp_path: Path) -> None:
    report = small_report()
    content = report.to_dict()
    assert list(content)[:2] == ["format", "format_version"]
    assert content["settings"] == EvalSettings(scales=(-1.0, 0.0, 1.0)).to_dict() | {
        "control_scales": [-1.0, 1.0],
        "calibration_scales": [2.0, 3.0],
    }
    controls = content["axes"]["language"]["controls"]
    assert controls == {
        "debias_only": {"kl": 0.01, "propensity_shift": None},
        "random": {
            "scales": [-1.0, 0.0, 1.0],
            "slope": {
                "slope": 0.5,
                "low": 0.1,
                "high": 0.9,
                "wrong_sign_fraction": 0.2,
                "n_items": 5,
            },
        },
    }  # absent parts are left out, as before
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(content))
    assert load_eval_report(path) == report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"format_version": 2},
            "field 'format_version' is 2; this cvgen reads eval reports of version 1",
        ),
        ({"format": "cvgen-pack"}, "not a cvgen eval report"),
        ({"seconds": "fast"}, "field 'seconds' is \"fast\", expected a number"),
        ({"unsteered": {"repetition": 0.0}}, "field 'unsteered.examples' is missing"),
    ],
)
def test_a_report_of_another_version_or_shape_is_refused_in_one_line(
    change: dict[str, Any], message: str
) -> None:
    content = small_report().to_dict() | change
    with pytest.raises(ReportError) as caught:
        report_from_dict(content, "pack/eval.json")
    assert str(caught.value).startswith("pack/eval.json: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_nested_field_error_names_its_path() -> None:
    content = small_report().to_dict()
    content["axes"]["language"]["kl"][1] = "zero"
    with pytest.raises(ReportError, match=r"field 'axes\.language\.kl\[1\]' is \"zero\""):
        report_from_dict(content, "eval.json")
