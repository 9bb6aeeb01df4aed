"""The settings of `cvgen eval`: one frozen `EvalSettings` decides an evaluation's numbers (it
is recorded in eval.json, and the CLI's options are made from its fields and `SETTING_HELP`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.generate.settings import check_seed

DEFAULT_SCALES = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
# The KL budget (nats per token, unsteered || steered, on neutral factual text); see
# docs/evaluation.md ("The calibrated safe scale") for the measurements behind it.
DEFAULT_KL_BUDGET = 0.1
DEFAULT_REPETITION_TOLERANCE = 0.05


class EvalError(CvgenError, ValueError):
    """Bad evaluation settings or a pack that cannot be evaluated; the message names it."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides an evaluation's numbers (recorded in eval.json)."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    prompts: int = 10
    probe_pairs: int = 3  # 0: every pair in the axis's probes file
    probe_tokens: int = 16  # 0: whole probes
    max_tokens: int = 64
    neutral_texts: int = 8
    kl_tokens: int = 48
    kl_budget: float = DEFAULT_KL_BUDGET
    repetition_tolerance: float = DEFAULT_REPETITION_TOLERANCE
    controls: bool = True
    control_scales: tuple[float, ...] = (-1.0, 1.0)
    calibration_scales: tuple[float, ...] = (2.0, 3.0)
    seed: int = 0
    bootstrap: int = 2000
    top_k: int = 256

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in self.scales)
        object.__setattr__(self, "scales", scales)
        if any(not math.isfinite(s) for s in scales):
            raise EvalError(f"--scales: {list(scales)} holds a value that is not finite")
        if list(scales) != sorted(set(scales)):
            raise EvalError(f"--scales: {list(scales)} must be ascending without repeats")
        if 0.0 not in scales or not any(s < 0 for s in scales) or not any(s > 0 for s in scales):
            raise EvalError(
                f"--scales: {list(scales)} must hold 0 and at least one scale of each sign"
            )
        for name in ("prompts", "max_tokens", "neutral_texts", "kl_tokens", "bootstrap", "top_k"):
            if getattr(self, name) < 1:
                raise EvalError(f"--{name.replace('_', '-')}: {getattr(self, name)} must be >= 1")
        check_seed(self.seed, option="--seed")
        for name in ("probe_pairs", "probe_tokens"):
            if getattr(self, name) < 0:
                raise EvalError(f"--{name.replace('_', '-')}: {getattr(self, name)} must be >= 0")
        calibration = tuple(float(s) for s in self.calibration_scales)
        object.__setattr__(self, "calibration_scales", calibration)
        if list(calibration) != sorted(set(calibration)) or not all(
            math.isfinite(s) and s > max(scales) and -s < min(scales) for s in calibration
        ):
            raise EvalError(
                f"--calibration-scales: {list(calibration)} must be ascending and beyond the "
                f"sweep's largest |scale| on both sides"
            )
        controls = tuple(float(s) for s in self.control_scales)
        object.__setattr__(self, "control_scales", controls)
        if (
            not controls
            or list(controls) != sorted(set(controls))
            or not all(math.isfinite(s) and s != 0 for s in controls)
        ):
            raise EvalError(
                f"--control-scales: {list(controls)} must be non-zero, finite and ascending"
            )
        if not (math.isfinite(self.kl_budget) and self.kl_budget > 0):
            raise EvalError(f"--kl-budget: {self.kl_budget} must be a positive number")
        if not (math.isfinite(self.repetition_tolerance) and self.repetition_tolerance >= 0):
            raise EvalError(f"--repetition-tolerance: {self.repetition_tolerance} must be >= 0")

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> EvalSettings:
        """Settings from CLI option values (`--scales` as comma-separated text)."""
        known = {f.name for f in fields(cls)}
        chosen = {k: v for k, v in values.items() if k in known and v is not None}
        for name in ("scales", "control_scales", "calibration_scales"):
            if isinstance(chosen.get(name), str):
                text = chosen[name].strip()
                chosen[name] = parse_scales(text, option=name) if text else ()
        return cls(**chosen)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["scales"] = list(self.scales)
        return values


SETTING_HELP = {
    "scales": "Comma-separated scales of the sweep (must hold 0 and both signs).",
    "prompts": "Held-out prompts used (from eval/prompts.txt).",
    "probe_pairs": "Probe pairs per axis for the propensity (0: all in the axis's probes file).",
    "probe_tokens": "Tokens of each probe text that are scored (0: the whole text).",
    "control_scales": "Comma-separated scales of the random and negated controls.",
    "calibration_scales": "Comma-separated |scales| beyond the sweep, run on both poles for the "
    "safe scale only (KL and repetition); empty: none.",
    "max_tokens": "Tokens generated (greedy) per prompt and scale.",
    "neutral_texts": "Neutral texts used for the KL divergence (from eval/neutral.json).",
    "kl_tokens": "Tokens of each neutral reply at which the KL divergence is measured.",
    "kl_budget": "KL budget (nats per token) for the safe scale; see docs/evaluation.md.",
    "repetition_tolerance": "How far the repeated-4-gram rate may rise above the unsteered one "
    "within the safe scale.",
    "controls": "Also run the controls (random direction, negated vector).",
    "seed": "Seed of the random control and the bootstrap.",
    "bootstrap": "Bootstrap resamples for the intervals.",
    "top_k": "llama.cpp backend: top-k log-probabilities per position for the KL divergence.",
}


def parse_scales(text: str, *, option: str = "scales") -> tuple[float, ...]:
    """`-1.5,-1,0,1,1.5` -> the scales; a bad item names itself and the option."""
    scales = []
    for item in text.split(","):
        try:
            scales.append(float(item.strip()))
        except ValueError:
            flag = "--" + option.replace("_", "-")
            raise EvalError(f"{flag}: '{item.strip()}' is not a number (in '{text}')") from None
    return tuple(scales)
