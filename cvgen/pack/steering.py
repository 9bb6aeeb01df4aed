"""A pack's control vectors, read once, as per-request steering: a request's `control_vectors`
and `preset` become one checked selection, and a selection becomes the block vectors that
`llama_set_adapter_cvec` takes.

A selection follows `cvgen commands` exactly (`cvgen.llamacpp.commands`): each axis loads its
debias file at scale 1 plus the pole file that the sign of its scale, rounded to 2 decimals,
picks, at the rounded |scale|; a scale that rounds to 0 loads the debias file only. The vectors
are summed in float32 in that order, as llama.cpp sums the files of
`--control-vector-scaled`. So a request steered at `{"language": 0.6}` runs the model exactly as
the `llama-server` line `cvgen commands PACK --set language=0.6` prints.

Every file is read at start-up; a request names axes and presets of the pack, never a path.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.llamacpp.commands import (
    CommandError,
    format_scale,
    parse_assignment_in,
    preset_selection,
)
from cvgen.pack.manifest import load_manifest
from cvgen.pack.names import ROLES
from cvgen.pack.records import PackManifest
from cvgen.vectors.control_vector import ControlVector

Selection = tuple[tuple[str, str], ...]  # (axis, rounded scale text) pairs, in request order
_SCALE_LIMIT = 1e21  # what `cvgen commands` formats
CACHED_SELECTIONS = 16  # the summed vectors of the last selections, kept (least recent out)


class SteeringError(CvgenError, ValueError):
    """A request's (or the start-up's) steering that the pack cannot give. `field` names the
    request field at fault (e.g. "control_vectors.language")."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class AxisVectors:
    """One axis's three vectors (block -> float32) and its calibrated safe scale."""

    debias: dict[int, np.ndarray]
    negative: dict[int, np.ndarray]
    positive: dict[int, np.ndarray]
    safe_negative: float | None
    safe_positive: float | None


