"""The ControlVector value: per-block directions for one model, with arithmetic and GGUF I/O.

A ControlVector maps block index k (0-based) to the float32 vector of width ``n_embd`` that is
added to the output of block k. Vectors for the same model and width add, subtract, negate
and scale like numbers; ``from_gguf`` and ``to_gguf`` read and write llama.cpp's files.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from cvgen.vectors.format import FORMAT_KEYS, KEY_MODEL_HINT, ControlVectorError, FloatVector
from cvgen.vectors.gguf_file import (
    open_control_vector_reader,
    read_direction_tensors,
    read_fields,
    write_control_vector,
)
from cvgen.vectors.llamacpp_rules import content_problems


@dataclass(frozen=True, eq=False, repr=False)
class ControlVector:
    """Per-block steering directions for one model: a frozen value.

    ``directions``: block index k (int >= 0) -> float32 vector of shape ``(n_embd,)``, the
    vector added to the output of block k; stored read-only, in ascending k. ``model_hint``
    names the model (``controlvector.model_hint``). ``metadata``: the file's other key/value
    fields (``cvgen.*`` annotations such as the axis and role), without the ones the format
    derives (architecture, model hint, layer count, layer convention).

    ``a + b`` and ``a - b`` cover the blocks of either (a block missing on one side counts as
    zero); ``s * v``, ``v * s`` and ``-v`` scale in float32. Both sides of ``+``/``-`` must have
    the same model hint and width. A result carries no metadata: annotations describe one file.
    """

    directions: Mapping[int, FloatVector]
    model_hint: str
    metadata: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model_hint, str) or not self.model_hint.strip():
            raise ControlVectorError(
                f"control vector: model hint must be a non-empty string, got {self.model_hint!r}"
            )
        object.__setattr__(self, "directions", MappingProxyType(_frozen(self.directions)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def n_embd(self) -> int:
        """The width every direction shares."""
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def blocks(self) -> tuple[int, ...]:
        """The steered block indices, ascending."""
        return tuple(self.directions)

    # ----------------------------------------------------------------------- files

    @classmethod
    def from_gguf(cls, path: Path) -> ControlVector:
        """Read and validate a control-vector file.

        Raises ControlVectorError (one line: file and every reason) for a file that is not
        GGUF, that llama.cpp would skip, or that lacks the conventional metadata (see
        ``llamacpp_rules.llamacpp_problems``). Tensors that llama.cpp maps to the same block
        (``direction.3`` and ``direction.+3``) are summed, as llama.cpp does.
        """
        path = Path(path)
        reader = open_control_vector_reader(path)
        problems = content_problems(reader, n_embd=None, n_layer=None)
        if problems:
            raise ControlVectorError(f"{path}: " + "; ".join(problems))
        fields = read_fields(reader)
        metadata = {key: value for key, value in fields.items() if key not in FORMAT_KEYS}
        return cls(read_direction_tensors(reader), str(fields[KEY_MODEL_HINT]), metadata)

    def to_gguf(self, path: Path) -> None:
        """Write this vector as a llama.cpp control-vector file at ``path``: the same bytes as
        ``write_control_vector(path, directions, model_hint=..., metadata=...)``, validated
        before writing and atomic. Raises ControlVectorError (block 0, non-finite values, a
        metadata key outside ``cvgen.*``, a ':' in the file name)."""
        write_control_vector(
            Path(path), self.directions, model_hint=self.model_hint, metadata=self.metadata
        )

    # ----------------------------------------------------------------------- arithmetic

    def __add__(self, other: object) -> ControlVector:
        if not isinstance(other, ControlVector):
            return NotImplemented
        self._check_compatible(other, "add")
        return self._combine(other, sign=1)

    def __sub__(self, other: object) -> ControlVector:
        if not isinstance(other, ControlVector):
            return NotImplemented
        self._check_compatible(other, "subtract")
        return self._combine(other, sign=-1)

    def __mul__(self, scale: object) -> ControlVector:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            return NotImplemented
        factor = np.float32(scale)
        scaled = {block: vector * factor for block, vector in self.directions.items()}
        return ControlVector(scaled, self.model_hint)

    __rmul__ = __mul__

    def __neg__(self) -> ControlVector:
        return ControlVector({k: -vector for k, vector in self.directions.items()}, self.model_hint)

    def _check_compatible(self, other: ControlVector, verb: str) -> None:
        """Raise unless both vectors are for the same model hint and width."""
        if other.model_hint != self.model_hint:
            raise ControlVectorError(
                f"cannot {verb} control vectors for different models: model hint "
                f"{self.model_hint!r} and {other.model_hint!r}"
            )
        if other.n_embd != self.n_embd:
            raise ControlVectorError(
                f"cannot {verb} control vectors of different widths: n_embd {self.n_embd} "
                f"({self.model_hint!r}) and {other.n_embd} ({other.model_hint!r})"
            )

    def _combine(self, other: ControlVector, *, sign: int) -> ControlVector:
        """``self + other`` (sign 1) or ``self - other`` (sign -1), block by block over the
        union of blocks; a block on one side only is taken as it is (negated for ``-``)."""
        combined: dict[int, FloatVector] = {}
        for block in sorted(set(self.directions) | set(other.directions)):
            mine, theirs = self.directions.get(block), other.directions.get(block)
            if mine is not None and theirs is not None:
                combined[block] = mine + theirs if sign > 0 else mine - theirs
            elif mine is not None:
                combined[block] = mine
            elif theirs is not None:
                combined[block] = theirs if sign > 0 else -theirs
        return ControlVector(combined, self.model_hint)

    # ----------------------------------------------------------------------- comparison

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlVector):
            return NotImplemented
        return (
            self.model_hint == other.model_hint
            and dict(self.metadata) == dict(other.metadata)
            and self.blocks == other.blocks
            and all(np.array_equal(self.directions[k], other.directions[k]) for k in self.blocks)
        )

    def __repr__(self) -> str:
        blocks = self.blocks
        return (
            f"ControlVector(model_hint={self.model_hint!r}, n_embd={self.n_embd}, "
            f"blocks={blocks[0]}..{blocks[-1]} ({len(blocks)}), metadata={sorted(self.metadata)})"
        )


def _frozen(directions: Mapping[int, object]) -> dict[int, FloatVector]:
    """Validate the block map and return read-only float32 copies in ascending block order."""
    if not directions:
        raise ControlVectorError("control vector: no directions given (at least one block)")
    vectors: dict[int, FloatVector] = {}
    for block in directions:
        if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 0:
            raise ControlVectorError(f"control vector: block index {block!r} is not an int >= 0")
        vectors[int(block)] = _frozen_vector(int(block), directions[block])
    ordered = {block: vectors[block] for block in sorted(vectors)}
    first_block, first = next(iter(ordered.items()))
    for block, vector in ordered.items():
        if vector.shape != first.shape:
            raise ControlVectorError(
                f"control vector: direction for block {block} has length {vector.shape[0]}, "
                f"but block {first_block} has length {first.shape[0]}"
            )
    return ordered


def _frozen_vector(block: int, vector: object) -> FloatVector:
    """One direction as a read-only float32 copy of shape ``(n_embd,)``."""
    array = np.asarray(vector)
    if array.dtype.kind not in "fiu" or array.ndim != 1 or array.shape[0] == 0:
        raise ControlVectorError(
            f"control vector: direction for block {block} has dtype {array.dtype} and shape "
            f"{array.shape}, expected real numbers of shape (n_embd,)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        result = np.array(array, dtype=np.float32)
    result.flags.writeable = False
    return result
