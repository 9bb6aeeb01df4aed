"""The summaries of an evaluation: eval.json's entry per axis (`cvgen.eval.records.AxisReport`),
from the raw measurements of `cvgen.eval.evaluate.run_evaluation` (propensity with its slope and
band, text statistics, damage, controls, and the calibrated safe scale per pole)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np

from cvgen.eval.calibration import (
    SUGGESTED_KL_SHARE,
    SafeScale,
    calibrate_safe_scale,
    suggested_scale,
)
from cvgen.eval.evaluate import RawResults
from cvgen.eval.inputs import EvalInputs
from cvgen.eval.measurement import Measurement
from cvgen.eval.records import (
    AxisReport,
    Controls,
    ControlSummary,
    Damage,
    DebiasOnly,
    PropensitySummary,
    StatisticSummary,
)
from cvgen.eval.repetition import text_repetition
from cvgen.eval.settings import EvalSettings
from cvgen.eval.statistics import SlopeEstimate, bootstrap_mean_band, bootstrap_slope, spearman
from cvgen.eval.textstats import get_statistic


def summarise_axis(
    axis: str,
    classes: Sequence[str],
    inputs: EvalInputs,
    raw: RawResults,
    settings: EvalSettings,
) -> AxisReport:
    """eval.json's entry for one axis (see the module docstring for what each part means)."""
    scales = list(settings.scales)
    main = [raw.measured[(axis, "axis", s)] for s in scales]
    damage = _damage_summary(axis, raw, settings)
    safe = _safe_scales(damage, settings)
    return AxisReport(
        classes=list(classes),
        scales=scales,
        kl=[_mean(m.kl) for m in main],
        repetition=[_mean_repetition(m.texts) for m in main],
        propensity=_propensity_summary(axis, inputs, raw, settings, main),
        statistics=_statistics_summary(axis, inputs, raw, scales, main),
        controls=_controls_summary(axis, raw, settings, main),
        damage=damage,
        examples={f"{s:g}": (m.texts or [""])[0] for s, m in zip(scales, main, strict=True)},
        safe_scale=safe,
        suggested_scale=_suggested_scales(damage, settings, safe),
    )


def _mean(values: np.ndarray | None) -> float | None:
    return None if values is None or values.size == 0 else float(np.mean(values))


def _mean_repetition(texts: Sequence[str] | None) -> float | None:
    if not texts:
        return None
    return float(np.mean([text_repetition(text) for text in texts]))


def _slope(scales: Sequence[float], values: np.ndarray, settings: EvalSettings) -> SlopeEstimate:
    return bootstrap_slope(
        np.asarray(scales, dtype=np.float64),
        values,
        resamples=settings.bootstrap,
        seed=settings.seed,
    )


def _propensity_summary(
    axis: str,
    inputs: EvalInputs,
    raw: RawResults,
    settings: EvalSettings,
    main: Sequence[Measurement],
) -> PropensitySummary | None:
    probes = inputs.probes.get(axis)
    if probes is None or any(m.propensity is None for m in main):
        return None
    values = np.stack([m.propensity for m in main if m.propensity is not None], axis=1)
    low, high = bootstrap_mean_band(values, resamples=settings.bootstrap, seed=settings.seed)
    return PropensitySummary(
        probe_pairs=len(inputs.probe_ids[axis]),
        prompts=int(values.shape[0]),
        mean=[float(v) for v in values.mean(axis=0)],
        low=[float(v) for v in low],
        high=[float(v) for v in high],
        unsteered=float(np.mean(raw.unsteered_propensity[axis])),
        slope=_slope(settings.scales, values, settings),
    )


