"""Which shard a `cvgen collect` process works on: `--shard i/N`, or torchrun's RANK and
WORLD_SIZE, or a SLURM array task's place in its array (`resolve_shard`).

Indices are 0-based, like torchrun's RANK: a run in 4 shards has shards 0/4 .. 3/4, and shard
i of N covers a contiguous slice of the sample indices (`ShardSpec.rows`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cvgen.common.errors import CvgenError

SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(CvgenError, ValueError):
    """A shard spec is malformed, or a set of shards cannot be merged; the message says which."""


@dataclass(frozen=True, order=True)
class ShardSpec:
    """Shard `index` of `count` (0-based): a contiguous slice of the sample indices."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardError(
                f"--shard: '{self}' needs 0 <= i < N (shards are numbered from 0, like RANK)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """Parse "i/N", e.g. "0/4" .. "3/4"."""
        match = SHARD_PATTERN.match(text)
        if not match:
            raise ShardError(f"--shard: '{text}' is not i/N (e.g. 0/4), nor 'auto'")
        return cls(int(match.group(1)), int(match.group(2)))

    def rows(self, n: int) -> range:
        """The sample indices of this shard among `n`: [i*n//N, (i+1)*n//N). The N shards
        cover 0..n-1 exactly once; sizes differ by at most one (and may be 0 when N > n)."""
        return range(self.index * n // self.count, (self.index + 1) * n // self.count)


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ShardError(f"environment variable {name}='{value}' is not a whole number") from None


def torchrun_shard(environ: Mapping[str, str]) -> ShardSpec | None:
    """Shard RANK/WORLD_SIZE when torchrun (or any launcher setting both) started us."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    rank, world = _int_variable(environ, "RANK"), _int_variable(environ, "WORLD_SIZE")
    if world < 1 or not 0 <= rank < world:
        raise ShardError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return ShardSpec(rank, world)


def slurm_array_shard(environ: Mapping[str, str]) -> ShardSpec | None:
    """The shard of a SLURM array task: its position among SLURM_ARRAY_TASK_COUNT tasks,
    (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, so --array=0-7,
    1-8 and 0-14:2 all give shards 0/8 .. 7/8."""
    if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
        return None
    task = _int_variable(environ, "SLURM_ARRAY_TASK_ID")
    count = _int_variable(environ, "SLURM_ARRAY_TASK_COUNT")
    first = (
        _int_variable(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
    )
    step = (
        _int_variable(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
    )
    position, remainder = divmod(task - first, max(step, 1))
    if remainder or not 0 <= position < count:
        raise ShardError(
            f"SLURM array task {task} (min {first}, step {step}, count {count}) is not on an "
            "evenly spaced array; pass --shard i/N explicitly"
        )
    return ShardSpec(position, count)


def resolve_shard(text: str | None, environ: Mapping[str, str]) -> ShardSpec:
    """The shard a `cvgen collect` process works on.

    - "i/N": that shard;
    - "auto": torchrun's RANK/WORLD_SIZE, else the SLURM array task, else an error;
    - None (no --shard): RANK/WORLD_SIZE when set, else the whole run (0/1).
    """
    if text is None:
        return torchrun_shard(environ) or ShardSpec(0, 1)
    if text.strip() == "auto":
        found = torchrun_shard(environ) or slurm_array_shard(environ)
        if found is None:
            raise ShardError(
                "--shard auto: neither RANK/WORLD_SIZE (torchrun) nor SLURM_ARRAY_TASK_ID/"
                "SLURM_ARRAY_TASK_COUNT (a SLURM array job) is set; pass --shard i/N"
            )
        return found
    return ShardSpec.parse(text)


def local_process(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(LOCAL_RANK, LOCAL_WORLD_SIZE) under torchrun: this process's place among the
    processes of its node; None when LOCAL_RANK is not set."""
    if "LOCAL_RANK" not in environ:
        return None
    local_rank = _int_variable(environ, "LOCAL_RANK")
    size = _int_variable(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else 1
    return local_rank, size
