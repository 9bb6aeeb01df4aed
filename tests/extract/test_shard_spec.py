"""Shard specs: i/N parsing, the split of the samples, and the shard that torchrun's and SLURM's
environments pick."""

from __future__ import annotations

import pytest

from cvgen.extract.shard_descriptions import format_rows
from cvgen.extract.shard_spec import (
    ShardError,
    ShardSpec,
    local_process,
    resolve_shard,
    slurm_array_shard,
)


@pytest.mark.parametrize("n", [0, 1, 5, 16, 17])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 20])
def test_the_shards_of_a_split_cover_every_sample_once(n: int, count: int) -> None:
    rows = [list(ShardSpec(index, count).rows(n)) for index in range(count)]
    assert sorted(row for part in rows for row in part) == list(range(n))
    sizes = [len(part) for part in rows]
    assert max(sizes) - min(sizes) <= 1
    assert all(part == list(range(part[0], part[-1] + 1)) for part in rows if part)


def test_shard_spec_parsing() -> None:
    assert ShardSpec.parse("2/4") == ShardSpec(2, 4) and str(ShardSpec(2, 4)) == "2/4"
    assert list(ShardSpec(1, 3).rows(16)) == [5, 6, 7, 8, 9]
    with pytest.raises(ShardError, match=r"--shard: '4/4' needs 0 <= i < N"):
        ShardSpec.parse("4/4")
    with pytest.raises(ShardError, match=r"--shard: 'two/4' is not i/N"):
        ShardSpec.parse("two/4")
    assert format_rows([0, 1, 2, 5, 7, 8]) == "0..2, 5, 7..8" and format_rows([]) == "none"


def test_torchrun_environment_picks_the_shard_and_the_local_process() -> None:
    torchrun = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}
    assert resolve_shard(None, torchrun) == ShardSpec(5, 16)
    assert resolve_shard("auto", torchrun) == ShardSpec(5, 16)
    assert resolve_shard("0/2", torchrun) == ShardSpec(0, 2)  # an explicit --shard wins
    assert resolve_shard(None, {}) == ShardSpec(0, 1)
    assert local_process(torchrun) == (1, 8) and local_process({}) is None
    with pytest.raises(ShardError, match=r"RANK=16 is not in 0..WORLD_SIZE-1 \(WORLD_SIZE=16\)"):
        resolve_shard(None, {**torchrun, "RANK": "16"})
    with pytest.raises(ShardError, match="WORLD_SIZE='x' is not a whole number"):
        resolve_shard(None, {**torchrun, "WORLD_SIZE": "x"})


def test_slurm_array_environment_picks_the_shard() -> None:
    def task(task_id: int, count: int, first: int, step: int = 1) -> dict[str, str]:
        return {
            "SLURM_ARRAY_TASK_ID": str(task_id),
            "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_ARRAY_TASK_MIN": str(first),
            "SLURM_ARRAY_TASK_STEP": str(step),
        }

    assert resolve_shard("auto", task(0, 8, 0)) == ShardSpec(0, 8)  # --array=0-7
    assert resolve_shard("auto", task(8, 8, 1)) == ShardSpec(7, 8)  # --array=1-8
    assert resolve_shard("auto", task(6, 8, 0, 2)) == ShardSpec(3, 8)  # --array=0-14:2
    # a SLURM array alone does not shard a run without --shard auto
    assert resolve_shard(None, task(3, 8, 0)) == ShardSpec(0, 1)
    with pytest.raises(ShardError, match="not on an evenly spaced array; pass --shard i/N"):
        slurm_array_shard(task(5, 8, 0, 2))
    with pytest.raises(ShardError, match="--shard auto: neither RANK/WORLD_SIZE"):
        resolve_shard("auto", {})
