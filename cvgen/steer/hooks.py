"""Adding control-vector directions to a Hugging Face model's decoder blocks, through forward
hooks, inside a `with` block: llama.cpp's `direction.k` convention (the vector of block k,
0-based, is added to block k's output, the residual stream after the block, at every position).

    blocks = find_decoder_blocks(model, n_layer)
    with apply_directions(blocks, vector.directions, scale=0.8):
        model.generate(...)

The hooks are removed when the block ends, also when it raises, so none is ever left behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import torch

from cvgen.common.errors import CvgenError


class SteeringError(CvgenError, ValueError):
    """Directions that cannot be applied to these blocks (index out of range, bad shape)."""


def _checked_vectors(
    block_count: int, directions: Mapping[int, np.ndarray], scale: float
) -> dict[int, torch.Tensor]:
    """block -> `scale * vector` as a float32 tensor (d,), each block index checked."""
    vectors: dict[int, torch.Tensor] = {}
    for block, direction in directions.items():
        if not 0 <= int(block) < block_count:
            raise SteeringError(f"direction.{block} is outside the model's {block_count} blocks")
        vector = np.asarray(direction, dtype=np.float32)
        if vector.ndim != 1:
            raise SteeringError(f"direction.{block}: expected a 1-D vector, got {vector.shape}")
        vectors[int(block)] = torch.from_numpy(vector * np.float32(scale))
    return vectors


def apply_directions(
    blocks: torch.nn.ModuleList | Sequence[torch.nn.Module],
    directions: Mapping[int, np.ndarray],
    *,
    scale: float = 1.0,
) -> AbstractContextManager[None]:
    """A context manager that, within its `with` block, adds `scale * directions[k]` to the
    output of `blocks[k]`.

    blocks: the model's decoder blocks in order (`cvgen.extract.model.find_decoder_blocks`).
    directions: block index k (0-based) -> float vector (n_embd,), as a control vector's
    `directions`; blocks without an entry are left alone. The sum is taken in float32 and cast
    to each output's device and dtype once. Raises `SteeringError` before any hook is placed
    when an index lies outside `blocks` or a vector is not 1-D (at this call, not at `with`).
    """
    return _hooked(blocks, _checked_vectors(len(blocks), directions, scale))


@contextmanager
def _hooked(
    blocks: torch.nn.ModuleList | Sequence[torch.nn.Module], vectors: Mapping[int, torch.Tensor]
) -> Iterator[None]:
    """One adding hook per entry of `vectors` for the `with` block; all removed at its end."""
    handles = []
    try:
        for block, vector in vectors.items():
            handles.append(blocks[block].register_forward_hook(_adding_hook(vector)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _adding_hook(vector: torch.Tensor) -> Any:
    """A forward hook adding `vector` (d,) to a block's hidden-state output at every position
    (the output is the hidden states, or a tuple whose first item they are)."""
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = vector.to(device=hidden.device, dtype=hidden.dtype)
        changed = hidden + cache[key]
        if isinstance(output, tuple):
            return (changed, *output[1:])
        return changed

    return hook
