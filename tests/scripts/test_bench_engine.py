"""The pure helpers of scripts/bench_engine.py and scripts/fidelity.py (no model is run)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from cvgen.solve.direction import BlockDirection

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return __import__(name)


def test_prompt_lines_escape_what_the_generator_unescapes() -> None:
    escape = _script("bench_engine").escape_prompt_line
    assert escape("a\nb\\n\tc\r") == "a\\nb\\\\n\\tc\\r"
    assert "\n" not in escape("<|im_start|>system\nhi<|im_end|>\n")


def test_decoded_tokens_count_each_decodes_prefix_once() -> None:
    count = _script("bench_engine").decoded_tokens
    prompts = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [9, 8]]
    # decode [0, 1] shares 3 tokens: 3 + 1 + 2; decode [2] alone: 2
    assert count(prompts, [[0, 1], [2]]) == 8
    assert count(prompts, [[0], [1], [2]]) == 4 + 5 + 2


def test_ratios_from_seconds() -> None:
    ratios = _script("bench_engine").ratios
    results = {
        "prompts": 30,
        "engine": {
            "decoded_tokens": 600,
            "collect": {"wall_s": 2.2, "cpu_s": 4.4},
            "plain": {"wall_s": 2.0, "cpu_s": 4.0},
        },
        "transformers": {"collect": {"wall_s": 6.6, "cpu_s": 8.8}},
        "cvector_generator": {"seconds_per_prompt": 0.5, "cpu_seconds_per_prompt": 0.25},
        "batched_bench": {"tokens_per_s": 400.0},
    }
    figures = ratios(results)
    assert figures["capture_overhead_wall"] == pytest.approx(0.1)
    assert figures["capture_overhead_cpu"] == pytest.approx(0.1)
    assert figures["over_transformers"] == pytest.approx(3.0)
    assert figures["over_transformers_cpu"] == pytest.approx(2.0)
    assert figures["over_cvector_generator"] == pytest.approx(15 / 2.2)
    assert figures["over_cvector_generator_cpu"] == pytest.approx(7.5 / 4.4)
    assert figures["engine_over_batched_bench"] == pytest.approx(600 / 2.2 / 400)
    alone = ratios({"prompts": 30, "engine": results["engine"]})
    assert "over_transformers" not in alone and "over_cvector_generator" not in alone


def test_first_samples_keeps_whole_samples() -> None:
    bench_engine = _script("bench_engine")
    ids = [[index] for index in range(9)]
    work = bench_engine.EngineWorkload(
        Path("m.gguf"), 3, [str(i) for i in range(9)], ids, ids, [0, 1], 2, 4, 0
    )
    first = work.first_samples(2)
    assert (first.samples, first.prompts, first.engine_ids) == (2, 6, ids[:6])
    assert first.token_agreement() == 1.0


def test_state_agreement_and_row_cosines() -> None:
    fidelity = _script("fidelity")
    generator = np.random.default_rng(0)
    first = generator.standard_normal((2, 5, 8)).astype(np.float32)
    second = first.copy()
    second[1] *= 2.0  # same direction, twice the norm
    second[0, 3] = -second[0, 3]
    table = fidelity.state_agreement(first, second, [4, 7])
    assert table[4]["min"] == pytest.approx(-1.0)
    assert table[4]["median"] == pytest.approx(1.0)
    assert table[7]["min"] == pytest.approx(1.0)
    assert table[7]["norm_ratio"] == pytest.approx(0.5)


def _direction(vector: np.ndarray) -> BlockDirection:
    unit = (vector / np.linalg.norm(vector)).astype(np.float32)
    return BlockDirection(direction=unit, mean_negative=-1.0, mean_positive=1.0, fisher_ratio=2.0)


def test_direction_agreement_is_signed_and_marks_missing_blocks() -> None:
    fidelity = _script("fidelity")
    axis = np.array([1.0, 2.0, 0.0, -1.0])
    table = fidelity.direction_agreement(
        {1: _direction(axis), 2: _direction(axis)}, {1: _direction(-axis), 3: _direction(axis)}
    )
    assert table[1]["cosine"] == pytest.approx(-1.0)
    assert table[2]["cosine"] is None and table[2]["fisher_second"] is None
    assert table[3]["fisher_first"] is None and table[3]["fisher_second"] == 2.0


def test_solve_axis_recovers_a_planted_direction() -> None:
    fidelity = _script("fidelity")
    from cvgen.generate.settings import GenerateSettings

    generator = np.random.default_rng(1)
    n, d = 40, 16
    axis = generator.standard_normal(d)
    axis /= np.linalg.norm(axis)
    states = np.zeros((2, 3 * n, d))
    states[1] = generator.standard_normal((3 * n, d)) * 0.3
    states[1, 1::3] -= 3 * axis
    states[1, 2::3] += 3 * axis
    settings = GenerateSettings(model="m.gguf", axes=("language",), samples=n, tau=0.0)
    solved = fidelity.solve_axis(states.astype(np.float32), [0, 1], settings)
    assert float(solved[1].direction @ axis) > 0.99
