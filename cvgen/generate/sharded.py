"""A run split over processes or machines: `collect_shard` collects one slice of the samples
into the store, `solve_pack` merges every shard and writes the pack; `collected_states` returns
a run's complete states without writing a pack (for callers that solve them their own way)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cvgen.common.preflight import check_run_folders
from cvgen.data.shipped import Axis
from cvgen.extract.loading import resolve_device
from cvgen.extract.shard_descriptions import (
    ExpectedRun,
    ShardDescription,
    plan_digest,
    read_shard_descriptions,
    select_shards,
)
from cvgen.extract.shard_merge import MergedStates, open_shard_arrays
from cvgen.extract.shard_spec import ShardSpec
from cvgen.extract.store import StateArray, default_store_root
from cvgen.generate.collection import array_keys, collect_pending, collect_run, open_arrays
from cvgen.generate.pipeline import PackResult, write_solved_pack
from cvgen.generate.prepare import PreparedRun, prepare_run, tokenize_pending
from cvgen.generate.settings import GenerateSettings
from cvgen.pack.writer import check_pack_target


@dataclass
class CollectedStates:
    """A run's stored states, complete: one array per list of texts ("baseline",
    "<axis>/negative", "<axis>/positive"), each (stored blocks, samples, width)."""

    arrays: dict[str, StateArray]
    stored_blocks: list[int]
    axes: list[Axis]
    n_layer: int
    collected_prompts: int
    timings: dict[str, float] = field(default_factory=dict)


def collected_states(
    settings: GenerateSettings, *, store_root: Path | None = None, show_progress: bool = True
) -> CollectedStates:
    """Collect whatever of the run `settings` is missing from the store (loading the weights
    only then), and return its arrays opened, with the stored blocks (the block before the
    first kept one, then every kept block) and the axes. Solves and writes nothing: for
    callers that solve the states their own way (e.g. a comparison of methods)."""
    root = store_root or default_store_root()
    check_run_folders(out=None, store=root, store_option="--cache-dir")
    run, arrays, collected, timings = collect_run(settings, root, show_progress)
    return CollectedStates(
        arrays=arrays,
        stored_blocks=list(run.stored_blocks),
        axes=list(run.inputs.axes),
        n_layer=run.manifest.model.n_layer,
        collected_prompts=collected,
        timings=timings,
    )


@dataclass
class ShardResult:
    """What `collect_shard` did: the shard, its description file and run figures."""

    shard: ShardSpec
    description: Path
    samples: range
    collected_prompts: int
    reused_prompts: int
    timings: dict[str, float] = field(default_factory=dict)


def collect_shard(
    settings: GenerateSettings,
    shard: ShardSpec,
    *,
    store_root: Path | None = None,
    show_progress: bool = True,
    local_process: tuple[int, int] | None = None,
) -> ShardResult:
    """Collect shard `shard` of the run `settings` into the store: the states of sample rows
    `shard.rows(samples)` of every array, plus `<store>/shards/<key>.json` describing them.
    A re-run reuses and resumes it like `generate_pack`. `local_process` is torchrun's
    (LOCAL_RANK, LOCAL_WORLD_SIZE), which picks this process's GPU(s)."""
    clock = time.perf_counter()
    resolve_device(settings.device)
    root = store_root or default_store_root()
    check_run_folders(out=None, store=root, store_option="--store")
    run = prepare_run(settings)
    rows = shard.rows(len(run.inputs.plan))
    subset = {name: [texts[row] for row in rows] for name, texts in run.rendered.items()}
    dtype_name = run.dtype_name()
    arrays = (
        open_arrays(
            subset,
            root=root,
            identity=run.identity,
            dtype_name=dtype_name,
            stored_blocks=run.stored_blocks,
            width=run.n_embd,
            quantization=settings.load_in,
            shard=shard,
        )
        if len(rows)
        else {}
    )
    description = _describe_shard(run, shard, rows, arrays).write(root)
    tokens = tokenize_pending(run, subset, arrays)
    timings = {"prepare": time.perf_counter() - clock}
    collected = collect_pending(
        run, arrays, tokens, timings, show_progress=show_progress, local_process=local_process
    )
    total = sum(len(texts) for texts in subset.values()) if len(rows) else 0
    return ShardResult(shard, description, rows, collected, total - collected, timings)


def _describe_shard(
    run: PreparedRun, shard: ShardSpec, rows: range, arrays: dict[str, StateArray]
) -> ShardDescription:
    """What `solve_pack` checks a shard against: its rows, the run's plan, model, dtype,
    quantisation, blocks, width, settings and the keys of its arrays."""
    return ShardDescription(
        spec=shard,
        samples=tuple(rows),
        plan_samples=len(run.inputs.plan),
        plan_digest=plan_digest(run.rendered),
        model_identity=run.identity,
        model_name=run.source.name,
        dtype=run.dtype_name(),
        quantization=run.settings.load_in,
        blocks=tuple(run.stored_blocks),
        width=run.n_embd,
        arrays={name: array.key for name, array in arrays.items()},
        settings=run.settings.to_dict(),
    )


def solve_pack(
    settings: GenerateSettings,
    out: Path,
    *,
    store_root: Path | None = None,
    force: bool = False,
) -> PackResult:
    """Write the pack of `settings` at `out` from shards collected by `collect_shard`
    (any processes or machines, any split) into the store `store_root`. Needs no weights.

    Refuses, with a one-line `ShardError`, a set of shards that misses or repeats a sample,
    holds an incomplete shard, or was collected with another model, dtype, quantisation,
    blocks or prompt texts. With --dtype auto any one dtype of the shards is accepted."""
    clock = time.perf_counter()
    out = check_pack_target(out, force=force)
    root = store_root or default_store_root()
    check_run_folders(out=out, store=root, store_option="--store", store_written=False)
    run = prepare_run(settings)
    expected = ExpectedRun(
        model_identity=run.identity,
        model_name=run.source.name,
        dtype=None if settings.dtype == "auto" else settings.dtype,
        quantization=settings.load_in,
        blocks=tuple(run.stored_blocks),
        plan_digest=plan_digest(run.rendered),
        plan_samples=len(run.inputs.plan),
        settings=settings.to_dict(),
    )
    shards = select_shards(read_shard_descriptions(root), expected, root=root)
    merged = {
        name: MergedStates(n=len(run.inputs.plan), width=run.n_embd, parts=[])
        for name in run.rendered
    }
    for shard in shards:
        subset = {
            name: [texts[row] for row in shard.samples] for name, texts in run.rendered.items()
        }
        keys = (
            array_keys(
                subset,
                identity=run.identity,
                dtype_name=shard.dtype,
                stored_blocks=run.stored_blocks,
                quantization=settings.load_in,
                shard=shard.spec,
            )
            if shard.samples
            else {}
        )
        for name, array in open_shard_arrays(shard, keys, root=root).items():
            merged[name].parts.append((shard.samples, array))
    run.manifest.extra["shards"] = [str(shard.spec) for shard in shards]
    timings = {"prepare": time.perf_counter() - clock}
    clock = time.perf_counter()
    write_solved_pack(run, merged, out, force=force)
    timings["solve_and_write"] = time.perf_counter() - clock
    total = sum(len(texts) for texts in run.rendered.values())
    return PackResult(
        out=out, manifest=run.manifest, collected_prompts=0, reused_prompts=total, timings=timings
    )
