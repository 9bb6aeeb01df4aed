"""Tests for cvgen.vectors.format: llama.cpp's parse of direction names, the overflow-safe norm."""

from __future__ import annotations

import numpy as np
import pytest

from cvgen.vectors.format import FLOAT32_MAX, l2_norm, parse_direction_index


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("direction.7", 7),
        ("direction.07", 7),
        ("direction.+7", 7),
        ("direction. 7", 7),
        ("direction.7.5", 7),
        ("direction.3abc", 3),
        ("direction.-1", -1),
        ("direction.0", 0),
        ("direction.2147483647", 2147483647),
        ("direction.2147483648", None),
        ("direction.x", None),
        ("direction.", None),
        ("direction", None),
        ("Direction.3", None),
        ("foo.3", None),
        ("foo.direction.3", None),
    ],
)
def test_parse_direction_index_mirrors_std_stoi(name: str, expected: int | None) -> None:
    assert parse_direction_index(name) == expected


def test_l2_norm_of_float32_near_the_top_is_finite() -> None:
    vector = np.array([FLOAT32_MAX, FLOAT32_MAX], dtype=np.float32)
    assert l2_norm(vector) == pytest.approx(FLOAT32_MAX * 2**0.5)
    assert l2_norm(np.array([3.0, 4.0], dtype=np.float32)) == 5.0
