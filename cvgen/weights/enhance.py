"""Directional enhancement: an axis of a pack written into a model's weights.

**The direction.** A pack's axis has three files per block N (ALGORITHM.md, section 3):
`debias = mid·u`, `positive = (m_B − mid)·u`, `negative = (m_A − mid)·u = −positive`, for the
block's unit direction u (oriented so that the positive class projects positively). llama.cpp
runs an axis at scale s as debias·1 plus the pole file of s's sign at |s|, so the difference
the sign of s switches between is `positive − negative`: that is the axis, and

    u_N = (positive.N − negative.N) / |positive.N − negative.N|

points from the axis's negative class to its positive class (for language: simple -> ornate).
debias (the shift every continuation causes) is not part of the axis. A block with no vector
in the pack, or whose difference is zero, is not edited.

**The edit.** On block N's attention output projection (and, with `ffn`, its FFN down
projection), whose rows are the residual stream's dimensions,

    W' = W + a · u (uᵀ W)

so that the block writes (1 + a) times its old component along u and the rest unchanged:
uᵀ(W'x) = (1 + a)·uᵀ(Wx). a = FACTOR: a > 0 amplifies the axis, −1 < a < 0 damps it, a = −1
removes it (directional ablation: uᵀW' = 0), a = 0 leaves the tensor's bytes as they are. The
edit depends on u only through u uᵀ, so it is the same for u and −u: it scales what the block
writes along the axis, toward whichever pole a given input pushes it. A positive FACTOR thus
amplifies the positive pole where the block writes toward it (and the negative pole where it
writes toward that); it does not push every input toward one pole, as a control vector does.

Row orientation: GGUF stores `blk.N.attn_output.weight` with ggml ne = [n_in, n_embd], and
llama.cpp computes `ggml_mul_mat(W, x)` = Σ_k W[k, i]·x[k] over ne0, so ne1 = n_embd is the
output; cvgen's numpy view reverses ne, giving shape (n_embd, n_in), rows = outputs. Hugging
Face stores `o_proj.weight` / `down_proj.weight` as torch (out, in) = (hidden, in): the same.

**Several axes** in one pass are applied one after another in the pack's axis order (the
order of pack.json), each on the result of the one before: W' = (I + a₂u₂u₂ᵀ)(I + a₁u₁u₁ᵀ)W.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from cvgen import __version__
from cvgen.common.errors import CvgenError
from cvgen.pack.names import ROLES
from cvgen.pack.steering import PackSteering
from cvgen.weights.gguf_copy import Edit, WeightsError
from cvgen.weights.requantise import (
    Requantised,
    find_llama_quantize,
    read_gguf_header,
    rewrite_gguf_requantised,
)
from cvgen.weights.safetensors_copy import rewrite_safetensors, tensors_of

RECORD_NAME = "cvgen-enhance.json"  # what a Hugging Face output folder records

# form -> (attention output projection, FFN down projection) of block {block}
TENSORS = {
    "gguf": ("blk.{block}.attn_output.weight", "blk.{block}.ffn_down.weight"),
    "hf": (
        "model.layers.{block}.self_attn.o_proj.weight",
        "model.layers.{block}.mlp.down_proj.weight",
    ),
}


@dataclass(frozen=True)
class ModelShape:
    """What enhancement needs to know of a model: its form ("gguf" or "hf"), its width and
    depth, the fields they were read from (for messages), and its tensor names."""

    path: Path
    form: str
    n_embd: int
    n_layer: int
    n_embd_field: str
    n_layer_field: str
    tensor_names: frozenset[str]


def model_shape(model: Path) -> ModelShape:
    """The shape of a GGUF file, or of a Hugging Face model (a folder with config.json and
    safetensors files, or one safetensors file beside its config.json)."""
    model = Path(model)
    if model.is_file() and model.suffix != ".safetensors":
        header = read_gguf_header(model)
        arch = str(header.fields.get("general.architecture", ""))
        keys = (f"{arch}.embedding_length", f"{arch}.block_count")
        values = []
        for key in keys:
            value = header.fields.get(key)
            if not isinstance(value, int):
                raise WeightsError(f"--model {model}: metadata field {key} is missing")
            values.append(value)
        return ModelShape(model, "gguf", values[0], values[1], *keys, frozenset(header.tensors))
    config_path = (model.parent if model.is_file() else model) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"--model {model}: cannot read {config_path} ({exc})") from None
    text = config.get("text_config") or config
    fields = ("hidden_size", "num_hidden_layers")
    for name in fields:
        if not isinstance(text.get(name), int):
            raise WeightsError(f"--model {model}: {config_path.name} has no integer {name}")
    names = frozenset(tensors_of(model))
    return ModelShape(model, "hf", text[fields[0]], text[fields[1]], *fields, names)


def check_pack_fits(steering: PackSteering, shape: ModelShape) -> None:
    """Refuse a model whose width or block count the pack's vectors do not fit (one line
    naming the pack file, the model's field and its value)."""
    for name, record in steering.manifest.axes.items():
        axis = steering.axes[name]
        for role, vectors in zip(ROLES, (axis.debias, axis.negative, axis.positive), strict=True):
            for block, vector in vectors.items():
                where = f"--model {shape.path}: pack file {record.files.of(role)}"
                if vector.size != shape.n_embd:
                    raise WeightsError(
                        f"{where} has direction.{block} of {vector.size} floats, but the "
                        f"model's {shape.n_embd_field} is {shape.n_embd}"
                    )
                if block >= shape.n_layer:
                    raise WeightsError(
                        f"{where} has direction.{block}, but the model's {shape.n_layer_field} "
                        f"is {shape.n_layer}"
                    )