class PackSteering:
    """The pack at `pack`, its files read now; see the module docstring."""

    def __init__(self, pack: Path, *, allow_unsafe_scales: bool = False):
        self.pack = Path(pack)
        self.manifest: PackManifest = load_manifest(self.pack)
        self.data = self.manifest.to_json()
        self.allow_unsafe_scales = allow_unsafe_scales
        self.axes: dict[str, AxisVectors] = {}
        for name, record in self.manifest.axes.items():
            read = {}
            for role in ROLES:
                path = self.pack / record.files.of(role)
                if not path.is_file():
                    raise CvgenError(f"{self.pack}: file {path.name} of axis '{name}' is missing")
                read[role] = {
                    block: np.asarray(vector, dtype=np.float32)
                    for block, vector in ControlVector.from_gguf(path).directions.items()
                }
            safe = record.safe_scale
            self.axes[name] = AxisVectors(
                read["debias"],
                read["negative"],
                read["positive"],
                float(safe.negative) if safe else None,
                float(safe.positive) if safe else None,
            )
        self._cache: OrderedDict[Selection, dict[int, np.ndarray]] = OrderedDict()

    def check_model(self, path: Path, n_embd: int, n_layer: int) -> None:
        """Refuse a model whose width or depth the pack's vectors do not fit."""
        for name, axis in self.axes.items():
            for role, vectors in zip(
                ROLES, (axis.debias, axis.negative, axis.positive), strict=True
            ):
                for block, vector in vectors.items():
                    if vector.size != n_embd or not 1 <= block < n_layer:
                        raise CvgenError(
                            f"--model {path}: axis '{name}' {role} file has direction.{block} "
                            f"of {vector.size} floats, but the model has n_embd {n_embd} and "
                            f"blocks 1..{n_layer - 1}"
                        )

    # --- selections --------------------------------------------------------------------------

    def select(
        self, control_vectors: Any = None, preset: Any = None, *, default: Selection = ()
    ) -> Selection:
        """The selection of a request: `preset`'s scales, then `control_vectors` (an object of
        axis -> number) over them, axis by axis. Neither given: `default`. An empty object
        selects no steering at all. Raises `SteeringError` naming the field."""
        if control_vectors is None and preset is None:
            return default
        pairs: dict[str, float] = {}
        if preset is not None:
            if not isinstance(preset, str):
                raise SteeringError("preset", f"{_shown(preset)} is not a preset name")
            try:
                pairs.update(preset_selection(self.data, preset))
            except CommandError as exc:
                raise SteeringError("preset", str(exc)) from None
        if control_vectors is not None:
            if not isinstance(control_vectors, Mapping):
                raise SteeringError(
                    "control_vectors",
                    f"{_shown(control_vectors)} is not an object of axis names and scales",
                )
            for axis, scale in control_vectors.items():
                pairs.pop(axis, None)  # the request's own order after the preset's
                pairs[axis] = self._checked_number(axis, scale)
        return self.checked(pairs.items())

    def parse_assignments(self, assignments: tuple[str, ...], preset: str | None) -> Selection:
        """The start-up default: `--preset` then each `--set AXIS=SCALE` over it."""
        pairs: dict[str, float] = {}
        if preset:
            try:
                pairs.update(preset_selection(self.data, preset))
            except CommandError as exc:
                raise SteeringError("--preset", str(exc)) from None
        for text in assignments:
            try:
                axis, scale = parse_assignment_in(self.data, text)
            except CommandError as exc:
                raise SteeringError("--set", str(exc)) from None
            pairs.pop(axis, None)
            pairs[axis] = scale
        return self.checked(pairs.items(), field="--set")

    def _checked_number(self, axis: str, scale: Any) -> float:
        field = f"control_vectors.{axis}"
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise SteeringError(field, f"{_shown(scale)} is not a number")
        value = float(scale)
        if not math.isfinite(value) or abs(value) >= _SCALE_LIMIT:
            raise SteeringError(field, f"{_shown(scale)} is not a finite number below 1e21")
        return value

    def checked(self, pairs: Any, *, field: str = "control_vectors") -> Selection:
        """(axis, scale) pairs as a `Selection`: known axes only, each scale within the axis's
        safe scale unless unsafe scales are allowed."""
        out = []
        for axis, scale in pairs:
            where = f"{field}.{axis}" if field == "control_vectors" else field
            if axis not in self.axes:
                raise SteeringError(
                    where, f"unknown axis '{axis}'; the pack has: {', '.join(self.axes)}"
                )
            rounded = format_scale(scale)
            limits = self.axes[axis]
            limit = limits.safe_positive if float(rounded) > 0 else limits.safe_negative
            if not self.allow_unsafe_scales and limit is not None and abs(float(rounded)) > limit:
                pole = "positive" if float(rounded) > 0 else "negative"
                raise SteeringError(
                    where,
                    f"scale {rounded} of axis '{axis}' is beyond its safe {pole} scale "
                    f"{format_scale(limit)}; it is refused unless --allow-unsafe-scales is given",
                )
            out.append((axis, rounded))
        return tuple(out)

    # --- vectors -----------------------------------------------------------------------------

    def block_vectors(self, selection: Selection) -> dict[int, np.ndarray]:
        """block -> the float32 sum llama.cpp would add for `selection` (empty: none)."""
        if selection in self._cache:
            self._cache.move_to_end(selection)
            return self._cache[selection]
        total: dict[int, np.ndarray] = {}

        def add(vectors: dict[int, np.ndarray], scale: np.float32) -> None:
            for block, vector in vectors.items():
                scaled = vector * scale
                total[block] = total[block] + scaled if block in total else scaled

        for axis, rounded in selection:
            vectors = self.axes[axis]
            add(vectors.debias, np.float32(1.0))
            value = float(rounded)
            if value != 0:
                pole = vectors.positive if value > 0 else vectors.negative
                add(pole, np.float32(abs(value)))
        self._cache[selection] = total
        if len(self._cache) > CACHED_SELECTIONS:  # a whole model's vectors each: keep a few
            self._cache.popitem(last=False)
        return total

    # --- description -------------------------------------------------------------------------

    def description(self, default: Selection) -> dict[str, Any]:
        """What `/v1/control-vectors` answers: the axes (classes, description, safe scales,
        steered blocks), the presets, the server's default and whether unsafe scales pass."""
        axes = []
        for name, record in self.manifest.axes.items():
            safe = record.safe_scale
            axes.append(
                {
                    "name": name,
                    "classes": list(record.classes),
                    "description": record.description,
                    "safe_scale": (
                        {"negative": safe.negative, "positive": safe.positive} if safe else None
                    ),
                    "blocks": sorted(self.axes[name].positive),
                }
            )
        return {
            "object": "cvgen.control_vectors",
            "axes": axes,
            "presets": dict(self.manifest.presets or {}),
            "default": selection_object(default),
            "allow_unsafe_scales": self.allow_unsafe_scales,
        }


def selection_object(selection: Selection) -> dict[str, float]:
    """A selection as the JSON object a request would send."""
    return {axis: float(rounded) for axis, rounded in selection}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
