"""The pack's README.md, and the example llama.cpp command line it (and `cvgen generate`) shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvgen.common.messages import (
    longest_backtick_run,
    markdown_code,
    markdown_text,
    measured_parts,
    signed_number,
    slope_interval,
)
from cvgen.data.measured import table_for_model
from cvgen.extract.chat import PLAIN_FORMAT
from cvgen.llamacpp.commands import CommandError, build_command, default_model_path
from cvgen.pack.names import ROLES, SAMPLES_NAME
from cvgen.pack.records import PackManifest


def example_command(manifest: PackManifest, out: Path) -> str:
    """A llama-server command loading the first axis's positive pole at +0.5. When the pack's
    path holds a character that the current FILE:SCALE syntax cannot carry (':' or ','), the
    example uses the legacy two-argument syntax instead."""
    data = manifest.to_json()
    first_axis = next(iter(manifest.axes))
    arguments: dict[str, Any] = dict(
        target="llama-server", model_path=default_model_path(data), vector_dir=str(out)
    )
    try:
        return build_command(data, [(first_axis, 0.5)], **arguments)
    except CommandError:
        legacy = build_command(data, [(first_axis, 0.5)], legacy_syntax=True, **arguments)
        return (
            f"# legacy llama.cpp syntax: the path {out} holds ':' or ',', which the current\n"
            "# FILE:SCALE syntax cannot carry; move the pack or use cvgen commands --vector-dir\n"
            f"{legacy}"
        )


def render_pack_readme(manifest: PackManifest, example_command: str) -> str:
    """The pack's README.md: what it is, its files, and how to load them in llama.cpp.

    Every value taken from the manifest (model name, axis names, classes, descriptions,
    settings) goes through `markdown_text`, so a name like `<script>` or a `|` in a
    description shows as written and cannot add markup or table cells.
    """
    lines = [*_header_lines(manifest), "", "| axis | negative | positive | description | files |"]
    lines.append("|---|---|---|---|---|")
    for name, axis in manifest.axes.items():
        files = ", ".join(f"`{axis.files.of(role)}`" for role in ROLES)  # plain names
        negative, positive = (markdown_text(class_name) for class_name in axis.classes)
        description = markdown_text(axis.description or "")
        lines.append(
            f"| {markdown_text(name)} | {negative} | {positive} | {description} | {files} |"
        )
    lines += _safe_scale_lines(manifest)
    lines += _selection_lines(manifest)
    lines += _shipped_measured_lines(manifest)
    fence = "`" * max(3, longest_backtick_run(example_command) + 1)
    lines += [
        "",
        "Always load an axis's `__debias` file at scale 1, plus ONE of its pole files at the",
        "scale you want (never both poles of one axis). Scale 1 reproduces the average shift of",
        "the pole's prompt; with several axes, keep each |scale| near 1/n to sqrt(1/n).",
        "",
        "Example (`cvgen commands PACK --set AXIS=SCALE` prints others):",
        "",
        f"{fence}sh",
        example_command,
        fence,
        "",
        "Open `index.html` in a browser to build command lines with sliders, presets and the",
        "options above; it works offline, from disk or from any static host.",
        "",
        f"`{SAMPLES_NAME}` lists every drawn sample (stem, writing prompt and, per axis, the",
        "continuation pair), so the run can be audited and reproduced.",
        "",
    ]
    return "\n".join(lines)


def _methods_text(manifest: PackManifest) -> str:
    """The solver: "the `mean-diff` method", or under `auto` each axis's own as the pack
    records it ("each axis's own method (`auto`): person `mean-diff`, language
    `cross-covariance`")."""
    method = manifest.extra["settings"]["method"]
    if method != "auto":
        return f"the {markdown_code(method)} method"
    per_axis = [
        f"{markdown_text(name)} {markdown_code(str(entry.extra.get('method', '?')))}"
        for name, entry in manifest.axes.items()
    ]
    return f"each axis's own method (`auto`): {', '.join(per_axis)},"


def _header_lines(manifest: PackManifest) -> list[str]:
    """The title, how the pack was made, and the notes on blocks, prompts and llama.cpp."""
    md = markdown_text
    model = manifest.model
    settings = manifest.extra["settings"]
    layers = manifest.extra["layers"]
    return [
        f"# Control vectors for {md(model.name)}",
        "",
        f"Made by cvgen {md(manifest.extra['cvgen_version'])} with "
        f"{_methods_text(manifest)} from {md(settings['samples'])} samples per "
        f"class (seed {md(settings['seed'])}), features: {markdown_code(settings['features'])}, blocks {md(layers[0])}..{md(layers[-1])} "
        f"of {md(model.n_layer)} (hidden size {md(model.extra['n_embd'])}).",
        *_engine_line(manifest),
        "",
        "Block k's vector is stored as `direction.k`: llama.cpp adds it to the output of block k.",
        *_prompt_format_line(manifest),
        *_llama_cpp_line(manifest),
    ]


def _engine_line(manifest: PackManifest) -> list[str]:
    """Which engine read the states (packs from before the engine was recorded: nothing)."""
    engine = manifest.extra.get("engine")
    if not isinstance(engine, dict) or "name" not in engine:
        return []
    if engine["name"] == "llama.cpp":
        return [
            "The states were read by llama.cpp itself (the quantised model file, through "
            f"{markdown_text(engine.get('binding', 'llama-cpp-python'))}).",
        ]
    return ["The states were read by transformers (a .gguf model dequantised to float)."]


def _prompt_format_line(manifest: PackManifest) -> list[str]:
    """A note when the prompts were plain text because the model has no chat template."""
    if manifest.prompt_format != PLAIN_FORMAT:
        return []
    return [
        "The model has no chat template, so the prompts were given to it as plain text, not as "
        "chat turns (`prompt_format: plain` in `pack.json`)."
    ]


def _scale_text(record: object, role: str) -> str:
    value = record.get(role) if isinstance(record, dict) else None
    return f"{value:.2f}" if isinstance(value, int | float) else "–"


def _measured_text(record: object) -> str:
    """The slope and verdict that `cvgen eval` stored in an axis's `measured` entry."""
    parts = measured_parts(record)
    if parts is None:
        return "–"
    interval, random_slope, verdict = parts
    return f"{interval}; random {random_slope}; {verdict}"


def _safe_scale_lines(manifest: PackManifest) -> list[str]:
    """The suggested and safe scales and the measured slope that `cvgen eval` stored, if any."""
    rows = [
        f"| {markdown_text(name)} | {_scale_text(axis.extra.get('suggested_scale'), 'negative')}"
        f" / {_scale_text(axis.extra.get('suggested_scale'), 'positive')} | "
        f"{axis.safe_scale.negative:.2f} / {axis.safe_scale.positive:.2f} | "
        f"{markdown_text(_measured_text(axis.extra.get('measured')))} |"
        for name, axis in manifest.axes.items()
        if axis.safe_scale is not None
    ]
    evaluation = manifest.extra.get("evaluation")
    if not rows or not isinstance(evaluation, dict):
        return []
    share = evaluation.get("suggested_kl_share")
    return [
        "",
        f"Measured by `cvgen eval` ({markdown_text(evaluation.get('backend'))} backend, KL "
        f"budget {markdown_text(evaluation.get('kl_budget'))} nats/token; details in "
        "`eval.md`). The suggested scale of a pole is where the KL on neutral text reaches "
        f"{markdown_text(share)} of the budget (`AXIS=+` and `AXIS=-` in `cvgen commands`); stay "
        "within the safe |scale|. Scale 1 is still each pole's own mean shift. An axis steers "
        "when the lower end of its propensity slope's 95% interval is above 0 and above 3 times "
        "the random direction's |slope|.",
        "",
        "| axis | suggested − / + | safe − / + | propensity slope [95% CI]; random; verdict |",
        "|---|---|---|---|",
        *rows,
    ]


def _half(entry: dict[str, Any], half: str) -> str:
    value, width = entry.get(half), entry.get(f"ci95_{half}")
    if not isinstance(value, int | float):
        return "–"
    return f"{value:.3f}" + (f" ±{width:.3f}" if isinstance(width, int | float) else "")


def _selection_lines(manifest: PackManifest) -> list[str]:
    """The choice of `cvgen generate --select` per axis, with both halves' figures."""
    md = markdown_text
    rows = []
    settings: dict[str, Any] = {}
    for name, axis in manifest.axes.items():
        record = axis.extra.get("selection")
        if not isinstance(record, dict):
            continue
        settings = record.get("settings", {})
        picked = record["candidates"][record["picked"]]
        default = record["candidates"].get(record["default"], {})
        blocks = picked["blocks"]
        rows.append(
            f"| {md(name)} | {md(record['picked'])} | {md(blocks[0])}..{md(blocks[-1])} | "
            f"{_half(picked, 'a')} | {_half(picked, 'b')} | {md(record['default'])}: "
            f"{_half(default, 'a')} / {_half(default, 'b')} |"
        )
    if not rows:
        return []
    return [
        "",
        "Each axis's method and blocks were picked by `cvgen generate --select`: the figure is "
        "the propensity change p(+s+) − p(−s−) between the poles' scales where the KL on "
        f"neutral text reaches {md(settings.get('kl_target'))} nats/token. The pick was made on "
        f"half A of {md(settings.get('prompts'))} held-out prompts (even ones); half B (odd "
        "ones) took no part in it. Every candidate's figures are in `pack.json` "
        "(`axes.<name>.selection`).",
        "",
        "| axis | picked | blocks | half A | half B | default: half A / half B |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def _shipped_measured_lines(manifest: PackManifest) -> list[str]:
    """Where cvgen ships a measured table for a model file of this pack's model's name: each
    axis's verdict there, with its numbers ("not measurable on this model" included)."""
    source = manifest.model.source
    table = table_for_model(Path(source).name) if source else None
    rows = []
    for name in manifest.axes:
        row = table.row(name) if table is not None else None
        if row is not None:
            interval = slope_interval(row.slope, row.low, row.high)
            rows.append(
                f"| {markdown_text(name)} | {markdown_code(row.method or '–')} | {interval}; "
                f"random {signed_number(row.random_slope)}; {row.verdict} |"
            )
    if table is None or not rows:
        return []
    return [
        "",
        f"Measured by cvgen on a model file of this name ({markdown_text(table.model)}, "
        f"{markdown_text(table.date)}), from a pack of its own (`cvgen axes --measured`; "
        "docs/axes.md in cvgen's source explains the rule):",
        "",
        "| axis | method | propensity slope [95% CI]; random; verdict |",
        "|---|---|---|",
        *rows,
    ]


def _llama_cpp_line(manifest: PackManifest) -> list[str]:
    record = manifest.llama_cpp
    if not isinstance(record, dict) or not record.get("commit"):
        return []
    commit = markdown_text(str(record["commit"])[:7])
    source = markdown_text(record.get("source", "unknown source"))
    return [
        f"The file format is checked against llama.cpp {commit} ({source}); load them with "
        "`--control-vector-scaled FILE:SCALE` there (llama.cpp before December 2025 took "
        "`FILE SCALE`)."
    ]