def enhance_record(
    pack: Path, factors: Mapping[str, float], blocks: Sequence[int] | None, ffn: bool
) -> dict[str, tuple[str, GGUFValueType]]:
    """The `cvgen.enhance.*` metadata fields that record an enhancement in a GGUF."""
    record = {
        "pack": str(pack),
        "factors": json.dumps({axis: float(f) for axis, f in factors.items()}),
        "blocks": "all" if blocks is None else ",".join(str(b) for b in sorted(set(blocks))),
        "tensors": "attn_output,ffn_down" if ffn else "attn_output",
        "cvgen_version": __version__,
    }
    return {f"cvgen.enhance.{key}": (value, GGUFValueType.STRING) for key, value in record.items()}


def axis_directions(steering: PackSteering, axis: str) -> dict[int, np.ndarray]:
    """block -> the axis's unit direction u_N (float32, n_embd), from its negative pole to its
    positive one (see the module docstring); blocks with a zero difference are left out."""
    if axis not in steering.axes:
        known = ", ".join(steering.axes)
        raise WeightsError(f"--enhance {axis}: unknown axis '{axis}'; the pack has: {known}")
    vectors = steering.axes[axis]
    out: dict[int, np.ndarray] = {}
    for block in sorted(set(vectors.positive) & set(vectors.negative)):
        difference = vectors.positive[block].astype(np.float64) - vectors.negative[block]
        norm = float(np.linalg.norm(difference))
        if norm > 0 and math.isfinite(norm):
            out[block] = (difference / norm).astype(np.float32)
    return out


def enhance_matrix(weight: np.ndarray, direction: np.ndarray, factor: float) -> np.ndarray:
    """W + a·u(uᵀW) in float32: `weight` (rows = residual dimensions, n_embd x n_in), unit
    `direction` u (n_embd), `factor` a."""
    weight = np.asarray(weight, dtype=np.float32)
    u = np.asarray(direction, dtype=np.float32)
    out = np.outer(u, u @ weight)
    out *= np.float32(factor)
    out += weight
    return out


def parse_factors(texts: Sequence[str]) -> dict[str, float]:
    """`--enhance AXIS=FACTOR` texts as axis -> factor (a later one for an axis wins)."""
    factors: dict[str, float] = {}
    for text in texts:
        axis, separator, value = text.partition("=")
        try:
            factor = float(value) if separator and axis else math.nan
        except ValueError:
            factor = math.nan
        if not math.isfinite(factor):
            raise WeightsError(f"--enhance {text}: expected AXIS=FACTOR with a finite number")
        factors.pop(axis, None)
        factors[axis] = factor
    return factors


