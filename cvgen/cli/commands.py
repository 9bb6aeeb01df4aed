"""`cvgen commands` (llama.cpp command lines for a pack) and `cvgen compare` (llama.cpp's
completions at each scale, side by side)."""

from __future__ import annotations

from pathlib import Path

import click

from cvgen.cli.common import one_line_errors
from cvgen.llamacpp.commands import (
    TARGETS,
    build_command,
    combination_advice,
    default_model_path,
    parse_assignment,
    parse_assignment_in,
    preset_selection,
)
from cvgen.llamacpp.compare import (
    DEFAULT_PROMPT,
    ComparePrompt,
    check_pack_fits_model,
    compare_scales,
    format_side_by_side,
)
from cvgen.pack.errors import PackError
from cvgen.pack.manifest import load_manifest
from cvgen.pack.records import PackManifest


@click.command()
@click.argument("pack", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "-s",
    "assignments",
    multiple=True,
    metavar="AXIS=SCALE",
    help="Axis and scale, e.g. language=+0.6 (negative picks the first class); AXIS=+ or "
    "AXIS=- takes the pack's suggested scale of that pole (calibrated by `cvgen eval`). "
    "Repeatable.",
)
@click.option("--preset", default=None, help="A preset stored in the pack's manifest.")
@click.option(
    "--target",
    "targets",
    multiple=True,
    type=click.Choice(TARGETS),
    help="Binary to print a line for (default: llama-server and llama-cli).",
)
@click.option(
    "--legacy-syntax",
    is_flag=True,
    help="Pre-December-2025 llama.cpp: --control-vector-scaled FILE SCALE.",
)
@click.option(
    "--model-path",
    default=None,
    help="Model path for -m (default: the pack's .gguf source, else MODEL.gguf).",
)
@click.option(
    "--vector-dir",
    default=None,
    help="Folder of the GGUF files in the command (default: the pack path).",
)
@click.option(
    "--layer-range",
    nargs=2,
    type=int,
    default=None,
    metavar="START END",
    help="Add --control-vector-layer-range START END (inclusive).",
)
@click.option("--multiline", is_flag=True, help="One option per line, joined with backslashes.")
@one_line_errors
def commands(
    pack: Path,
    assignments: tuple[str, ...],
    preset: str | None,
    targets: tuple[str, ...],
    legacy_syntax: bool,
    model_path: str | None,
    vector_dir: str | None,
    layer_range: tuple[int, int] | None,
    multiline: bool,
) -> None:
    """Print llama.cpp command lines that load a pack's vectors at the chosen scales.

    Each axis loads its __debias file at scale 1 plus the pole file its sign picks, at |scale|.
    """
    manifest = load_manifest(pack)
    data = manifest.to_json()
    selection = preset_selection(data, preset) if preset else []
    given: set[str] = set()
    for text in assignments:
        axis, scale = parse_assignment_in(data, text)
        if axis in given:
            raise click.UsageError(f"--set: axis '{axis}' is given twice")
        given.add(axis)
        # a --set overrides the preset's value for that axis
        selection = [item for item in selection if item[0] != axis] + [(axis, scale)]
    if not selection:
        raise click.UsageError("choose at least one axis with --set AXIS=SCALE or --preset NAME")
    _check_files_exist(pack, manifest, selection)
    model = model_path or default_model_path(data)
    if model.endswith(".gguf") and Path(model).is_file():
        check_pack_fits_model(data, Path(model), pack=pack)
    directory = vector_dir if vector_dir is not None else str(pack)
    for target in targets or ("llama-server", "llama-cli"):
        click.echo(
            build_command(
                data,
                selection,
                target=target,
                model_path=model,
                vector_dir=directory,
                legacy_syntax=legacy_syntax,
                layer_range=layer_range,
                multiline=multiline,
            )
        )
    advice = combination_advice(selection)
    if advice:
        click.echo(advice, err=True)


def _check_files_exist(
    pack: Path, manifest: PackManifest, selection: list[tuple[str, float]]
) -> None:
    """Refuse a selection whose files are not all in the pack folder."""
    for axis, _ in selection:
        record = manifest.axes.get(axis)
        files = record.files.to_json() if record is not None else {}
        for name in files.values():
            if not (pack / name).is_file():
                raise PackError(f"{pack}: file {name} of axis '{axis}' is missing from the pack")


@click.command()
@click.argument("pack", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model",
    type=click.Path(path_type=Path),
    default=None,
    help="The llama.cpp model .gguf (default: the pack's own .gguf source).",
)
@click.option(
    "--axis",
    "axis_names",
    multiple=True,
    help="An axis of the pack to show (repeatable; default: all of them).",
)
@click.option("--prompt", default=DEFAULT_PROMPT, show_default=True, help="The writing prompt.")
@click.option(
    "--scales",
    default="-,0,+",
    show_default=True,
    help="Comma-separated scales, one column each; '-' and '+' are each axis's suggested "
    "scale of that pole (1 until `cvgen eval` calibrates it).",
)
@click.option("--tokens", "-n", default=64, show_default=True, help="Tokens to generate.")
@click.option("--raw", is_flag=True, help="Send the prompt as is, without the chat template.")
@click.option("--width", type=int, default=None, help="Output width (default: the terminal's).")
@one_line_errors
def compare(
    pack: Path,
    model: Path | None,
    axis_names: tuple[str, ...],
    prompt: str,
    scales: str,
    tokens: int,
    raw: bool,
    width: int | None,
) -> None:
    """Show each axis steering: llama.cpp's greedy completions of one prompt at each scale,
    side by side. Needs llama-completion (see scripts/build_llama_cpp.sh)."""
    manifest = load_manifest(pack)
    data = manifest.to_json()
    chosen = list(axis_names) or list(manifest.axes)
    for name in chosen:
        if name not in manifest.axes:
            known = ", ".join(manifest.axes)
            raise click.UsageError(f"--axis: '{name}' is not in the pack (it has: {known})")
    values: list[float | str] = []
    for text in scales.split(","):
        text = text.strip()
        values.append(text if text in ("+", "-") else parse_assignment(f"scale={text}")[1])
    if model is None:
        model = Path(default_model_path(data))
        if not model.is_file():
            raise click.UsageError(
                f"--model: the pack's source {model} is not a file; give --model"
            )
    if tokens < 1:
        raise click.UsageError(f"--tokens: {tokens} must be at least 1")
    results = compare_scales(
        pack,
        data,
        model,
        axes=chosen,
        scales=values,
        prompt=ComparePrompt(prompt, n_predict=tokens, chat=not raw),
        progress=lambda what: click.echo(f"compare: {what}", err=True),
    )
    click.echo(format_side_by_side(results, width=width))
