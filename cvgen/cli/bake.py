"""`cvgen bake`: a pack's steering written into a copy of the model (`cvgen.weights`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cvgen.cli.common import one_line_errors
from cvgen.cli.steered import steered_model, steering_options
from cvgen.pack.steering import selection_object
from cvgen.vectors.model_header import read_gguf_layout
from cvgen.weights.bake import bake_vectors, check_bakeable
from cvgen.weights.gguf_copy import WeightsError


@click.command()
@steering_options(
    set_help="An axis and its scale to bake in, as `cvgen commands` takes them. Repeatable.",
    preset_help="A preset of the pack to bake in (then --set over it).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The new model file; it must not exist yet.",
)
@one_line_errors
def bake(
    pack: Path,
    model: Path | None,
    assignments: tuple[str, ...],
    preset: str | None,
    allow_unsafe_scales: bool,
    out: Path,
) -> None:
    """Write a copy of the model that behaves as the model run with the pack's control vectors.

    The vectors of --set/--preset become biases on each block's FFN output
    (blk.N.ffn_down.bias, added to any bias the model has): in llama.cpp's Llama-family graph
    that sum meets the residual stream where --control-vector-scaled adds the vectors, so any
    front-end that loads the file runs the steered model. Every other tensor is copied byte
    for byte. Architectures without such a slot (Gemma 3) are refused, saying why.
    """
    if not assignments and preset is None:
        raise click.UsageError("nothing to bake: give --set AXIS=SCALE or --preset NAME")
    chosen = steered_model(
        pack, model, assignments, preset, allow_unsafe_scales=allow_unsafe_scales
    )
    _check_out(out, chosen.model)
    names = {tensor.name for tensor in read_gguf_layout(chosen.model).tensors}
    check_bakeable(chosen.info.architecture, names, chosen.model)
    scales = selection_object(chosen.selection)
    vectors = chosen.steering.block_vectors(chosen.selection)
    started = time.perf_counter()
    bake_vectors(
        chosen.model,
        out,
        vectors,
        record={
            "pack": str(Path(pack).resolve().name),
            "pack_model": str(chosen.steering.manifest.model.name or ""),
            "control_vectors": ",".join(f"{axis}={text}" for axis, text in chosen.selection),
            "preset": preset or "",
            "method": "blk.N.ffn_down.bias = bias + sum of scale x direction.N",
        },
    )
    shown = " ".join(f"{axis}={scale:g}" for axis, scale in scales.items())
    click.echo(
        f"baked {shown} into {len(vectors)} blocks' ffn_down.bias of {chosen.model.name}: "
        f"{out} ({time.perf_counter() - started:.1f} s); run it as the model, no control "
        "vector flags"
    )


def _check_out(out: Path, model: Path) -> None:
    """Refuse an --out that is the model or that exists: cvgen writes only a new file."""
    if out.resolve() == model.resolve():
        raise WeightsError(f"--out {out}: it is the input model; choose another file")
    if out.exists():
        raise WeightsError(f"--out {out}: it exists; cvgen writes only a new file")
    if not out.parent.is_dir():
        raise WeightsError(f"--out {out}: folder {out.parent} does not exist")
