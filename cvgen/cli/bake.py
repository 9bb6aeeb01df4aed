"""`cvgen bake`: a pack's steering written into a copy of the model (`cvgen.weights`): control
vectors as exact FFN-output biases (--set/--preset), directional enhancement (--enhance)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click
from gguf import GGUFValueType

from cvgen.cli.common import one_line_errors
from cvgen.cli.steered import SteeredModel, steered_model, steering_options
from cvgen.pack.steering import PackSteering
from cvgen.vectors.model_header import read_gguf_layout
from cvgen.weights.bake import bias_tensors, check_bakeable, record_fields
from cvgen.weights.enhance import (
    check_pack_fits,
    enhance_edits,
    enhance_model,
    enhance_record,
    model_shape,
    parse_factors,
)
from cvgen.weights.gguf_copy import Edit, NewTensor, WeightsError
from cvgen.weights.requantise import Requantised, find_llama_quantize, rewrite_gguf_requantised

_BLOCKS = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@click.command()
@steering_options(
    set_help="An axis and its scale to bake in exactly, as `cvgen commands` takes them. "
    "Repeatable.",
    preset_help="A preset of the pack to bake in (then --set over it).",
    model_help="The model: a .gguf (default: the pack's own .gguf source), or, for --enhance "
    "only, a Hugging Face model folder of safetensors files.",
)
@click.option(
    "--enhance",
    "enhancements",
    multiple=True,
    metavar="AXIS=FACTOR",
    help="Directional enhancement: each block's attn_output W becomes W + FACTOR·u(uᵀW) for "
    "the axis's unit direction u (-1 removes the direction: ablation). Repeatable.",
)
@click.option(
    "--blocks",
    default=None,
    metavar="LIST",
    help="Blocks to enhance, e.g. 10-20,24 (default: every block the axis has a vector for).",
)
@click.option("--ffn", is_flag=True, help="Enhance each block's ffn_down as well.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="The new model file (a folder for a Hugging Face model); it must not exist yet.",
)
@one_line_errors
def bake(
    pack: Path,
    model: Path | None,
    assignments: tuple[str, ...],
    preset: str | None,
    allow_unsafe_scales: bool,
    enhancements: tuple[str, ...],
    blocks: str | None,
    ffn: bool,
    out: Path,
) -> None:
    """Write a copy of the model with the pack's steering in its weights.

    --set/--preset: the vectors become biases on each block's FFN output (blk.N.ffn_down.bias,
    added to any bias the model has). In llama.cpp's Llama-family graph that sum meets the
    residual stream where --control-vector-scaled adds the vectors, so any front-end that
    loads the file runs the steered model, up to float32 rounding. Architectures without
    such a slot (Gemma 3) are refused, saying why.

    --enhance: the attention output projections are amplified (or, with -1, stripped) along
    the axis's direction; this works on any architecture and on Hugging Face safetensors
    models. Edited tensors keep their type (K-quants through llama-quantize, else Q8_0).

    Every other tensor is copied byte for byte; `cvgen inspect` shows what was written in.
    """
    if not assignments and preset is None and not enhancements:
        raise click.UsageError("nothing to bake: give --set AXIS=SCALE, --preset NAME or --enhance")
    factors = parse_factors(enhancements)
    chosen_blocks = _parse_blocks(blocks)
    if (blocks is not None or ffn) and not factors:
        raise click.UsageError("--blocks and --ffn choose what --enhance edits; give --enhance")
    started = time.perf_counter()
    if model is not None and (model.is_dir() or model.suffix == ".safetensors"):
        if assignments or preset is not None:
            raise click.UsageError(
                "--set/--preset: the exact bake writes GGUF biases; a Hugging Face model takes "
                "--enhance only (or convert it to GGUF first)"
            )
        steering = PackSteering(pack)
        check_pack_fits(steering, model_shape(model))
        _check_out(out, model)
        done = enhance_model(steering, model, out, factors, blocks=chosen_blocks, ffn=ffn)
        _report(done, "", factors, model, out, started)
        return
    chosen = steered_model(
        pack, model, assignments, preset, allow_unsafe_scales=allow_unsafe_scales
    )
    _check_out(out, chosen.model)
    _bake_gguf(chosen, preset, factors, chosen_blocks, ffn, out, started)


def _bake_gguf(
    chosen: SteeredModel,
    preset: str | None,
    factors: dict[str, float],
    chosen_blocks: list[int] | None,
    ffn: bool,
    out: Path,
    started: float,
) -> None:
    """The biases and the enhancement of a GGUF model, written in one pass."""
    names = {tensor.name for tensor in read_gguf_layout(chosen.model).tensors}
    fields: dict[str, tuple[Any, GGUFValueType]] = {}
    added: dict[str, NewTensor] = {}
    edits: dict[str, Edit] = {}
    baked = ""
    if chosen.selection:
        check_bakeable(chosen.info.architecture, names, chosen.model)
        vectors = chosen.steering.block_vectors(chosen.selection)
        added, edits = bias_tensors(names, vectors)
        text = ",".join(f"{axis}={scale}" for axis, scale in chosen.selection)
        fields.update(record_fields("bake", {
            "pack": chosen.steering.pack.resolve().name,
            "pack_model": str(chosen.steering.manifest.model.name or ""),
            "control_vectors": text, "preset": preset or "",
            "method": "blk.N.ffn_down.bias = bias + sum of scale x direction.N",
        }))  # fmt: skip
        baked = f"{text.replace(',', ' ')} into {len(vectors)} blocks' ffn_down.bias"
    if factors:
        check_pack_fits(chosen.steering, model_shape(chosen.model))
        edits.update(enhance_edits(chosen.steering, factors, form="gguf", tensor_names=names,
                                   blocks=chosen_blocks, ffn=ffn))  # fmt: skip
        fields.update(enhance_record(chosen.steering.pack, factors, chosen_blocks, ffn))
    done = rewrite_gguf_requantised(chosen.model, out, fields=fields, added=added, edits=edits,
                                    llama_quantize=find_llama_quantize())  # fmt: skip
    _report(done, baked, factors, chosen.model, out, started)


def _parse_blocks(text: str | None) -> list[int] | None:
    """`--blocks 10-20,24` as a sorted list of block indices."""
    if text is None:
        return None
    if not _BLOCKS.match(text.replace(" ", "")):
        raise click.UsageError(f"--blocks {text}: expected a list such as 10-20,24")
    chosen: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if last and int(last) < int(first):
            raise click.UsageError(f"--blocks {text}: {part} runs backwards")
        chosen.update(range(int(first), int(last or first) + 1))
    return sorted(chosen)


def _check_out(out: Path, model: Path) -> None:
    """Refuse an --out that is the model or that exists: cvgen writes only a new file."""
    if out.resolve() == model.resolve():
        raise WeightsError(f"--out {out}: it is the input model; choose another file")
    if out.exists():
        raise WeightsError(f"--out {out}: it exists; cvgen writes only a new file")
    if not out.parent.is_dir():
        raise WeightsError(f"--out {out}: folder {out.parent} does not exist")


def _report(
    done: Requantised,
    baked: str,
    factors: dict[str, float],
    model: Path,
    out: Path,
    started: float,
) -> None:
    """What was written: the biases, the enhanced tensors and how each type was stored."""
    parts = [f"baked {baked}"] if baked else []
    if factors:
        shown = " ".join(f"{axis}={factor:g}" for axis, factor in factors.items())
        enhanced = sum(1 for item in done.rewritten if not item.name.endswith(".bias"))
        parts.append(f"enhanced {shown} in {enhanced} tensors")
    click.echo(f"{'; '.join(parts)} of {model.name}: {out} ({time.perf_counter() - started:.1f} s)")
    for line in done.summary():
        if factors:
            click.echo(f"  {line}")
