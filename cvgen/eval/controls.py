"""An axis's files as steering configurations, and the control files written for it: a random
direction with the positive vector's per-block norms (its slope should be near zero) and the
negated positive vector (its slope should be the axis's, reversed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cvgen.eval.backend import Steering
from cvgen.eval.settings import EvalError
from cvgen.pack.records import PackManifest
from cvgen.vectors.control_vector import ControlVector


def random_directions(positive: Mapping[int, np.ndarray], *, seed: int) -> dict[int, np.ndarray]:
    """Per block, a random direction (Gaussian, seeded) with the positive vector's norm."""
    generator = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for block in sorted(positive):
        vector = np.asarray(positive[block], dtype=np.float64)
        draw = generator.standard_normal(vector.shape[0])
        scaled = draw / np.linalg.norm(draw) * np.linalg.norm(vector)
        out[block] = np.asarray(scaled, dtype=np.float32)
    return out


@dataclass(frozen=True)
class AxisFiles:
    """An axis's files, and the control files written for it (absent without controls)."""

    debias: Path
    negative: Path
    positive: Path
    random: Path | None = None
    negated: Path | None = None

    def steering(self, kind: str, scale: float) -> Steering:
        """The files of one configuration: kind "axis" (the pole file by the sign of `scale`,
        as `cvgen commands` chooses), "random" or "negated" (the control at `scale`)."""
        label = f"{self.positive.stem}-{kind}-{scale:+g}"
        if kind == "axis":
            if scale == 0:
                return Steering(label, ((self.debias, 1.0),))
            pole = self.positive if scale > 0 else self.negative
            return Steering(label, ((self.debias, 1.0), (pole, abs(scale))))
        control = {"random": self.random, "negated": self.negated}[kind]
        if control is None:
            raise EvalError(f"no {kind} control file was written")
        return Steering(label, ((self.debias, 1.0), (control, scale)))


def axis_files(
    pack: Path, manifest: PackManifest, axis: str, *, controls_dir: Path | None, seed: int
) -> AxisFiles:
    """The axis's pack files, plus its random and negated control files in `controls_dir`."""
    names = manifest.axes[axis].files
    files = {role: Path(pack) / names.of(role) for role in ("debias", "negative", "positive")}
    for role, path in files.items():
        if not path.is_file():
            raise EvalError(f"{pack}: axis '{axis}': {role} file {path.name} is missing")
    if controls_dir is None:
        return AxisFiles(files["debias"], files["negative"], files["positive"])
    positive = ControlVector.from_gguf(files["positive"])
    stem = files["positive"].stem
    random_path = controls_dir / f"{stem}__random-control.gguf"
    negated_path = controls_dir / f"{stem}__negated-control.gguf"
    random_vector = random_directions(positive.directions, seed=seed)
    control = ControlVector(random_vector, positive.model_hint, {"cvgen.role": "random-control"})
    control.to_gguf(random_path)
    replace(-positive, metadata={"cvgen.role": "negated-control"}).to_gguf(negated_path)
    return AxisFiles(
        files["debias"], files["negative"], files["positive"], random_path, negated_path
    )
