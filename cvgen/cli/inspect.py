"""`cvgen inspect` (one control-vector file) and `cvgen axes` (the shipped axes)."""

from __future__ import annotations

from pathlib import Path

import click

from cvgen.cli.common import one_line_errors
from cvgen.data.measured import measured_summary, shipped_tables
from cvgen.data.shipped import load_axis, shipped_axis_names
from cvgen.eval.axis_table import measured_text
from cvgen.solve.methods import AUTO_METHOD, axis_method
from cvgen.vectors.describe import describe_control_vector
from cvgen.vectors.gguf_file import ModelFileGiven
from cvgen.vectors.llamacpp_rules import llamacpp_problems
from cvgen.vectors.model_header import read_model_file_info
from cvgen.weights.describe import describe_written_model


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--n-embd", type=int, default=None, help="Also check the width against this hidden size."
)
@click.option(
    "--n-layer",
    type=int,
    default=None,
    help="Also check the block indices against this block count.",
)
@click.option(
    "--model",
    "model",
    type=click.Path(path_type=Path),
    default=None,
    help="A llama.cpp model .gguf: check the file against its width and block count.",
)
@one_line_errors
def inspect(file: Path, n_embd: int | None, n_layer: int | None, model: Path | None) -> None:
    """Print a control-vector file's metadata and per-block norms.

    A model file cvgen wrote steering into (`cvgen bake`, `cvgen transfer`) is described
    too: its shape and what was written in.

    Exits non-zero, saying why, when llama.cpp would refuse or ignore the file.
    """
    if model is not None:
        info = read_model_file_info(model)
        for flag, given, got in (
            ("--n-embd", n_embd, info.n_embd),
            ("--n-layer", n_layer, info.n_layer),
        ):
            if given is not None and given != got:
                raise click.UsageError(f"{flag} {given} disagrees with {model} ({got})")
        n_embd, n_layer = info.n_embd, info.n_layer
    try:
        problems = llamacpp_problems(file, n_embd=n_embd, n_layer=n_layer)
    except ModelFileGiven:
        written = describe_written_model(file)  # a model cvgen wrote steering into
        if written is None:
            raise
        click.echo(written)
        return
    if problems:
        against = f" with {model}" if model is not None else ""
        raise click.ClickException(
            f"{file}: llama.cpp would refuse this file{against}: {'; '.join(problems)}"
        )
    click.echo(describe_control_vector(file))


@click.command()
@click.option(
    "--measured",
    is_flag=True,
    help="Show the measured table of each model the shipped axes were measured on "
    "(docs/axes.md): propensity slope with its 95% interval, the random and negated controls, "
    "KL and safe scales, and whether the axis steers there.",
)
@click.option(
    "--model",
    "model_name",
    default=None,
    help="With --measured: only the tables of models whose file name contains this text.",
)
@one_line_errors
def axes(measured: bool, model_name: str | None) -> None:
    """List the shipped axes: name, negative and positive class, number of pairs, the solver
    `cvgen generate` uses for each by default, and on which measured models each steers."""
    tables = shipped_tables()
    if model_name is not None and not measured:
        raise click.UsageError("--model goes with --measured")
    if measured:
        chosen = [t for t in tables if model_name is None or model_name.lower() in t.model.lower()]
        if not chosen:
            known = ", ".join(t.model for t in tables) or "none"
            raise click.ClickException(f"--model: no measured table for '{model_name}' ({known})")
        click.echo("\n\n".join(measured_text(table) for table in chosen))
        return
    rows = [load_axis(name) for name in shipped_axis_names()]
    width = max(len(axis.name) for axis in rows)
    click.echo(
        f"{'axis':<{width}}  {'negative':<12} {'positive':<18} pairs  {'method':<16}  measured"
    )
    for axis in rows:
        method = axis_method(AUTO_METHOD, axis.method)  # what `generate` uses by default
        click.echo(
            f"{axis.name:<{width}}  {axis.classes[0]:<12} {axis.classes[1]:<18} "
            f"{len(axis.pairs):<5}  {method:<16}  {measured_summary(axis.name, tables)}"
        )
