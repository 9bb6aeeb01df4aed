"""What `cvgen serve` and `cvgen chat` share: the options that pick a pack's steering and the
model it runs on, and their checks, all made before the model loads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from cvgen.llamacpp.commands import default_model_path
from cvgen.llamacpp.compare import check_pack_fits_model
from cvgen.pack.steering import PackSteering, Selection
from cvgen.vectors.model_header import ModelFileInfo

F = TypeVar("F", bound=Callable[..., Any])


def steering_options(
    *, set_help: str, preset_help: str, model_help: str | None = None
) -> Callable[[F], F]:
    """PACK, --model, --set (repeatable), --preset and --allow-unsafe-scales. `model_help`:
    --model's own help, which then also takes a folder (a Hugging Face model)."""

    def decorate(command: F) -> F:
        for option in reversed(
            [
                click.argument("pack", type=click.Path(path_type=Path)),
                click.option(
                    "--model",
                    type=click.Path(path_type=Path, dir_okay=model_help is not None),
                    default=None,
                    help=model_help
                    or "The llama.cpp model .gguf (default: the pack's own .gguf source).",
                ),
                click.option(
                    "--set",
                    "-s",
                    "assignments",
                    multiple=True,
                    metavar="AXIS=SCALE",
                    help=set_help,
                ),  # fmt: skip
                click.option("--preset", default=None, help=preset_help),
                click.option(
                    "--allow-unsafe-scales",
                    is_flag=True,
                    help="Accept scales beyond an axis's calibrated safe scale.",
                ),
            ]
        ):
            command = option(command)
        return command

    return decorate


@dataclass(frozen=True)
class SteeredModel:
    """The pack's steering, the selection the options give, and the checked model file."""

    steering: PackSteering
    selection: Selection
    model: Path
    info: ModelFileInfo


def steered_model(
    pack: Path,
    model: Path | None,
    assignments: tuple[str, ...],
    preset: str | None,
    *,
    allow_unsafe_scales: bool,
) -> SteeredModel:
    """Read the pack (its vectors once), check the --set/--preset selection, and find the
    model (--model, else the pack's .gguf source) and check that the vectors fit it."""
    steering = PackSteering(pack, allow_unsafe_scales=allow_unsafe_scales)
    selection = steering.parse_assignments(assignments, preset)
    if model is None:
        source = default_model_path(steering.data)
        if source == "MODEL.gguf" or not Path(source).is_file():
            raise click.UsageError(
                f"--model: the pack's source {source} is not a .gguf file here; pass --model M.gguf"
            )
        model = Path(source)
    if not model.is_file():
        raise click.UsageError(f"--model: {model} is not a file")
    if model.suffix.lower() != ".gguf":
        raise click.UsageError(f"--model: {model} is not a .gguf file")
    info = check_pack_fits_model(steering.data, model, pack=pack)
    steering.check_model(model, info.n_embd, info.n_layer)
    return SteeredModel(steering, selection, model, info)
