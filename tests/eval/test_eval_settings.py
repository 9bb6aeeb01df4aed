"""cvgen.eval.settings: bad values are refused naming the option."""

from __future__ import annotations

import pytest

from cvgen.eval.settings import EvalError, EvalSettings, parse_scales


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"scales": (0.0, 1.0)},
            "--scales: [0.0, 1.0] must hold 0 and at least one scale of each sign",
        ),
        (
            {"scales": (1.0, 0.0, -1.0)},
            "--scales: [1.0, 0.0, -1.0] must be ascending without repeats",
        ),
        ({"kl_budget": 0.0}, "--kl-budget: 0.0 must be a positive number"),
        ({"prompts": 0}, "--prompts: 0 must be >= 1"),
        ({"repetition_tolerance": -0.1}, "--repetition-tolerance: -0.1 must be >= 0"),
        (
            {"calibration_scales": (1.0, 2.0)},
            "--calibration-scales: [1.0, 2.0] must be ascending and beyond the sweep's largest "
            "|scale| on both sides",
        ),
    ],
)
def test_settings_refuse_bad_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(EvalError) as caught:
        EvalSettings(**options)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_parse_scales_names_the_bad_item() -> None:
    assert parse_scales("-1.5, 0,2") == (-1.5, 0.0, 2.0)
    with pytest.raises(EvalError, match=r"--scales: 'x' is not a number \(in '-1,x,1'\)"):
        parse_scales("-1,x,1")
