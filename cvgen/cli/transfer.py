"""`cvgen transfer`: a donor's diff over a base, ported onto a target model
(`cvgen.weights.transfer`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cvgen.cli.common import one_line_errors
from cvgen.weights.transfer import (
    RATIOS,
    TransferOptionError,
    TransferSettings,
    check_transfer_paths,
    transfer_model,
)


def _model_option(flag: str, text: str) -> Callable[[Any], Any]:
    return click.option(flag, required=True, type=click.Path(path_type=Path), help=text)


@click.command()
@_model_option("--base", "The model both others were made from: a .gguf file, or a folder of "
               ".safetensors files (all three models in one form).")  # fmt: skip
@_model_option("--donor", "The base with what is to be ported (base + what it learned).")
@_model_option("--target", "The model that receives the donor's diff (its own changes are kept).")
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="The new model: a .gguf file, or a new folder. Only a file cvgen transfer wrote is "
    "replaced.",
)
@click.option(
    "--ratio",
    type=click.Choice(RATIOS),
    default="sigmoid",
    show_default=True,
    help="sigmoid: elements the target moved far from the base take less of the diff; none: "
    "the whole diff everywhere (task arithmetic).",
)
@click.option(
    "--steepness", type=float, default=12.0, show_default=True, help="The sigmoid's slope."
)
@click.option("--offset", type=float, default=6.0, show_default=True, help="The sigmoid's shift.")
@one_line_errors
def transfer(
    base: Path, donor: Path, target: Path, out: Path, ratio: str, steepness: float, offset: float
) -> None:
    """Write TARGET + (DONOR - BASE) x (1 - r) per tensor, as a new model at --out.

    r = sigmoid(steepness * x - offset), x = |TARGET - BASE| min-max normalised per tensor (r =
    0 with --ratio none). Names and shapes are checked before anything is written; tensors the
    donor left as the base are copied byte for byte.
    """
    models = {"base": base, "donor": donor, "target": target}
    try:
        settings = TransferSettings(ratio=ratio, steepness=steepness, offset=offset)
        check_transfer_paths(models, out)
    except TransferOptionError as exc:
        raise click.UsageError(str(exc)) from None
    report = transfer_model(models, out, settings)
    for line in report.stored:
        click.echo(f"  {line}")
    click.echo(
        f"wrote {out}: {len(report.changed)} tensors changed, {report.copied} copied "
        f"byte for byte (ratio {ratio}"
        + (f", steepness {steepness:g}, offset {offset:g})" if ratio == "sigmoid" else ")")
    )
