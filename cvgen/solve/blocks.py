"""Solving every block of an axis: per-block features from the stored block outputs, paired
differences against the baseline, and one solve method per block (`solve_blocks`).

Nothing here sees a model: the outputs come as arrays, or as anything whose `block(k)` reads
them (a store array, or shards merged in sample order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from cvgen.solve.direction import BlockDirection, SolverError, SolverOptions
from cvgen.solve.methods import DEFAULT_METHOD, get_method

# what a block's solver sees: the block's own contribution h_k - h_(k-1), or the residual h_k
FEATURES = ("delta", "residual")


class BlockReader(Protocol):
    """Anything whose `block(k)` gives the stored (n, d) outputs h_k of block k, such as a
    store array (`cvgen.extract.store.StateArray`) or shards merged in sample order."""

    def block(self, block: int) -> np.ndarray: ...


StoredOutputs = Mapping[int, np.ndarray] | BlockReader


def block_features(outputs: Sequence[np.ndarray], *, features: str) -> list[np.ndarray]:
    """Per-block features from stored outputs h_{k-1}, h_k, ..., h_last (each (n, d)).

    "delta": x_k = h_k - h_{k-1}, the block's own contribution (the default);
    "residual": x_k = h_k. Returns one (n, d) float32 array per block k (the first stored
    output is only the reference h_{k-1} of the first block).
    """
    _check_features(features)
    shapes = {np.shape(h) for h in outputs}
    if len(shapes) > 1:
        raise SolverError(f"stored outputs must share one (n, d) shape; got {sorted(shapes)}")
    if features == "residual":
        return [np.asarray(h, dtype=np.float32) for h in outputs[1:]]
    return [
        np.asarray(current, dtype=np.float32) - np.asarray(previous, dtype=np.float32)
        for previous, current in zip(outputs[:-1], outputs[1:], strict=False)
    ]


def paired_differences(
    negative: np.ndarray, positive: np.ndarray, baseline: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A = negative - baseline and B = positive - baseline, float64, each (n, d).

    negative, positive, baseline: features of one block, (n, d) each, rows paired by index.
    """
    shapes = {np.shape(negative), np.shape(positive), np.shape(baseline)}
    if len(shapes) != 1:
        raise SolverError(
            "negative, positive and baseline states must share one (n, d) shape; got "
            f"{np.shape(negative)}, {np.shape(positive)}, {np.shape(baseline)}"
        )
    base = np.asarray(baseline, dtype=np.float64)
    negative_diffs = np.asarray(negative, dtype=np.float64) - base
    positive_diffs = np.asarray(positive, dtype=np.float64) - base
    return negative_diffs, positive_diffs


def _stored_output(states: StoredOutputs, block: int) -> np.ndarray:
    """h_block (n, d) from a mapping or a reader; SolverError when a mapping lacks it."""
    if not isinstance(states, Mapping):
        return states.block(block)
    if block not in states:
        raise SolverError(
            f"outputs of block {block} are missing from the given states (have {sorted(states)})"
        )
    return np.asarray(states[block])


def _features_at(states: StoredOutputs, block: int, features: str) -> np.ndarray:
    """x_block (n, d) float32: h_block for "residual", h_block - h_(block-1) for "delta"."""
    if features == "residual":
        return np.asarray(_stored_output(states, block), dtype=np.float32)
    outputs = [_stored_output(states, block - 1), _stored_output(states, block)]
    return block_features(outputs, features="delta")[0]


def _check_features(features: str) -> None:
    if features not in FEATURES:
        raise SolverError(
            f"features: unknown value {features!r}; choose one of: {', '.join(FEATURES)}"
        )


def solve_blocks(
    negative: StoredOutputs,
    positive: StoredOutputs,
    baseline: StoredOutputs,
    blocks: Sequence[int],
    *,
    features: str = "delta",
    method: str = DEFAULT_METHOD,
    options: SolverOptions | None = None,
) -> dict[int, BlockDirection]:
    """Solve each of `blocks` from stored block outputs: -> {block: BlockDirection}.

    negative, positive, baseline: the stored outputs h_k of each block k, (n, d) each, as
    a mapping block -> array or a :class:`BlockReader`; rows are paired by index.
    features: "delta" (x_k = h_k - h_(k-1); needs block k - 1 stored too) or "residual"
    (x_k = h_k). For each block, A = x_neg - x_base and B = x_pos - x_base (float64) go
    to `method`. Blocks for which the method finds no direction are left out.
    """
    _check_features(features)
    solve = get_method(method)
    settings = options if options is not None else SolverOptions()
    result: dict[int, BlockDirection] = {}
    for block in blocks:
        try:
            per_array = [_features_at(h, block, features) for h in (negative, positive, baseline)]
            solved = solve(*paired_differences(*per_array), settings)
        except SolverError as error:
            raise SolverError(f"block {block}: {error}") from None
        if solved is not None:
            result[block] = solved
    return result
