"""Reading block outputs inside llama.cpp's graph: the scheduler's eval callback (`cb_eval`).

The scheduler asks the callback about every node of the graph (`ask=True`); a node it wants
ends a sub-graph, which is computed, and the callback is then called again with the result
(`ask=False`). Every block ends with its output named `l_out-N` (after the control vector is
added, so `direction.k` is in `l_out-k`), the tensor llama.cpp's own cvector-generator reads.

Its rows are the ubatch's tokens, except in the last block, where the graph keeps only the
output rows before the FFN (`ggml_get_rows(cur, inp_out_ids)`): rows equal to the tokens are
read at the output tokens' batch indices, rows equal to the outputs are read in order.

An exception inside a ctypes callback cannot cross into C: it is stored, the compute is stopped,
and `finish` raises it after `llama_decode` returns.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from cvgen.engine.binding import GGML_TYPE_F32, Binding, EngineError, TensorHead


class MissingBlocks(EngineError):
    """Blocks whose output the graph did not give exactly once (`blocks`)."""

    def __init__(self, blocks: list[int]):
        super().__init__(
            f"blocks {blocks} were not read exactly once from the graph (l_out-N); this "
            "architecture's graph does not name every block's output"
        )
        self.blocks = blocks


class BlockCapture:
    """The eval callback of one context: when armed by `begin`, it copies the rows of the
    wanted blocks' `l_out-N` at the output tokens into a (len(wanted), outputs, n_embd)
    float32 array that `finish` returns."""

    def __init__(self, binding: Binding, n_layer: int, n_embd: int):
        self.ggml = binding.ggml
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.names = {f"l_out-{block}".encode(): block for block in range(n_layer)}
        self.wanted: dict[int, int] = {}  # block -> its index in the output
        self.armed = False
        self._error: BaseException | None = None
        self._token_rows: Sequence[int] = ()
        self._n_tokens = 0
        self._states = np.zeros((0, 0, n_embd), np.float32)
        self._counts: list[int] = []
        self.callback = binding.llama.ggml_backend_sched_eval_callback(self._eval)

    def begin(self, wanted: Sequence[int], n_tokens: int, output_rows: Sequence[int]) -> None:
        """Arm for one decode of `n_tokens` tokens whose outputs are at `output_rows`."""
        self.wanted = {block: index for index, block in enumerate(wanted)}
        self._n_tokens = n_tokens
        self._token_rows = list(output_rows)
        self._states = np.zeros((len(wanted), len(output_rows), self.n_embd), np.float32)
        self._counts = [0] * len(wanted)
        self._error = None
        self.armed = True

    def finish(self) -> np.ndarray:
        """Disarm; the states of the decode, after checking each wanted block was read once."""
        self.armed = False
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        missing = [block for block, index in self.wanted.items() if self._counts[index] != 1]
        if missing:
            raise MissingBlocks(missing)
        return self._states

    def abandon(self) -> None:
        """Disarm after a failed decode."""
        self.armed = False
        self._error = None

    def _eval(self, tensor: int, ask: bool, user_data: Any) -> bool:
        try:
            name = self.ggml.ggml_get_name(tensor)
            block = self.names.get(name)
            if ask:
                return bool(self.armed and block is not None and block in self.wanted)
            if not self.armed or block is None or block not in self.wanted:
                return True
            self._read(tensor, block)
            return True
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
            self._error = exc
            return False

    def _read(self, tensor: int, block: int) -> None:
        head = TensorHead.from_address(tensor)
        if head.type != GGML_TYPE_F32 or head.ne[0] != self.n_embd or head.nb[0] != 4:
            raise EngineError(
                f"l_out-{block}: type {head.type}, shape {list(head.ne)}: expected float32 rows "
                f"of {self.n_embd}"
            )
        rows = int(head.ne[1])
        outputs = len(self._token_rows)
        if rows == self._n_tokens:
            picked: Sequence[int] = self._token_rows
        elif rows == outputs:
            picked = range(outputs)
        else:
            raise EngineError(
                f"l_out-{block}: {rows} rows, expected {self._n_tokens} tokens or {outputs} outputs"
            )
        index = self.wanted[block]
        target = self._states[index]
        stride = int(head.nb[1])
        size = self.n_embd * 4
        for column, row in enumerate(picked):
            destination = target[column].ctypes.data_as(ctypes.c_void_p)
            self.ggml.ggml_backend_tensor_get(tensor, destination, row * stride, size)
        self._counts[index] += 1
