"""`cvgen html` (the pack's command-line page) and `cvgen preset` (add, list, remove)."""

from __future__ import annotations

from pathlib import Path

import click

from cvgen.cli.common import one_line_errors
from cvgen.common.messages import plural
from cvgen.llamacpp.commands import format_scale, parse_assignment, preset_selection
from cvgen.pack.manifest import load_manifest
from cvgen.pack.page import save_manifest_and_page, write_page
from cvgen.pack.records import PackManifest


@click.command("html")
@click.argument("pack", type=click.Path(path_type=Path))
@click.option(
    "--model-path",
    default=None,
    help="Model path the page starts with (default: the pack's .gguf source, else MODEL.gguf).",
)
@click.option(
    "--vector-dir",
    default=None,
    help="Vector folder the page starts with (default: the pack's absolute path).",
)
@one_line_errors
def html_page(pack: Path, model_path: str | None, vector_dir: str | None) -> None:
    """Write PACK/index.html: a self-contained page that builds llama.cpp command lines.

    Open it in any browser (file:// works; it makes no network requests). `cvgen generate`
    writes it too, and the preset commands keep it up to date.
    """
    manifest = load_manifest(pack)
    path = write_page(pack, manifest, model_path=model_path, vector_dir=vector_dir)
    click.echo(
        f"wrote {path}: {plural(len(manifest.axes), 'axis', 'axes')}, "
        f"{plural(len(manifest.preset_names()), 'preset')}"
    )


@click.group()
def preset() -> None:
    """Add, list or remove a pack's presets (named sets of axis scales).

    `cvgen commands PACK --preset NAME` prints a preset's command lines; the pack's index.html
    offers the presets too.
    """


@preset.command("add")
@click.argument("pack", type=click.Path(path_type=Path))
@click.argument("name")
@click.option(
    "--set",
    "-s",
    "assignments",
    multiple=True,
    required=True,
    metavar="AXIS=SCALE",
    help="Axis and scale, as in `cvgen commands`. Repeatable; the order is kept.",
)
@click.option("--replace", is_flag=True, help="Overwrite a preset of the same name.")
@one_line_errors
def preset_add(pack: Path, name: str, assignments: tuple[str, ...], replace: bool) -> None:
    """Store preset NAME in PACK/pack.json and rewrite PACK/index.html."""
    from cvgen.pack.presets import with_preset

    selection = [parse_assignment(text) for text in assignments]
    manifest = with_preset(load_manifest(pack), name, selection, replace=replace)
    save_manifest_and_page(pack, manifest)
    click.echo(f"preset '{name}': {_describe_preset(manifest, name)}")


@preset.command("list")
@click.argument("pack", type=click.Path(path_type=Path))
@one_line_errors
def preset_list(pack: Path) -> None:
    """Print each preset of PACK: NAME: AXIS=SCALE ..."""
    manifest = load_manifest(pack)
    for name in manifest.preset_names():
        click.echo(f"{name}: {_describe_preset(manifest, name)}")


@preset.command("remove")
@click.argument("pack", type=click.Path(path_type=Path))
@click.argument("name")
@one_line_errors
def preset_remove(pack: Path, name: str) -> None:
    """Delete preset NAME from PACK/pack.json and rewrite PACK/index.html."""
    from cvgen.pack.presets import without_preset

    save_manifest_and_page(pack, without_preset(load_manifest(pack), name))
    click.echo(f"removed preset '{name}'")


def _describe_preset(manifest: PackManifest, name: str) -> str:
    """A preset as `AXIS=SCALE ...`, in its order."""
    selection = preset_selection(manifest.to_json(), name)
    return " ".join(f"{axis}={format_scale(scale)}" for axis, scale in selection)
