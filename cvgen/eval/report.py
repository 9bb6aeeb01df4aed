"""The evaluation's outputs: `eval.md` (a readable summary) and one PNG per axis (effect vs
scale with its bootstrap band, and KL vs scale with the controls)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cvgen.common.messages import markdown_code, markdown_text
from cvgen.eval.calibration import SUGGESTED_KL_SHARE, SafeScale
from cvgen.eval.records import (
    AxisReport,
    Controls,
    ControlSummary,
    Damage,
    EvalReport,
    StatisticSummary,
)
from cvgen.eval.statistics import SlopeEstimate
from cvgen.pack.names import EVAL_PLOT_NAME as PLOT_NAME  # defined with the other pack files
from cvgen.pack.names import safe_name

md = markdown_text


def plot_name(axis: str) -> str:
    """The file name of an axis's plot: `eval-<axis>.png`, the axis name reduced to
    [A-Za-z0-9._-] so that no name (`../x`) can place it outside the pack."""
    return PLOT_NAME.format(axis=safe_name(axis))


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _slope_text(slope: SlopeEstimate | None) -> str:
    if not slope:
        return "n/a"
    return f"{slope.slope:+.3f} [{slope.low:+.3f}, {slope.high:+.3f}]"


def _control_slope(control: ControlSummary | None) -> SlopeEstimate | None:
    return control.slope if control is not None else None


def _statistics_text(statistics: Mapping[str, StatisticSummary]) -> str:
    if not statistics:
        return "none fits"
    return "; ".join(
        f"{name} ρ={_signed(entry.spearman, 2)} (expected {'+' if entry.expected_sign > 0 else '−'})"
        for name, entry in statistics.items()
    )


def _safe_text(safe: Mapping[str, SafeScale]) -> str:
    return " / ".join(
        f"{safe[role].scale:.2f} ({safe[role].limited_by})" for role in ("negative", "positive")
    )


def summary_table(report: EvalReport) -> list[str]:
    """The one-line-per-axis summary table of eval.md."""
    lines = [
        "| axis (− / +) | propensity slope [95% CI] | wrong sign | text statistics | "
        "KL at min / max scale | repetition at min / max (unsteered) | safe scale − / + | "
        "random slope | negated slope |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = report.unsteered.repetition
    for name, axis in report.axes.items():
        slope = axis.propensity.slope if axis.propensity else None
        controls = axis.controls
        lines.append(
            f"| {md(name)} ({md(axis.classes[0])} / {md(axis.classes[1])}) | {_slope_text(slope)} | "
            f"{_number(slope.wrong_sign_fraction, 2) if slope else 'n/a'} | "
            f"{_statistics_text(axis.statistics)} | "
            f"{_number(axis.kl[0])} / {_number(axis.kl[-1])} | "
            f"{_number(axis.repetition[0])} / {_number(axis.repetition[-1])} "
            f"({_number(baseline)}) | {_safe_text(axis.safe_scale)} | "
            f"{_slope_text(_control_slope(controls.random))} | "
            f"{_slope_text(_control_slope(controls.negated))} |"
        )
    return lines


def _axis_section(name: str, axis: AxisReport, report: EvalReport) -> list[str]:
    propensity = axis.propensity
    statistics = axis.statistics
    header = ["scale", "propensity [95% band]", *statistics, "KL", "repetition"]
    lines = [
        f"## {md(name)}: {md(axis.classes[0])} (−) vs {md(axis.classes[1])} (+)",
        "",
        f"![{md(name)}]({plot_name(name)})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for index, scale in enumerate(axis.scales):
        cells = [f"{scale:+g}"]
        if propensity:
            cells.append(
                f"{propensity.mean[index]:+.3f} [{propensity.low[index]:+.3f}, "
                f"{propensity.high[index]:+.3f}]"
            )
        else:
            cells.append("n/a")
        cells += [_number(entry.mean[index]) for entry in statistics.values()]
        cells += [_number(axis.kl[index]), _number(axis.repetition[index])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _damage_lines(axis.damage)
    lines += _controls_lines(axis.controls)
    lines += _axis_notes(axis, report)
    for label, text in axis.examples.items():
        lines.append(f"- **{float(label):+g}**: {_quote(text, 300)}")
    lines.append("")
    return lines


def _suggested_line(axis: AxisReport, budget: float) -> list[str]:
    suggested = axis.suggested_scale
    if not suggested:
        return []
    return [
        f"- Suggested scale (negative / positive): {suggested['negative']:.2f} / "
        f"{suggested['positive']:.2f}, where the KL reaches {SUGGESTED_KL_SHARE:g} of the budget "
        f"({SUGGESTED_KL_SHARE * budget:g} nats/token), within the safe scale; scale 1 stays each "
        "pole's own mean shift."
    ]


def _axis_notes(axis: AxisReport, report: EvalReport) -> list[str]:
    """The lines under an axis's tables: unsteered values, the debias file, the safe scale."""
    propensity, statistics, settings = axis.propensity, axis.statistics, report.settings
    debias = axis.controls.debias_only
    return [
        "",
        f"- Unsteered: propensity {_signed(propensity.unsteered) if propensity else 'n/a'}, "
        + ", ".join(f"{stat} {_number(entry.unsteered)}" for stat, entry in statistics.items())
        + f"{', ' if statistics else ''}repetition {_number(report.unsteered.repetition)}.",
        f"- Debias file alone: KL {_number(debias.kl)}, propensity shift "
        f"{_signed(debias.propensity_shift)}.",
        f"- Safe scale (negative / positive): {_safe_text(axis.safe_scale)}; KL budget "
        f"{settings.kl_budget} nats/token, and the repetition's rise over the "
        f"unsteered model not clearly above {settings.repetition_tolerance} "
        "(its 95% lower bound), judged on the sweep and the calibration scales "
        f"{', '.join(f'±{s:g}' for s in settings.calibration_scales) or 'none'}.",
        *_suggested_line(axis, settings.kl_budget),
        "",
        "Greedy output for the first prompt (" + _quote(report.prompts[0]) + "):",
        "",
    ]


