"""cvgen.eval.controls: the random control, and the files each configuration applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvgen.eval.backend import Steering
from cvgen.eval.controls import AxisFiles, random_directions


def test_random_directions_keep_each_blocks_norm_and_are_seeded() -> None:
    rng = np.random.default_rng(1)
    positive = {k: rng.standard_normal(64).astype(np.float32) * k for k in (1, 2, 3)}
    first = random_directions(positive, seed=7)
    again = random_directions(positive, seed=7)
    other = random_directions(positive, seed=8)
    for block, vector in positive.items():
        assert np.linalg.norm(first[block]) == pytest.approx(np.linalg.norm(vector), rel=1e-5)
        np.testing.assert_array_equal(first[block], again[block])
        assert not np.allclose(first[block], other[block])
        cosine = first[block] @ vector / (np.linalg.norm(first[block]) * np.linalg.norm(vector))
        assert abs(cosine) < 0.5  # a random direction in 64 dimensions is far from the axis


def test_axis_files_choose_the_pole_by_sign(tmp_path: Path) -> None:
    files = AxisFiles(
        tmp_path / "m-a__debias.gguf",
        tmp_path / "m-a__neg.gguf",
        tmp_path / "m-a__pos.gguf",
        tmp_path / "rand.gguf",
        tmp_path / "negated.gguf",
    )
    assert files.steering("axis", 0.0).files == ((files.debias, 1.0),)
    assert files.steering("axis", -0.5).files == ((files.debias, 1.0), (files.negative, 0.5))
    assert files.steering("axis", 1.5).files == ((files.debias, 1.0), (files.positive, 1.5))
    assert files.steering("random", -1.0).files == ((files.debias, 1.0), (files.random, -1.0))
    assert files.steering("negated", 1.0).files == ((files.debias, 1.0), (files.negated, 1.0))
    assert Steering("x", files.steering("axis", 1.5).files).arguments() == [
        "--control-vector-scaled",
        f"{files.debias}:1,{files.positive}:1.5",
    ]
