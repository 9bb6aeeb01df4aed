"""The pure pieces of scripts/compare_methods.py on hand-made inputs (no model)."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import SCRIPTS, load_script

from cvgen.eval import matched


def _script() -> ModuleType:
    return load_script("compare_methods")


# --- the matched-KL search ---------------------------------------------------------------------


def test_matched_between_is_exact_on_a_power_law_above_the_debias_kl() -> None:
    # KL = 0.01 + 0.02 s^2 reaches 0.05 at s = sqrt(2); the points are at 1 and 2
    point = matched.KlPoint
    low, high = point(1.0, 0.03), point(2.0, 0.09)
    assert matched.matched_between(low, high, 0.05, 0.01) == pytest.approx(math.sqrt(2), 1e-12)
    # a cube law is exact too (the power comes from the two points)
    low, high = point(1.0, 0.002), point(3.0, 0.054)
    assert matched.matched_between(low, high, 0.016, 0.0) == pytest.approx(2.0, 1e-12)
    # from scale 0: the square law through the upper point (KL 0.08 at 2 -> 0.02 at 1)
    assert matched.matched_between(point(0.0, 0.0), point(2.0, 0.08), 0.02, 0.0) == pytest.approx(
        1.0
    )
    # no power law (KL falls below kl0 at the lower point): linear in KL
    assert matched.matched_between(point(1.0, 0.0), point(3.0, 0.1), 0.05, 0.01) == pytest.approx(
        2.0
    )


def _counting(kl: Any) -> tuple[list[float], Any]:
    seen: list[float] = []

    def kl_at(scale: float) -> float:
        seen.append(scale)
        return float(kl(scale))

    return seen, kl_at


def test_search_finds_the_matched_scale_of_a_square_law_in_few_steps() -> None:
    seen, kl_at = _counting(lambda s: 0.003 * s**2)  # 0.05 at s = 4.0825
    found = matched.search_pole(
        kl_at, 0.05, zero_kl=0.0, start=1.0, max_scale=64.0, steps=7, tolerance=0.1
    )
    assert found.reached
    assert found.matched == pytest.approx(math.sqrt(0.05 / 0.003), rel=1e-9)
    assert found.lower.kl < 0.05 <= found.upper.kl
    assert len(seen) <= 4 and seen[0] == 1.0
    assert [p.scale for p in found.points][0] == 0.0  # scale 0 is the first point


def test_search_reaches_unit_norm_scales_and_a_debias_offset() -> None:
    # a unit-norm file: KL 1e-5 at scale 1, the target near 70 (a fixed grid of 1..3 misses it)
    seen, kl_at = _counting(lambda s: 1e-5 * s**2.2)
    found = matched.search_pole(
        kl_at, 0.05, zero_kl=0.0, start=1.0, max_scale=1000.0, steps=8, tolerance=0.1
    )
    assert found.reached and found.matched == pytest.approx((0.05 / 1e-5) ** (1 / 2.2), rel=1e-6)
    # with a debias file: KL 0.02 at scale 0, the excess a power law
    seen, kl_at = _counting(lambda s: 0.02 + 0.01 * s**1.5)
    found = matched.search_pole(
        kl_at, 0.05, zero_kl=0.02, start=1.0, max_scale=64.0, steps=7, tolerance=0.1
    )
    assert found.matched == pytest.approx(3.0 ** (1 / 1.5), rel=1e-6)


def test_search_marks_a_target_never_reached_and_one_reached_at_scale_0() -> None:
    compare = _script()
    seen, kl_at = _counting(lambda s: 0.02 * (1 - math.exp(-s)))  # saturates below 0.05
    found = matched.search_pole(
        kl_at, 0.05, zero_kl=0.0, start=1.0, max_scale=16.0, steps=10, tolerance=0.1
    )
    assert not found.reached and found.upper is None
    assert found.matched == max(seen) == 16.0  # given up at the largest scale
    assert all(s <= 16.0 for s in seen)
    seen, kl_at = _counting(lambda s: 0.5)
    found = matched.search_pole(
        kl_at, 0.05, zero_kl=0.06, start=1.0, max_scale=16.0, steps=5, tolerance=0.1
    )
    assert found.reached and found.matched == 0.0 and seen == []
    with pytest.raises(compare.CompareError, match="max scale"):
        matched.search_pole(
            kl_at, 0.05, zero_kl=0.0, start=2.0, max_scale=1.0, steps=5, tolerance=0.1
        )


def test_search_shrinks_when_the_start_overshoots() -> None:
    seen, kl_at = _counting(lambda s: 0.2 * s**2)  # 0.05 at s = 0.5
    found = matched.search_pole(
        kl_at, 0.05, zero_kl=0.0, start=2.0, max_scale=128.0, steps=7, tolerance=0.05
    )
    assert found.reached and found.matched == pytest.approx(0.5, rel=1e-9)
    assert min(seen) < 2.0


class FakeMeasurer:
    """A model whose KL toward the positive pole is kl0 + 0.004 s^2 and toward the negative
    pole kl0 + 0.016 s^2 (kl0 = 0.01 with the debias file, else 0), and whose propensity is
    0.1 s (signed) plus a per-prompt offset; it counts its measurements."""

    offsets = np.array([0.0, 0.2, -0.1])

    def __init__(self) -> None:
        self.counts = {"kl": 0, "propensity": 0}

    @staticmethod
    def _signed(steering: Any) -> tuple[float, bool]:
        scale, debias = 0.0, False
        for path, value in steering.files:
            if path.stem == "d":
                debias = True
            elif path.stem == "n":
                scale -= value
            else:  # the positive file, or a signed file at its signed scale
                scale += value
        return scale, debias

    def kl(self, steering: Any) -> float:
        self.counts["kl"] += 1
        scale, debias = self._signed(steering)
        return (0.01 if debias else 0.0) + (0.004 if scale > 0 else 0.016) * scale**2

    def propensity(self, steering: Any, axis: str) -> np.ndarray:
        self.counts["propensity"] += 1
        scale, _ = self._signed(steering)
        return 0.1 * scale + self.offsets


def _search_args() -> argparse.Namespace:
    return argparse.Namespace(kl_target=0.05, max_factor=64.0, search_steps=7, kl_tolerance=0.1)


def test_each_pole_is_matched_and_read_at_its_own_scale(tmp_path: Path) -> None:
    compare = _script()
    recipe = compare.Recipe(tmp_path / "n.gguf", tmp_path / "p.gguf", tmp_path / "d.gguf")
    measurer = FakeMeasurer()
    result = compare.measure_variant_axis(
        measurer,
        recipe,
        "a",
        unsteered=np.zeros(3),
        start=1.0,
        blocks=[1, 2],
        args=_search_args(),
    )
    # the excess KL 0.04 is reached at sqrt(10) toward + and at sqrt(2.5) toward -
    assert result.zero_kl == pytest.approx(0.01)
    assert result.poles["positive"].matched == pytest.approx(math.sqrt(10), rel=1e-9)
    assert result.poles["negative"].matched == pytest.approx(math.sqrt(2.5), rel=1e-9)
    assert result.matched_kl == pytest.approx({"positive": 0.05, "negative": 0.05})
    np.testing.assert_allclose(
        result.matched_propensity["negative"], -0.1 * math.sqrt(2.5) + FakeMeasurer.offsets
    )
    # p(+s+) - p(-s-): the offsets cancel, prompt by prompt
    np.testing.assert_allclose(result.per_prompt(), 0.1 * (math.sqrt(10) + math.sqrt(2.5)))
    assert measurer.counts["propensity"] == 2  # once per pole, at its matched scale
    assert len(result.propensity) == 2  # the two matched scales


def test_a_signed_file_has_no_scale_0_measurement_and_flips_for_the_negative_pole(
    tmp_path: Path,
) -> None:
    compare = _script()
    path = tmp_path / "g.gguf"
    measurer = FakeMeasurer()
    result = compare.measure_variant_axis(
        measurer,
        compare.Recipe(path, path, None, signed=True),
        "a",
        unsteered=np.zeros(3),
        start=0.5,
        blocks=[1],
        args=_search_args(),
    )
    assert result.zero_kl == 0.0
    assert result.poles["positive"].matched == pytest.approx(math.sqrt(12.5), rel=1e-9)
    assert result.poles["negative"].matched == pytest.approx(math.sqrt(0.05 / 0.016), rel=1e-9)
    assert result.matched_propensity["negative"][0] < 0 < result.matched_propensity["positive"][0]


# --- the figures ---------------------------------------------------------------------------------


def _result(
    compare: ModuleType, positive: list[float], negative: list[float], *, reached: bool = True
) -> Any:
    point = matched.KlPoint
    result = compare.AxisResult(blocks=[1, 2], start=1.0, zero_kl=0.0)
    for pole, values in (("positive", positive), ("negative", negative)):
        upper = point(2.0, 0.06) if reached else None
        result.poles[pole] = matched.PoleSearch(
            [point(0.0, 0.0), point(1.0, 0.02)], point(1.0, 0.02), upper, 1.5 if reached else 1.0
        )
        result.matched_propensity[pole] = np.array(values)
    return result


def test_the_figure_is_positive_pole_minus_negative_pole_per_prompt() -> None:
    compare = _script()
    result = _result(compare, [0.5, 0.7, 0.2, 0.4], [-0.1, 0.1, -0.4, 0.0])
    np.testing.assert_allclose(result.per_prompt(), [0.6, 0.6, 0.6, 0.4])
    summary = compare.figure_summary(result, compare.split_halves(4))
    assert summary["effect"] == pytest.approx(0.55)
    assert summary["effect_a"] == pytest.approx(0.6)  # prompts 0 and 2
    assert summary["effect_b"] == pytest.approx(0.5)  # prompts 1 and 3
    assert summary["ci95_a"] == pytest.approx(0.0, abs=1e-12)
    assert summary["ci95"] == pytest.approx(1.96 * 0.1 / 2)  # sd 0.1 over 4 prompts
    assert summary["matched"] == {"positive": 1.5, "negative": 1.5} and summary["reached"]


def test_split_halves_and_the_interval() -> None:
    compare = _script()
    assert compare.split_halves(5) == ([0, 2, 4], [1, 3])
    with pytest.raises(compare.CompareError, match="--prompts"):
        compare.split_halves(1)
    mean, half = matched.interval(np.array([1.0]))
    assert mean == 1.0 and math.isnan(half)


def test_ratio_interval_is_paired_and_refuses_a_non_positive_anchor() -> None:
    compare = _script()
    anchor = np.array([0.2, 0.4, 0.3, 0.5])
    ratio, low, high = compare.ratio_interval(anchor * 1.5, anchor)
    assert ratio == pytest.approx(1.5)
    # paired resampling: an exact multiple gives the same ratio in every draw
    assert low == pytest.approx(1.5) and high == pytest.approx(1.5)
    ratio, low, high = compare.ratio_interval(anchor + np.array([0.1, -0.1, 0.1, -0.1]), anchor)
    assert ratio == pytest.approx(1.0) and low < 1.0 < high
    assert compare.ratio_interval(anchor, -anchor) == (None, None, None)


def _figures(**effects: tuple[float, float, bool]) -> dict[str, dict[str, Any]]:
    """name=(A figure, B figure, reached) -> figure summaries of 2 prompts (one a half)."""
    out = {}
    for name, (a, b, reached) in effects.items():
        key = name.replace("_", " ")
        out[key] = {
            "effect": (a + b) / 2,
            "ci95": 0.01,
            "effect_a": a,
            "effect_b": b,
            "reached": reached,
            "per_prompt": [a, b],
        }
    return out


def test_best_anchor_and_ratios_skip_what_never_reached_the_target() -> None:
    compare = _script()
    figures = _figures(
        cvgen_default=(0.6, 0.6, True),
        late=(0.3, 0.3, True),
        gen_mean=(0.9, 0.9, False),  # larger, but read below the target
        gen_pca=(0.1, 0.45, True),
    )
    anchors = ["late", "gen mean", "gen pca"]
    assert compare.best_anchor(figures, anchors) == "late"
    assert compare.best_anchor(figures, anchors, key="effect_b") == "gen pca"
    assert compare.add_ratios(figures, anchors) == "late"
    assert figures["cvgen default"]["ratio"][0] == pytest.approx(2.0)
    assert figures["gen mean"]["ratio"] == (None, None, None)
    assert compare.axis_steers(figures, ["cvgen default", "late"])
    flat = _figures(cvgen_default=(0.01, -0.01, True))
    assert not compare.axis_steers(flat, ["cvgen default"])


def test_selection_picks_on_half_a_and_reports_half_b() -> None:
    compare = _script()
    figures = _figures(
        cvgen_default=(0.5, 0.5, True),
        lucky=(0.8, 0.3, True),  # best on A by chance, worse than the default on B
        never=(2.0, 2.0, False),
        late=(0.4, 0.25, True),
        gen_mean=(0.3, 0.5, True),
    )
    chosen = compare.select_on_split(
        figures, ["cvgen default", "lucky", "never"], ["late", "gen mean"], "cvgen default"
    )
    assert chosen["picked"] == "lucky" and chosen["picked_halves"] == {"a": 0.8, "b": 0.3}
    assert chosen["default_halves"] == {"a": 0.5, "b": 0.5}
    assert chosen["anchor"] == "late"  # picked on A too, not on B (gen mean has 0.5 on B)
    assert chosen["picked_ratio_b"] == pytest.approx(0.3 / 0.25)
    assert chosen["default_ratio_b"] == pytest.approx(0.5 / 0.25)
    table = compare.render_selection({"x": {"selection": chosen}})
    assert "| x | lucky | 0.8 | 0.3 | 0.5 | 0.5 | late | 0.4 | 0.25 | 1.20 | 2.00 |" in table


def test_tables_mark_an_unreached_pole_and_the_goal() -> None:
    compare = _script()
    reached = compare.figure_summary(_result(compare, [0.5, 0.5], [0.0, 0.0]), ([0], [1]))
    short = compare.figure_summary(
        _result(compare, [0.2, 0.2], [0.0, 0.0], reached=False), ([0], [1])
    )
    figures = {"cvgen default": reached, "late": short, "gen": dict(reached)}
    figures["gen"]["per_prompt"] = [0.3, 0.3]
    figures["gen"]["effect"] = 0.3
    anchor = compare.add_ratios(figures, ["late", "gen"])
    assert anchor == "gen"
    table = compare.render_axis_table(
        "x", figures, {"cvgen default": [1, 28]}, ["late", "gen"], anchor
    )
    late_row = next(line for line in table.splitlines() if line.startswith("| late (anchor)"))
    assert "not reached (KL 0.02 @1)" in late_row and "target not reached" in late_row
    assert "| cvgen default | 1..28 | 1.5 | 1.5 | 0.5 ±nan" not in table  # one prompt a half
    assert "1.67" in table  # 0.5 / 0.3
    summary = {
        "x": {"figures": figures, "best_anchor": anchor, "steers": True},
        "y": {"figures": figures, "best_anchor": None, "steers": False},
    }
    headline = compare.render_headline(summary, "cvgen default")
    rows = headline.splitlines()[2:]
    assert rows[0].startswith("| x | yes |") and rows[0].endswith("| yes |")
    assert "none reached the target" in rows[1] and rows[1].endswith("| – |")


# --- variants and files ------------------------------------------------------------------------------


def test_default_variants_cover_the_levers_and_the_anchors() -> None:
    compare = _script()
    variants = {v.name: v for v in compare.default_variants(30, 128)}
    default = variants["cvgen default"]
    assert default.blocks == tuple(range(1, 29)) and default.method == "auto"
    assert variants["cc first half"].blocks == tuple(range(1, 15))
    assert variants["cc middle third"].blocks == tuple(range(10, 20))
    assert variants["cc last half"].blocks == tuple(range(15, 29))
    assert variants["mean-diff"].blocks == variants["pca-diff"].blocks == default.blocks
    assert not variants["cc no debias"].debias
    assert variants["cc residual"].features == "residual"
    assert variants["cc half samples"].samples == 64
    assert variants["cc one block late"].shift == 1
    anchors = [v.name for v in variants.values() if v.anchor]
    assert anchors == [
        "cc one block late",
        "llama.cpp mean",
        "llama.cpp pca",
        "llama.cpp pca aligned",
    ]
    assert (
        variants["llama.cpp pca aligned"].generator == "pca"
        and variants["llama.cpp pca aligned"].align
    )
    picked = compare.pick_variants(list(variants.values()), "llama.cpp mean")
    assert [v.name for v in picked] == ["cvgen default", "llama.cpp mean"]
    with pytest.raises(compare.CompareError, match="unknown variant 'x'"):
        compare.pick_variants(list(variants.values()), "x")


def test_one_block_late_moves_block_k_to_k_plus_1_and_drops_the_last() -> None:
    compare = _script()
    vectors = {block: np.full(3, float(block), dtype=np.float32) for block in (1, 2, 28, 29)}
    late = compare.shift_blocks(vectors, 1, 30)
    assert sorted(late) == [2, 3, 29]  # block 29's vector would land at 30 (> L-1): dropped
    for block, vector in late.items():
        assert vector[0] == block - 1
    assert compare.shift_blocks(vectors, 0, 30).keys() == vectors.keys()


def test_equal_norms_keeps_directions_and_sets_the_mean_norm() -> None:
    compare = _script()
    vectors = {1: np.array([3.0, 4.0], np.float32), 2: np.array([0.0, 1.0], np.float32)}
    equal = compare.equal_norms(vectors)
    for block in (1, 2):
        assert np.linalg.norm(equal[block]) == pytest.approx(3.0)  # mean of 5 and 1
        cos = (
            equal[block]
            @ vectors[block]
            / (np.linalg.norm(equal[block]) * np.linalg.norm(vectors[block]))
        )
        assert cos == pytest.approx(1.0)


def test_first_rows_keeps_the_first_samples() -> None:
    compare = _script()

    class States:
        def block(self, block: int) -> np.ndarray:
            return np.arange(12, dtype=np.float32).reshape(6, 2) + block

    got = compare.FirstRows(States(), 2).block(3)
    np.testing.assert_array_equal(got, [[3, 4], [5, 6]])


def test_recipes_apply_pole_files_with_debias_or_one_signed_file(tmp_path: Path) -> None:
    compare = _script()
    debias, negative, positive = (tmp_path / f"{n}.gguf" for n in ("d", "n", "p"))
    cvgen = compare.Recipe(negative, positive, debias)
    assert cvgen.steering(0.0).files == ((debias, 1.0),)
    assert cvgen.steering(-2.5).files == ((debias, 1.0), (negative, 2.5))
    assert cvgen.steering(3.0).files == ((debias, 1.0), (positive, 3.0))
    bare = compare.Recipe(negative, positive)
    assert bare.steering(-2.0).files == ((negative, 2.0),) and bare.steering(0).files == ()
    signed = compare.Recipe(positive, positive, signed=True)
    assert signed.steering(-7.0).files == ((positive, -7.0),)
    assert signed.steering(7.0).files == ((positive, 7.0),)


def test_start_scales_match_the_defaults_norm() -> None:
    compare = _script()
    files = {
        "cvgen default": {"a": {"positive": {"norms": [2.0, 4.0]}}},
        "llama.cpp mean": {"a": {"signed": {"norms": [1.0, 1.0, 1.0]}}},
    }
    assert compare.start_scales(files, ["a"]) == {
        "cvgen default": {"a": 1.0},
        "llama.cpp mean": {"a": 3.0},
    }


def test_help_runs_and_bad_options_are_one_line_errors() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "compare_methods.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--kl-target", "--variants", "--markdown", "--threads", "--prompts"):
        assert option in done.stdout
    compare = _script()
    args = compare.parse_args(["--kl-target", "0"])
    with pytest.raises(compare.CompareError, match="--kl-target: 0.0 must be a positive"):
        compare.check_args(args)
    args = compare.parse_args(["--prompts", "1"])
    with pytest.raises(compare.CompareError, match="--prompts"):
        compare.check_args(args)
    assert isinstance(compare.parse_args([]), argparse.Namespace)


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
    variant = compare.default_variants(again.n_layer, 12)[0]
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
