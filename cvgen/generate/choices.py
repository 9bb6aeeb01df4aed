"""What a pack writes for an axis when something other than the settings chose it
(`cvgen generate --select`, in `cvgen.eval.selection`): the method, the blocks, and the record of
the choice that pack.json keeps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cvgen.generate.prepare import PreparedRun
from cvgen.solve.direction import BlockDirection


@dataclass(frozen=True)
class AxisChoice:
    """One axis of the pack: `method` on `blocks`, and the record of the choice
    (`axes.<name>.selection` in pack.json)."""

    method: str
    blocks: tuple[int, ...]
    record: dict[str, Any]


# (axis name, method) -> the blocks that method solves from the run's states (none: empty)
Solver = Callable[[str, str], dict[int, BlockDirection]]
# (the run, after its collection; its solver) -> the choice of each axis that has one
Chooser = Callable[[PreparedRun, Solver], Mapping[str, AxisChoice]]
