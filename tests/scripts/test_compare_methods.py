"""The pure pieces of scripts/compare_methods.py on hand-made inputs (no model)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_methods.py"


def _script() -> ModuleType:
    """scripts/compare_methods.py as a module (registered first: its dataclasses look
    themselves up)."""
    if "cvgen_compare_methods" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cvgen_compare_methods", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["cvgen_compare_methods"] = module
        spec.loader.exec_module(module)
    return sys.modules["cvgen_compare_methods"]


def test_matched_kl_scale_interpolates_an_exact_line() -> None:
    compare = _script()
    scales = [0.0, 0.5, 1.0, 2.0]
    kl = [0.02 + 0.1 * s for s in scales]  # KL = 0.02 + 0.1 s reaches 0.1 at s = 0.8
    matched = compare.matched_kl_scale(scales, kl, 0.1)
    assert matched.reached
    assert matched.scale == pytest.approx(0.8, abs=1e-12)
    # the effect, a line in scale too, is read at that scale
    effects = np.array([[0.0, 0.0], [1.5, 0.5], [3.0, 1.0], [6.0, 2.0]])  # 3 s and 1 s
    assert compare.effect_at(scales, effects, matched.scale) == pytest.approx([2.4, 0.8])


def test_matched_kl_scale_takes_the_first_crossing_and_marks_an_unmet_target() -> None:
    compare = _script()
    # crosses 0.1 between 1 and 2 (0.05 -> 0.15), dips, then rises again: the first crossing
    matched = compare.matched_kl_scale([0, 1, 2, 3, 4], [0.0, 0.05, 0.15, 0.05, 0.3], 0.1)
    assert matched.scale == pytest.approx(1.5) and matched.reached
    never = compare.matched_kl_scale([0, 1, 3], [0.0, 0.01, 0.04], 0.1)
    assert (never.scale, never.reached) == (3.0, False)
    already = compare.matched_kl_scale([0, 1], [0.2, 0.5], 0.1)
    assert (already.scale, already.reached) == (0.0, True)
    with pytest.raises(compare.CompareError, match="ascend from 0"):
        compare.matched_kl_scale([1, 2], [0.0, 0.2], 0.1)


def test_one_block_late_moves_block_k_to_k_plus_1_and_drops_the_last() -> None:
    compare = _script()
    vectors = {block: np.full(3, float(block), dtype=np.float32) for block in (1, 2, 28, 29)}
    late = compare.shift_blocks(vectors, 1, 30)
    assert sorted(late) == [2, 3, 29]  # block 29's vector would land at 30 (> L-1): dropped
    for block, vector in late.items():
        assert vector[0] == block - 1
    assert compare.shift_blocks(vectors, 0, 30).keys() == vectors.keys()


def test_default_variants_cover_the_asked_layer_choices() -> None:
    compare = _script()
    variants = {v.name: v for v in compare.default_variants(30)}
    assert variants["cross-covariance"].blocks == tuple(range(1, 29))
    assert variants["cross-covariance"].method == "cross-covariance"
    assert variants["mean-diff"].blocks == variants["pca-diff"].blocks == tuple(range(1, 29))
    assert variants["cc one block late"].shift == 1
    assert variants["cc + last block"].blocks == tuple(range(1, 30))
    assert variants["cc skip 10% ends"].blocks == tuple(range(3, 27))


def _run(propensity_slope: float, kl_slope: float) -> object:
    """An AxisRun whose propensity is slope * scale on 4 prompts (+ a prompt offset) and whose
    KL grows as kl_slope * scale^2 on both poles."""
    compare = _script()
    run = compare.AxisRun(blocks=[1, 2])
    offsets = np.array([0.0, 0.1, -0.1, 0.2])
    for scale in compare.signed_scales([0.5, 1.0, 2.0]):
        run.propensity[scale] = propensity_slope * scale + offsets
        run.kl[scale] = kl_slope * scale**2
    return run


def test_pole_and_axis_summary_on_a_known_run() -> None:
    compare = _script()
    run = _run(propensity_slope=0.4, kl_slope=0.1)
    # KL 0.1 s^2: at 1.0 it is 0.1 exactly; the effect toward each pole there is 0.4
    summary = compare.axis_summary(run, [0.5, 1.0, 2.0], 0.1)
    for pole in ("negative", "positive"):
        assert summary["poles"][pole]["matched_scale"] == pytest.approx(1.0)
        assert summary["poles"][pole]["effect"] == pytest.approx(0.4)
    assert summary["effect_per_kl"] == pytest.approx(4.0)
    assert summary["effect_ci95"] == pytest.approx(0.0, abs=1e-12)  # same effect on every prompt
    assert summary["slope_pm1"] == pytest.approx(0.4)
    weak = compare.axis_summary(_run(0.4, 0.01), [0.5, 1.0, 2.0], 0.1)
    assert not weak["reached"] and weak["poles"]["positive"]["effect"] == pytest.approx(0.8)


def test_summarise_pairs_variants_by_prompt_and_the_table_marks_unmet_targets() -> None:
    compare = _script()
    runs = {
        "cross-covariance": {"a": _run(0.4, 0.1)},
        "other": {"a": _run(0.2, 0.1)},
        "weak": {"a": _run(0.4, 0.01)},
    }
    summary = compare.summarise(runs, ["a"], [0.5, 1.0, 2.0], 0.1, "cross-covariance")
    delta, half = summary["other"]["mean"]["delta"]
    assert delta == pytest.approx(-0.2) and half == pytest.approx(0.0, abs=1e-12)
    table = compare.render_table(summary, ["a"], "cross-covariance", 0.1)
    rows = [line for line in table.splitlines() if line.startswith("| weak | a ")]
    assert len(rows) == 1 and "≥8 " in rows[0]  # 0.8 at the largest scale, per 0.1 of KL
    assert compare.figure(0.123456) == "0.123" and compare.figure(math.nan) == "–"


def test_bad_scales_are_one_line_errors() -> None:
    compare = _script()
    assert compare.parse_positive_scales("1,0.5,1") == [0.5, 1.0]
    with pytest.raises(compare.CompareError, match="'x' is not a number"):
        compare.parse_positive_scales("0.5,x")
    with pytest.raises(compare.CompareError, match="'-1' must be a positive number"):
        compare.parse_positive_scales("-1")


def test_help_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--kl-target" in done.stdout and "--backend" in done.stdout


def test_collected_states_are_reused_and_solve_as_the_pipeline_does(
    pico_llama: Path, tmp_path: Path
) -> None:
    """`collected_states` with --skip-last 0 collects once; the script's solve of the default
    blocks from those states gives the vectors of `generate_pack`'s default pack."""
    from cvgen.generate.pipeline import generate_pack
    from cvgen.generate.settings import GenerateSettings, LayerSkip
    from cvgen.generate.sharded import collected_states
    from cvgen.solve.direction import SolverOptions
    from cvgen.vectors.control_vector import ControlVector

    compare = _script()
    store = tmp_path / "store"
    common: dict[str, object] = dict(
        model=str(pico_llama), axes=("language",), samples=12, seed=3, tau=0.0, device="cpu"
    )
    settings = GenerateSettings(**common, skip_last=LayerSkip("0"))  # type: ignore[arg-type]
    first = collected_states(settings, store_root=store, show_progress=False)
    again = collected_states(settings, store_root=store, show_progress=False)
    assert (first.collected_prompts, again.collected_prompts) == (36, 0)
    assert again.stored_blocks == list(range(again.n_layer))  # block 0 up to the last block
    pack = generate_pack(
        GenerateSettings(**common),  # type: ignore[arg-type]
        tmp_path / "pack",
        store_root=store,
        show_progress=False,
    )
    variant = compare.default_variants(again.n_layer)[0]
    solved = compare.solve_variant_blocks(
        again.arrays,
        again.stored_blocks,
        "language",
        variant.method,
        variant.blocks,
        options=SolverOptions(tau=0.0),
    )
    vectors = compare.role_vectors(solved)
    assert sorted(solved) == pack.manifest.axes["language"].extra["layers"]
    for role, suffix in (("debias", "debias"), ("positive", "ornate"), ("negative", "simple")):
        written = ControlVector.from_gguf(next((tmp_path / "pack").glob(f"*__{suffix}.gguf")))
        for block, vector in written.directions.items():
            scale = float(np.abs(vector).max())
            np.testing.assert_allclose(vectors[role][block], vector, atol=1e-4 * scale)
