"""cvgen.eval.backend: a steering configuration sums its scaled files, as llama.cpp does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvgen.eval.backend import Steering
from cvgen.vectors.gguf_file import write_control_vector


def test_steering_sums_its_scaled_files(tmp_path: Path) -> None:
    a = {1: np.full(8, 1.0, np.float32), 2: np.full(8, 2.0, np.float32)}
    b = {2: np.full(8, 10.0, np.float32), 3: np.full(8, 3.0, np.float32)}
    write_control_vector(tmp_path / "a.gguf", a, model_hint="llama")
    write_control_vector(tmp_path / "b.gguf", b, model_hint="llama")
    total = Steering("s", ((tmp_path / "a.gguf", 1.0), (tmp_path / "b.gguf", -0.5))).block_vectors()
    assert sorted(total) == [1, 2, 3]
    np.testing.assert_allclose(total[1], 1.0)
    np.testing.assert_allclose(total[2], 2.0 - 5.0)
    np.testing.assert_allclose(total[3], -1.5)
    assert Steering("none").block_vectors() == {} and Steering("none").arguments() == []