def _damage_lines(damage: Damage) -> list[str]:
    """KL and repetition at every scale run (the sweep and the calibration scales)."""
    lines = [
        "",
        "| scale | KL | repetition | rise over unsteered | rise, 95% lower bound |",
        "|---|---|---|---|---|",
    ]
    for index, scale in enumerate(damage.scales):
        lines.append(
            f"| {scale:+g} | {_number(damage.kl[index])} | "
            f"{_number(damage.repetition[index])} | "
            f"{_signed(damage.repetition_rise[index])} | "
            f"{_signed(damage.repetition_rise_low[index])} |"
        )
    return lines


def _controls_lines(controls: Controls) -> list[str]:
    """A small table of the random and negated controls at their scales."""
    present = [(kind, entry) for kind, entry in _control_entries(controls) if entry is not None]
    if not present:
        return []
    lines = ["", "| control | scale | propensity | KL |", "|---|---|---|---|"]
    for kind, entry in present:
        for index, scale in enumerate(entry.scales):
            mean = entry.mean
            kl = entry.kl
            lines.append(
                f"| {kind} | {scale:+g} | {_signed(mean[index]) if mean else 'n/a'} | "
                f"{_number(kl[index]) if kl else 'n/a'} |"
            )
    return lines


def _control_entries(controls: Controls) -> list[tuple[str, ControlSummary | None]]:
    return [("random", controls.random), ("negated", controls.negated)]


def _quote(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render_markdown(report: EvalReport) -> str:
    """eval.md: how the run was made, the summary table, then one section per axis."""
    settings = report.settings
    lines = [
        f"# Evaluation of {md(report.pack_name)}",
        "",
        f"cvgen {report.cvgen_version}, backend **{report.backend}**, model "
        f"{markdown_code(report.model)}; {len(report.prompts)} held-out prompts, "
        f"{settings.max_tokens} generated tokens each, {report.neutral_positions} neutral "
        f"KL positions, scales {', '.join(f'{s:+g}' for s in settings.scales)}. "
        f"Wall time {report.seconds:.0f} s (estimated {report.estimate_seconds:.0f} s "
        "after the unsteered run).",
        "",
        "Propensity: mean per-token log p(positive-pole probe) − log p(negative-pole probe); "
        "its slope against scale should be positive, the random direction's near 0 and the "
        "negated vector's negative. KL: mean per-token KL(unsteered ‖ steered) in nats on neutral "
        "text. Repetition: the share of repeated 4-grams in the generations.",
        "",
        *summary_table(report),
        "",
    ]
    for name, axis in report.axes.items():
        lines += _axis_section(name, axis, report)
    return "\n".join(lines)


def write_plots(report: EvalReport, folder: Path) -> list[Path]:
    """One PNG per axis: propensity vs scale with its band (and the controls), KL vs scale.
    Each file is written to a temporary name and renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, axis in report.axes.items():
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        _plot_effect(left, axis)
        _plot_kl(right, axis, report.settings.kl_budget)
        figure.suptitle(f"{name}: {axis.classes[0]} (−) vs {axis.classes[1]} (+)")
        figure.tight_layout()
        path = folder / plot_name(name)
        temporary = path.with_name(f".{path.name}.part")
        figure.savefig(temporary, format="png", dpi=100)
        plt.close(figure)
        temporary.replace(path)
        written.append(path)
    return written


def _plot_effect(axes: Any, axis: AxisReport) -> None:
    scales = axis.scales
    propensity = axis.propensity
    axes.set_xlabel("scale")
    if not propensity:
        axes.set_title("no probes for this axis")
        return
    axes.fill_between(scales, propensity.low, propensity.high, alpha=0.25, label="95% band")
    axes.plot(scales, propensity.mean, marker="o", label="axis")
    for (kind, entry), style in zip(_control_entries(axis.controls), ("--", ":"), strict=True):
        if entry is not None and entry.mean is not None:
            axes.plot(
                entry.scales, entry.mean, linestyle=style, marker=".", label=f"{kind} control"
            )
    axes.axhline(propensity.unsteered, color="grey", linewidth=0.8, label="unsteered")
    axes.set_ylabel("propensity (nats/token)")
    axes.set_title("effect")
    axes.legend(fontsize=8)


def _plot_kl(axes: Any, axis: AxisReport, budget: float) -> None:
    damage = axis.damage
    axes.plot(damage.scales, _finite(damage.kl), marker="o", label="axis")
    random = axis.controls.random
    if random is not None and random.kl:
        axes.plot(
            random.scales,
            _finite(random.kl),
            linestyle="--",
            marker=".",
            label="random control",
        )
    axes.axhline(budget, color="red", linewidth=0.8, label=f"budget {budget:g}")
    safe = axis.safe_scale
    for role, sign in (("negative", -1), ("positive", 1)):
        axes.axvline(sign * safe[role].scale, color="green", linewidth=0.8, linestyle=":")
    axes.set_xlabel("scale")
    axes.set_ylabel("KL (nats/token)")
    axes.set_title("damage on neutral text (green: safe scale)")
    axes.legend(fontsize=8)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]