def enhance_edits(
    pack: Path | PackSteering,
    factors: Mapping[str, float],
    *,
    form: str,
    tensor_names: set[str] | frozenset[str],
    blocks: Sequence[int] | None = None,
    ffn: bool = False,
) -> dict[str, Edit]:
    """The edits (tensor name -> `Edit`) that enhance each axis of `factors` by its factor on
    every block where the axis has a vector (or only on `blocks`): the attention output
    projection, and the FFN down projection with `ffn`. `form` names the tensors ("gguf" or
    "hf"); every tensor to edit must be in `tensor_names`. Axes of factor 0 add no edit."""
    steering = pack if isinstance(pack, PackSteering) else PackSteering(Path(pack))
    if form not in TENSORS:
        raise WeightsError(f"form '{form}' is not one of: {', '.join(TENSORS)}")
    per_axis: dict[str, dict[int, np.ndarray]] = {}
    for axis, factor in factors.items():
        if not math.isfinite(float(factor)):
            raise WeightsError(f"--enhance {axis}={factor}: the factor is not a finite number")
        per_axis[axis] = axis_directions(steering, axis)
    order = [axis for axis in steering.axes if axis in factors and float(factors[axis]) != 0]
    if not order:
        return {}
    covered = sorted({block for axis in order for block in per_axis[axis]})
    chosen = covered if blocks is None else sorted(set(blocks))
    for block in chosen:
        if block not in covered:
            shown = ", ".join(str(b) for b in covered) or "none"
            raise WeightsError(
                f"--blocks {block}: no enhanced axis has a vector for block {block} "
                f"(blocks with one: {shown})"
            )
    names = TENSORS[form][: 2 if ffn else 1]
    edits: dict[str, Edit] = {}
    for block in chosen:
        steps = [(per_axis[a][block], float(factors[a])) for a in order if block in per_axis[a]]
        for pattern in names:
            name = pattern.format(block=block)
            if name not in tensor_names:
                raise WeightsError(f"tensor {name} (to enhance) is not in the model")
            edits[name] = _edit(name, steps)
    return edits


def _edit(name: str, steps: list[tuple[np.ndarray, float]]) -> Edit:
    """An edit applying each (direction, factor) step in order, checking the tensor's rows."""

    def apply(values: np.ndarray) -> np.ndarray:
        if values.ndim != 2 or values.shape[0] != steps[0][0].size:
            raise WeightsError(
                f"tensor {name}: shape {values.shape} has not {steps[0][0].size} rows (the "
                "pack's n_embd) as its output dimension"
            )
        for direction, factor in steps:
            values = enhance_matrix(values, direction, factor)
        return values

    return apply


def enhance_model(
    pack: Path | PackSteering,
    model: Path,
    out: Path,
    factors: Mapping[str, float],
    *,
    blocks: Sequence[int] | None = None,
    ffn: bool = False,
    use_llama_quantize: bool = True,
    threads: int = 0,
) -> Requantised:
    """Write `model` (GGUF file or HF safetensors model) to `out` with `factors` enhanced (see
    `enhance_edits`), after checking that the pack fits it. A GGUF's edited K-quant tensors
    are requantised by llama-quantize when found and `use_llama_quantize`, else stored as
    Q8_0; the result says which."""
    try:
        steering = pack if isinstance(pack, PackSteering) else PackSteering(Path(pack))
    except CvgenError as exc:
        raise WeightsError(str(exc)) from None
    shape = model_shape(model)
    check_pack_fits(steering, shape)
    edits = enhance_edits(
        steering, factors, form=shape.form, tensor_names=shape.tensor_names, blocks=blocks, ffn=ffn
    )
    fields = enhance_record(steering.pack, factors, blocks, ffn)
    if shape.form == "hf":
        record = json.dumps({key: value for key, (value, _) in fields.items()}, indent=2)
        done = rewrite_safetensors(model, out, edits=edits, records={RECORD_NAME: record + "\n"})
        return Requantised(done, frozenset(), None)
    binary = find_llama_quantize() if use_llama_quantize else None
    return rewrite_gguf_requantised(
        model, out, fields=fields, edits=edits, llama_quantize=binary, threads=threads
    )