def _statistics_summary(
    axis: str,
    inputs: EvalInputs,
    raw: RawResults,
    scales: Sequence[float],
    main: Sequence[Measurement],
) -> dict[str, StatisticSummary]:
    """Each text statistic the axis file names, per scale, with its Spearman correlation."""
    out: dict[str, StatisticSummary] = {}
    for statistic in inputs.statistics.get(axis, ()):
        function = get_statistic(statistic.name).function
        per_scale = [[function(text) for text in (m.texts or [])] for m in main]
        pooled_x = [s for s, values in zip(scales, per_scale, strict=True) for _ in values]
        pooled_y = [v for values in per_scale for v in values]
        out[statistic.name] = StatisticSummary(
            mean=[float(np.mean(values)) if values else None for values in per_scale],
            unsteered=float(np.mean([function(t) for t in raw.unsteered.texts or []])),
            spearman=_finite_or_none(spearman(pooled_x, pooled_y)),
            expected_sign=statistic.expected_sign,
        )
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _controls_summary(
    axis: str, raw: RawResults, settings: EvalSettings, main: Sequence[Measurement]
) -> Controls:
    debias = main[settings.scales.index(0.0)]
    debias_only = DebiasOnly(
        kl=_mean(debias.kl),
        propensity_shift=(
            float(np.mean(debias.propensity) - np.mean(raw.unsteered_propensity[axis]))
            if debias.propensity is not None and axis in raw.unsteered_propensity
            else None
        ),
    )
    if not settings.controls:
        return Controls(debias_only)
    scales = sorted({0.0, *settings.control_scales})
    found: dict[str, ControlSummary] = {}
    for kind in ("random", "negated"):
        runs = [debias if s == 0 else raw.measured.get((axis, kind, s)) for s in scales]
        present = [run for run in runs if run is not None]
        if len(present) == len(runs):
            found[kind] = _control_summary(scales, present, settings)
    return Controls(debias_only, found.get("random"), found.get("negated"))


def _control_summary(
    scales: list[float], runs: Sequence[Measurement], settings: EvalSettings
) -> ControlSummary:
    slope, mean, kl = None, None, None
    if all(run.propensity is not None for run in runs):
        values = np.stack([run.propensity for run in runs if run.propensity is not None], 1)
        slope = _slope(scales, values, settings)
        mean = [float(v) for v in values.mean(axis=0)]
    if all(run.kl is not None for run in runs):
        kl = [_mean(run.kl) for run in runs]
    return ControlSummary(scales, slope, mean, kl)


def _damage_summary(axis: str, raw: RawResults, settings: EvalSettings) -> Damage:
    """KL and repetition at every scale the axis ran at (the sweep and the calibration scales),
    with the repetition's rise over the unsteered model per prompt: its mean and the lower end
    of its 95% bootstrap interval (the safe-scale rule uses that lower end, so that the noise of
    a few greedy generations does not read as damage)."""
    magnitudes = settings.calibration_scales
    scales = sorted({*settings.scales, *magnitudes, *(-m for m in magnitudes)})
    runs = [raw.measured[(axis, "axis", s)] for s in scales]
    unsteered = np.array([text_repetition(t) for t in raw.unsteered.texts or []])
    rise = np.stack(
        [np.array([text_repetition(t) for t in run.texts or []]) - unsteered for run in runs], 1
    )
    low, _ = bootstrap_mean_band(rise, resamples=settings.bootstrap, seed=settings.seed)
    return Damage(
        scales=scales,
        kl=[_mean(run.kl) for run in runs],
        repetition=[_mean_repetition(run.texts) for run in runs],
        repetition_rise=[float(v) for v in rise.mean(axis=0)],
        repetition_rise_low=[float(v) for v in low],
    )


def _pole(damage: Damage, sign: float) -> list[int]:
    """The indices of one pole's scales (0 included), by increasing |scale|."""
    picked = [i for i, s in enumerate(damage.scales) if s == 0 or s * sign > 0]
    return sorted(picked, key=lambda i: abs(damage.scales[i]))


POLES = (("negative", -1.0), ("positive", 1.0))


def _safe_scales(damage: Damage, settings: EvalSettings) -> dict[str, SafeScale]:
    """Per pole, `calibrate_safe_scale` on the KL curve and on the lower bound of the
    repetition's rise (baseline 0, tolerance `repetition_tolerance`)."""
    out = {}
    for role, sign in POLES:
        picked = _pole(damage, sign)
        out[role] = calibrate_safe_scale(
            [abs(damage.scales[i]) for i in picked],
            cast(list[float], [damage.kl[i] for i in picked]),  # every axis run has its KL
            [max(0.0, damage.repetition_rise_low[i]) for i in picked],
            kl_budget=settings.kl_budget,
            repetition_baseline=0.0,
            repetition_tolerance=settings.repetition_tolerance,
        )
    return out


def _suggested_scales(
    damage: Damage, settings: EvalSettings, safe: dict[str, SafeScale]
) -> dict[str, float]:
    """Per pole, the scale where the KL reaches `SUGGESTED_KL_SHARE` of the budget, within the
    safe scale."""
    out = {}
    for role, sign in POLES:
        picked = _pole(damage, sign)
        out[role] = suggested_scale(
            [abs(damage.scales[i]) for i in picked],
            cast(list[float], [damage.kl[i] for i in picked]),
            kl_target=SUGGESTED_KL_SHARE * settings.kl_budget,
            cap=safe[role].scale,
        )
    return out
