"""`cvgen transfer`: port what a donor model learned over a base onto a target of the same
tensor shapes, without training (diff transfer with sigmoid ratios).

Per tensor, in float32: diff = donor - base, d = |target - base|, x = (d - min d) / (max d -
min d) (0 when max = min), r = sigmoid(steepness * x - offset), target' = target + diff * (1 -
r): elements where the target moved far from the base take less of the diff. Ratio "none" is
r = 0 (task arithmetic). A tensor whose diff is exactly 0 keeps the target's bytes. Three GGUF
files or three safetensors folders; names and shapes (a GGUF's architecture and block count)
are checked before anything is written; the target is rewritten tensor by tensor, the base's
and donor's tensors read one at a time in each edit, so memory stays near a few tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from cvgen import __version__
from cvgen.common.errors import CvgenError
from cvgen.vectors.model_header import read_gguf_layout
from cvgen.weights.gguf_copy import CHUNK, Edit, GgufModel, Rewritten, WeightsError, numpy_shape
from cvgen.weights.requantise import find_llama_quantize, rewrite_gguf_requantised
from cvgen.weights.safetensors_copy import (
    FLOAT_DTYPES,
    StoredTensor,
    float_tensor,
    rewrite_safetensors,
    tensor_bytes,
    tensors_of,
)

RATIOS = ("sigmoid", "none")
ROLES = ("base", "donor", "target")  # the order models are named in, and their flags
RECORD_NAME = "cvgen-transfer.json"  # what a safetensors output folder records
FIELD_PREFIX = "cvgen.transfer."
FORM_TEXT = {"gguf": "GGUF file", "safetensors": "folder of safetensors files"}


class TransferOptionError(WeightsError):
    """An option of a transfer that cannot be used (a bad value, a missing or taken path)."""


@dataclass(frozen=True)
class TransferSettings:
    """How the diff is taken: `ratio` "sigmoid" or "none", and the sigmoid's `steepness`
    (> 0) and `offset`, both finite."""

    ratio: str = "sigmoid"
    steepness: float = 12.0
    offset: float = 6.0

    def __post_init__(self) -> None:
        if self.ratio not in RATIOS:
            raise TransferOptionError(f"--ratio: '{self.ratio}' is not one of {', '.join(RATIOS)}")
        if not (math.isfinite(self.steepness) and self.steepness > 0):
            raise TransferOptionError(f"--steepness: {self.steepness} must be finite and > 0")
        if not math.isfinite(self.offset):
            raise TransferOptionError(f"--offset: {self.offset} must be finite")

    def record(self) -> dict[str, str]:
        """The settings as the text recorded in the output."""
        steepness, offset = f"{self.steepness:g}", f"{self.offset:g}"
        return {"ratio": self.ratio, "steepness": steepness, "offset": offset}


def keep_fraction(distance: np.ndarray, settings: TransferSettings) -> np.ndarray:
    """1 - r for `distance` = |target - base| (any shape): r = sigmoid(steepness * x - offset)
    of the min-max normalised distance x (x = 0 when all distances are equal). float32."""
    return _keep_fraction_in_place(np.array(distance, dtype=np.float32), settings)


def _keep_fraction_in_place(x: np.ndarray, settings: TransferSettings) -> np.ndarray:
    """`keep_fraction`, computed in the float32 array `x` (overwritten, and returned)."""
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if high > low:
        x -= np.float32(low)
        x /= np.float32(high - low)
    else:
        x[...] = 0.0
    x *= np.float32(settings.steepness)
    x -= np.float32(settings.offset)
    # 1 - sigmoid(z) = (1 - tanh(z / 2)) / 2: no overflow, however steep the sigmoid
    x *= np.float32(0.5)
    np.tanh(x, out=x)
    np.subtract(np.float32(1.0), x, out=x)
    x *= np.float32(0.5)
    return x


def transfer_values(
    base: np.ndarray, donor: np.ndarray, target: np.ndarray, settings: TransferSettings
) -> np.ndarray | None:
    """The target tensor after the transfer (float32, the target's shape), or None when the
    donor does not differ from the base there (diff exactly 0: keep the target). The inputs
    are left as they are."""
    return _transfer_owned(
        np.array(base, dtype=np.float32), np.array(donor, dtype=np.float32), target, settings
    )


def _transfer_owned(
    base: np.ndarray, donor: np.ndarray, target: np.ndarray, settings: TransferSettings
) -> np.ndarray | None:
    """`transfer_values` computed in the float32 arrays `base` and `donor` (overwritten), so
    that a tensor costs three arrays of its size."""
    diff = np.subtract(donor, base, out=donor)
    if not diff.any():
        return None
    target = np.asarray(target, dtype=np.float32)
    if settings.ratio == "sigmoid":
        distance = np.subtract(target, base, out=base)
        np.abs(distance, out=distance)
        diff *= _keep_fraction_in_place(distance, settings)
    diff += target
    return diff


@dataclass(frozen=True)
class TransferReport:
    """What a transfer wrote: its form ("gguf" or "safetensors"), the tensors changed (each
    with the type it was stored as) and how many kept the target's bytes."""

    form: str
    changed: tuple[Rewritten, ...]
    copied: int
    stored: tuple[str, ...] = ()  # how each type was stored, a line per type (GGUF)


def model_form(path: Path, role: str) -> str:
    """The form of a model: "gguf" (a file) or "safetensors" (a folder of such files)."""
    if not path.exists():
        raise TransferOptionError(f"--{role} {path}: no such file or folder")
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise TransferOptionError(f"--{role} {path}: a folder without .safetensors files")
        return "safetensors"
    if path.suffix == ".safetensors":
        raise TransferOptionError(f"--{role} {path}: give the model's folder, not one file")
    return "gguf"


def check_transfer_paths(models: Mapping[str, Path], out: Path) -> str:
    """Check the three models (`models`: role -> path) and `out` before anything is read;
    returns the models' common form. Raises `TransferOptionError` naming the option."""
    forms = {role: model_form(Path(models[role]), role) for role in ROLES}
    for role in ROLES[1:]:
        if forms[role] != forms["base"]:
            raise TransferOptionError(
                f"--{role} {models[role]} is a {FORM_TEXT[forms[role]]} but --base "
                f"{models['base']} is a {FORM_TEXT[forms['base']]}; give all three in one form"
            )
    out = Path(out)
    for role in ROLES:
        if out.resolve() == Path(models[role]).resolve():
            raise TransferOptionError(f"--out {out}: it is the --{role} model; choose another path")
    if not out.parent.resolve().is_dir():
        raise TransferOptionError(f"--out {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise TransferOptionError(f"--out {out}: it is an existing folder; choose a new path")
    if out.exists() and (forms["base"] == "safetensors" or not _written_by_transfer(out)):
        raise TransferOptionError(
            f"--out {out}: it exists and is not a cvgen transfer output; choose a new path"
        )
    return forms["base"]


def _written_by_transfer(path: Path) -> bool:
    """Whether `path` is a GGUF that `cvgen transfer` wrote (so replacing it loses nothing)."""
    try:
        return any(name.startswith(FIELD_PREFIX) for name in read_gguf_layout(path).fields)
    except CvgenError:
        return False


def transfer_model(
    models: Mapping[str, Path], out: Path, settings: TransferSettings
) -> TransferReport:
    """Write `out`: the target (`models["target"]`) with the donor's diff over the base taken
    as `settings` says, every tensor whose diff is 0 copied byte for byte. The paths and all
    names and shapes are checked first; nothing is written when a check fails."""
    form = check_transfer_paths(models, out)
    paths = {role: Path(models[role]) for role in ROLES}
    if form == "gguf":
        return _transfer_gguf(paths, Path(out), settings)
    return _transfer_safetensors(paths, Path(out), settings)


def _record(paths: Mapping[str, Path], settings: TransferSettings) -> dict[str, str]:
    """What the output records: the three models' file names, the settings, cvgen's version."""
    names = {role: paths[role].name for role in ROLES}
    return names | settings.record() | {"cvgen_version": __version__}


# --- GGUF --------------------------------------------------------------------------------------


def _open_gguf(path: Path, role: str) -> GgufModel:
    try:
        return GgufModel(path)
    except CvgenError as exc:
        raise WeightsError(f"--{role} {path}: not a GGUF model ({exc})") from None


def _gguf_header(model: GgufModel) -> tuple[str, int | None]:
    """A model GGUF's architecture and block count (None when it has none)."""
    architecture = str(model.layout.fields.get("general.architecture", "(none)"))
    blocks = model.layout.fields.get(f"{architecture}.block_count")
    return architecture, blocks if isinstance(blocks, int) else None


def check_same_tensors(
    shapes: Mapping[str, Mapping[str, tuple[int, ...]]], paths: Mapping[str, Path]
) -> None:
    """Raise on the first tensor that is missing from a model or differs in shape: `shapes`
    maps role -> tensor name -> shape, in the target's tensor order."""
    for name, shape in shapes["target"].items():
        for role in ("base", "donor"):
            other = shapes[role].get(name)
            if other is None:
                raise WeightsError(
                    f"tensor {name} is in --target {paths['target']} but not in "
                    f"--{role} {paths[role]}"
                )
            if other != shape:
                raise WeightsError(
                    f"tensor {name}: shape {list(other)} in --{role} {paths[role]} but "
                    f"{list(shape)} in --target {paths['target']}; the models must have "
                    "identical shapes"
                )
    for role in ("base", "donor"):
        extra = [name for name in shapes[role] if name not in shapes["target"]]
        if extra:
            raise WeightsError(
                f"tensor {extra[0]} is in --{role} {paths[role]} but not in "
                f"--target {paths['target']}"
            )


def _check_gguf(models: Mapping[str, GgufModel], paths: Mapping[str, Path]) -> None:
    """The architecture, block count, tensor names and shapes of the three GGUFs agree."""
    headers = {role: _gguf_header(model) for role, model in models.items()}
    for role in ("donor", "target"):
        if headers[role] != headers["base"]:
            (arch, blocks), (base_arch, base_blocks) = headers[role], headers["base"]
            raise WeightsError(
                f"--{role} {paths[role]} is a '{arch}' model of {blocks} blocks but --base "
                f"{paths['base']} is '{base_arch}' of {base_blocks}; the models must have "
                "identical shapes"
            )
    shapes = {
        role: {name: numpy_shape(entry.dims) for name, entry in model.tensors.items()}
        for role, model in models.items()
    }
    check_same_tensors(shapes, paths)


class _GGUFSources:
    """The base's and donor's tensors, by name, read one at a time."""

    def __init__(self, models: Mapping[str, GgufModel]):
        self.base, self.donor = models["base"], models["donor"]

    def differs(self, name: str) -> bool:
        """Whether the donor's `name` differs from the base's (its type, or its bytes)."""
        base, donor = self.base.tensors[name], self.donor.tensors[name]
        if base.kind != donor.kind:
            return True
        for offset in range(0, base.nbytes, CHUNK):
            size = min(CHUNK, base.nbytes - offset)
            if self.base.read(base.start + offset, size) != self.donor.read(
                donor.start + offset, size
            ):
                return True
        return False

    def edit(self, name: str, settings: TransferSettings) -> Edit:
        """The edit of the target's `name`: the base's and donor's values read in it."""

        def apply(target: np.ndarray) -> np.ndarray | None:
            base, donor = self.base.values(name), self.donor.values(name)
            return _transfer_owned(base, donor, target, settings)

        return apply


def _transfer_gguf(
    paths: Mapping[str, Path], out: Path, settings: TransferSettings
) -> TransferReport:
    models = {role: _open_gguf(paths[role], role) for role in ROLES}
    try:
        _check_gguf(models, paths)
        sources = _GGUFSources(models)
        # only tensors whose bytes the donor changed are edited: the others are neither read
        # as float32 nor requantised
        target = models["target"]
        edits = {
            name: sources.edit(name, settings) for name in target.tensors if sources.differs(name)
        }
        total = len(target.tensors)
        record = _record(paths, settings).items()
        fields = {FIELD_PREFIX + key: (value, GGUFValueType.STRING) for key, value in record}
        done = rewrite_gguf_requantised(paths["target"], out, fields=fields, edits=edits,
                                        llama_quantize=find_llama_quantize())  # fmt: skip
    finally:
        for model in models.values():
            model.close()
    changed = tuple(done.rewritten)
    return TransferReport("gguf", changed, total - len(changed), tuple(done.summary()))


# --- safetensors -------------------------------------------------------------------------------


def _hf_config(folder: Path) -> tuple[Any, Any] | None:
    """A folder's config.json architectures and block count, or None without one."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return config.get("architectures"), config.get("num_hidden_layers")


def _check_safetensors(
    tensors: Mapping[str, Mapping[str, StoredTensor]], paths: Mapping[str, Path]
) -> None:
    """config.json (where all have one), tensor names, shapes and non-float tensors agree."""
    configs = {role: _hf_config(paths[role]) for role in ROLES}
    if all(config is not None for config in configs.values()):
        for role in ("donor", "target"):
            if configs[role] != configs["base"]:
                raise WeightsError(
                    f"--{role} {paths[role]}: config.json gives architectures and "
                    f"num_hidden_layers {configs[role]}, --base {paths['base']} "
                    f"{configs['base']}; the models must have identical shapes"
                )
    ordered = sorted(tensors["target"].values(), key=lambda t: (t.file.name, t.start))
    shapes = {"target": {t.name: t.shape for t in ordered}} | {
        role: {name: t.shape for name, t in tensors[role].items()} for role in ("base", "donor")
    }
    check_same_tensors(shapes, paths)
    for name, tensor in tensors["target"].items():
        base, donor = tensors["base"][name], tensors["donor"][name]
        if tensor.dtype not in FLOAT_DTYPES and not _same_bytes(base, donor):
            raise WeightsError(
                f"tensor {name}: dtype {tensor.dtype} is not F32, F16 or BF16, and --donor "
                f"{paths['donor']} differs from --base {paths['base']} there"
            )


def _same_bytes(base: StoredTensor, donor: StoredTensor) -> bool:
    return base.dtype == donor.dtype and np.array_equal(tensor_bytes(base), tensor_bytes(donor))


def _safetensors_edit(base: StoredTensor, donor: StoredTensor, settings: TransferSettings) -> Edit:
    def apply(target: np.ndarray) -> np.ndarray | None:
        return _transfer_owned(float_tensor(base), float_tensor(donor), target, settings)

    return apply


def _transfer_safetensors(
    paths: Mapping[str, Path], out: Path, settings: TransferSettings
) -> TransferReport:
    tensors = {role: tensors_of(paths[role]) for role in ROLES}
    _check_safetensors(tensors, paths)
    edits = {
        name: _safetensors_edit(tensors["base"][name], tensors["donor"][name], settings)
        for name, tensor in tensors["target"].items()
        if tensor.dtype in FLOAT_DTYPES
        and not _same_bytes(tensors["base"][name], tensors["donor"][name])
    }
    record = json.dumps(_record(paths, settings), indent=2) + "\n"
    changed = rewrite_safetensors(paths["target"], out, edits=edits, records={RECORD_NAME: record})
    return TransferReport("safetensors", tuple(changed), len(tensors["target"]) - len(changed))
