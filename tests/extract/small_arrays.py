"""Small store arrays of one family, shared by the store and row-reuse tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cvgen.extract.store import StateArray
from cvgen.extract.store_keys import ArrayFamily

FAMILY = ArrayFamily(
    model_identity="model-a", dtype="float32", quantization="none", blocks=(0, 2), width=3
)


def open_array(
    root: Path, key: str, texts: list[str], family: ArrayFamily | None = FAMILY
) -> StateArray:
    """A (2 blocks, len(texts) rows, width 3) array; `family=None` opens one without texts."""
    return StateArray.open(
        root,
        key,
        n=len(texts),
        blocks=FAMILY.blocks,
        width=FAMILY.width,
        texts=texts if family is not None else None,
        family=family,
    )


def distinct_states(rows: int, offset: float) -> np.ndarray:
    """Distinct states (blocks, rows, width): value = offset + position."""
    return offset + np.arange(2 * rows * 3, dtype=np.float32).reshape(2, rows, 3)
