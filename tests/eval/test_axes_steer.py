"""Which shipped axes steer the small model: a statistical check with `cvgen eval`'s machinery.

For each axis of a pack made from the real SmolLM2-135M-Instruct (32 samples per class, collected
and scored in llama.cpp through the engine), the
propensity (held-out probe pairs: mean log-probability of the positive text minus the
negative one, per prompt) is measured at scales -1, 0 and +1 of the axis and of its
random-direction control (same per-block norms as the positive file, seeded), on the same
prompts. An axis STEERS when the paired difference "axis slope minus random slope" has a
bootstrap 95% interval over prompts above 0, and the axis's own slope interval is above 0.

The test asserts this for the axes in `STEERING_AXES`, the ones measured to steer here, and
writes their figures to `$CVGEN_ARTIFACTS/axes_steer.json`, so a change is visible. It measures
no other axis: a non-effect in a noisy statistic is no test, and each axis costs CI about a
minute (the fixture took 304 s with three axes in a full run, 244 s with these two run alone);
docs/llamacpp.md has the last figures of `character_focus`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_binding, require_real_model

from cvgen.eval.controls import axis_files
from cvgen.eval.engine_backend import EngineBackend
from cvgen.eval.inputs import prepare_inputs
from cvgen.eval.measurement import propensities
from cvgen.eval.settings import EvalSettings
from cvgen.eval.statistics import bootstrap_slope
from cvgen.generate.pipeline import generate_pack
from cvgen.generate.settings import GenerateSettings
from cvgen.pack.manifest import load_manifest

pytestmark = pytest.mark.slow

SCALES = (-1.0, 0.0, 1.0)
# Measured to steer on SmolLM2-135M-Instruct Q4_1 with 32 samples per class (see the module
# docstring for the rule, and docs/llamacpp.md for the figures).
STEERING_AXES = ("language", "optimism")


def _artifact(name: str, data: Any) -> None:
    folder = os.environ.get("CVGEN_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="module")
def measured(
    tmp_path_factory: pytest.TempPathFactory, real_store: Path
) -> dict[str, dict[str, Any]]:
    """Per axis: the axis's and the random control's slope, and their paired difference."""
    model = require_real_model()
    require_binding()
    out = tmp_path_factory.mktemp("steer") / "pack"
    axes = STEERING_AXES
    generate_pack(
        GenerateSettings(model=str(model), axes=axes, samples=32, seed=0),
        out,
        store_root=real_store,
        show_progress=False,
    )
    manifest = json.loads((out / "pack.json").read_text())
    # measured where the pack is used: in llama.cpp, through the engine's batched scorer
    backend = EngineBackend(model, threads=int(os.environ.get("CVGEN_TEST_THREADS", "2")))
    settings = EvalSettings(prompts=10, probe_pairs=3, probe_tokens=16, neutral_texts=1)
    classes = {axis: tuple(manifest["axes"][axis]["classes"]) for axis in axes}
    inputs = prepare_inputs(backend, classes, settings)
    controls = out.parent / "controls"
    controls.mkdir()
    figures: dict[str, dict[str, Any]] = {}
    for axis in axes:
        files = axis_files(out, load_manifest(out), axis, controls_dir=controls, seed=0)
        pairs = inputs.probe_ids[axis]
        measured_at: dict[tuple[str, float], np.ndarray] = {}
        for kind in ("axis", "random"):
            for scale in SCALES:
                # scale 0 is the debias file alone for both: the shared reference point, so
                # it is measured once (the engine's scores are reproducible bit for bit: a
                # second session gave the same column, for 18 s of the fixture at 1 thread)
                if kind == "random" and scale == 0:
                    continue
                with backend.session(files.steering(kind, scale)) as session:
                    measured_at[kind, scale] = propensities(session, inputs.prompt_ids, pairs)
        curves = {
            kind: np.stack(  # (prompts, scales)
                [measured_at["axis" if scale == 0 else kind, scale] for scale in SCALES], axis=1
            )
            for kind in ("axis", "random")
        }
        x = np.asarray(SCALES)
        estimates = {
            "axis": bootstrap_slope(x, curves["axis"]),
            "random": bootstrap_slope(x, curves["random"]),
            "axis_minus_random": bootstrap_slope(x, curves["axis"] - curves["random"]),
        }
        figures[axis] = {
            name: {"slope": e.slope, "low": e.low, "high": e.high} for name, e in estimates.items()
        }
        figures[axis]["steers"] = bool(
            estimates["axis"].low > 0 and estimates["axis_minus_random"].low > 0
        )
    backend.close()
    _artifact("axes_steer.json", figures)
    return figures


@pytest.mark.parametrize("axis", STEERING_AXES)
def test_the_axis_steers_beyond_a_random_direction(
    axis: str, measured: dict[str, dict[str, Any]]
) -> None:
    figures = measured[axis]
    assert figures["axis"]["low"] > 0, figures
    assert figures["axis_minus_random"]["low"] > 0, figures
    # the random direction, with the same norms, moves the propensity far less
    assert abs(figures["random"]["slope"]) < 0.5 * figures["axis"]["slope"], figures
