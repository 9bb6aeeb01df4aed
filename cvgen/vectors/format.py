"""The control-vector GGUF format, as cvgen writes it and llama.cpp 0c1e570 reads it.

A control-vector file holds one F32 tensor ``direction.k`` of length ``n_embd`` per steered
block. llama.cpp adds ``direction.k`` to the output of block ``k`` (0-based, after the FFN
residual), so cvgen writes the vector measured at block ``k`` as ``direction.k``. Block 0
cannot be steered: llama.cpp rejects ``direction.0``.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from cvgen.common.errors import CvgenError

ARCHITECTURE = "controlvector"
KEY_ARCHITECTURE = "general.architecture"
KEY_MODEL_HINT = "controlvector.model_hint"
KEY_LAYER_COUNT = "controlvector.layer_count"
METADATA_PREFIX = "cvgen."
KEY_LAYER_CONVENTION = "cvgen.layer_convention"
LAYER_CONVENTION = "direction.k = output of block k (0-based)"
DIRECTION_PREFIX = "direction"
# The keys the writer derives itself; every other key/value field is the file's metadata.
FORMAT_KEYS = frozenset({KEY_ARCHITECTURE, KEY_MODEL_HINT, KEY_LAYER_COUNT, KEY_LAYER_CONVENTION})
FLOAT32_MAX = float(np.finfo(np.float32).max)

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# What std::stoi accepts at the start of a string: C whitespace, an optional sign, digits.
_STOI_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")

MetadataValue = str | int | float | bool | list[int]
FloatVector = npt.NDArray[np.float32]


class ControlVectorError(CvgenError, ValueError):
    """A control-vector file (or the data for one) that llama.cpp or cvgen would refuse.

    The message is one line naming the file, the field or tensor, and the offending value.
    """


def parse_direction_index(name: str) -> int | None:
    """The block index llama.cpp reads from a tensor name, or None where it fails to parse.

    Mirrors ``common_control_vector_load_one``: the text before the first '.' must be
    ``direction``, and the rest goes through ``std::stoi`` (leading whitespace, optional sign,
    digits; trailing text ignored; int32 overflow fails). A negative result is returned as is.
    """
    head, dot, tail = name.partition(".")
    if not dot or head != DIRECTION_PREFIX:
        return None
    match = _STOI_PREFIX.match(tail)
    if match is None:
        return None
    value = int(match.group(1))
    return value if _INT32_MIN <= value <= _INT32_MAX else None


def l2_norm(vector: np.ndarray) -> float:
    """The L2 norm of a 1-D vector, computed in float64 so that float32 values near the top
    of their range (3e38) give a finite norm instead of overflowing to inf."""
    return float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))
