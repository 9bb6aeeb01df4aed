"""`generate_pack`: the one function that composes the stages into a pack.

    data -> sampler -> prompts -> collect (model, store) -> solve -> vectors -> pack

The stages never call each other; this module (with `inputs`, `prepare` and `collection`)
passes plain data between them. `cvgen.generate.sharded` splits the same run over processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.common.preflight import check_run_folders
from cvgen.data.shipped import Axis
from cvgen.extract.store import BlockStates, default_store_root
from cvgen.generate.choices import AxisChoice, Chooser
from cvgen.generate.collection import collect_run
from cvgen.generate.inputs import BASELINE, GenerateError, RunInputs, samples_rows
from cvgen.generate.manifest import file_metadata, record_solved_axis
from cvgen.generate.prepare import PreparedRun
from cvgen.generate.settings import GenerateSettings
from cvgen.llamacpp.commands import default_model_path
from cvgen.pack.names import PAGE_NAME, ROLES
from cvgen.pack.page import render_page
from cvgen.pack.presets import carried_presets
from cvgen.pack.readme import example_command, render_pack_readme
from cvgen.pack.records import PackManifest
from cvgen.pack.writer import check_pack_target, write_pack
from cvgen.solve.blocks import solve_blocks
from cvgen.solve.direction import BlockDirection, SolverOptions
from cvgen.solve.methods import axis_method

Vectors = dict[str, dict[str, dict[int, np.ndarray]]]  # axis -> role -> block -> vector
FileMetadata = dict[str, dict[str, dict[str, Any]]]  # axis -> role -> cvgen.* keys


@dataclass
class PackResult:
    """What `generate_pack` made: the pack folder, its manifest and run figures."""

    out: Path
    manifest: PackManifest
    collected_prompts: int
    reused_prompts: int
    timings: dict[str, float] = field(default_factory=dict)


def _solve_axis(
    settings: GenerateSettings,
    axis: Axis,
    arrays: Mapping[str, BlockStates],
    stored_blocks: Sequence[int],
    method: str | None = None,
) -> dict[int, BlockDirection]:
    """Solve every steerable block of one axis: block -> direction (blocks with none left out).

    The first stored block is only the reference h_(k-1) of the first steerable one. `method`:
    the solver (default: the axis's own under `--method`)."""
    method = method or axis_method(settings.method, axis.method)
    solved = solve_blocks(
        arrays[f"{axis.name}/negative"],
        arrays[f"{axis.name}/positive"],
        arrays[BASELINE],
        stored_blocks[1:],
        features=settings.features,
        method=method,
        options=SolverOptions(tau=settings.tau, eigen_candidates=settings.eigen_candidates),
    )
    if not solved:
        raise GenerateError(
            f"axis '{axis.name}': no block passed the {method} solver "
            f"(tau={settings.tau}); add samples or lower --tau"
        )
    return solved


def _solve_into_manifest(
    settings: GenerateSettings,
    inputs: RunInputs,
    arrays: Mapping[str, BlockStates],
    stored_blocks: list[int],
    manifest: PackManifest,
    model_name: str,
    choices: Mapping[str, AxisChoice],
) -> tuple[Vectors, FileMetadata]:
    """Solve every axis (an axis in `choices` with the chosen method, on the chosen blocks);
    return the vectors and file metadata per axis and role, and record each axis's blocks,
    Fisher ratios and choice in the manifest."""
    vectors: Vectors = {}
    metadata: FileMetadata = {}
    for axis in inputs.axes:
        choice = choices.get(axis.name)
        method = choice.method if choice else axis_method(settings.method, axis.method)
        solved = _solve_axis(settings, axis, arrays, stored_blocks, method)
        if choice:
            solved = {block: solved[block] for block in choice.blocks}
        vectors[axis.name] = {
            role: {block: getattr(direction, role) for block, direction in solved.items()}
            for role in ROLES
        }
        metadata[axis.name] = {
            role: {**file_metadata(settings, axis, role, model_name), "cvgen.method": method}
            for role in ROLES
        }
        record_solved_axis(manifest, axis.name, solved, method)
        if choice:
            manifest.axes[axis.name].extra["selection"] = choice.record
    return vectors, metadata


def _solve_axis_or_none(
    settings: GenerateSettings,
    axis: Axis,
    arrays: Mapping[str, BlockStates],
    stored_blocks: Sequence[int],
    method: str,
) -> dict[int, BlockDirection]:
    """The blocks `method` solves for `axis`; none (an empty dict) where it solves none."""
    try:
        return _solve_axis(settings, axis, arrays, stored_blocks, method)
    except GenerateError:
        return {}


def write_solved_pack(
    run: PreparedRun,
    arrays: Mapping[str, BlockStates],
    out: Path,
    *,
    force: bool,
    choices: Mapping[str, AxisChoice] | None = None,
) -> None:
    """Solve every axis from `arrays` (as `choices` says, for the axes it has) and write the
    pack at `out` (keeping the presets of a pack already there whose axes are all in this one;
    `force` as in `check_pack_target`)."""
    run.manifest.presets = carried_presets(out, run.manifest.axes)
    vectors, metadata = _solve_into_manifest(
        run.settings,
        run.inputs,
        arrays,
        run.stored_blocks,
        run.manifest,
        run.source.name,
        choices or {},
    )
    example = example_command(run.manifest, out)
    readme = render_pack_readme(run.manifest, example)
    page = render_page(
        run.manifest,
        model_path=default_model_path(run.manifest.to_json()),
        vector_dir=str(out),
        pack_label=str(out),
    )
    write_pack(
        out,
        run.manifest,
        vectors,
        metadata,
        samples_rows(run.inputs),
        readme,
        {PAGE_NAME: page},
        force=force,
    )


def generate_pack(
    settings: GenerateSettings,
    out: Path,
    *,
    store_root: Path | None = None,
    show_progress: bool = True,
    force: bool = False,
    choose: Chooser | None = None,
) -> PackResult:
    """Make a pack at `out` for `settings` on this machine: sample, collect (reusing stored
    states), solve, write the GGUF files, `pack.json`, `samples.jsonl`, the pack's README.md
    and `index.html` (the command-line page). The same as `collect_shard` for shard 0/1 followed by `solve_pack`.

    Before any model work, `out` must be absent, empty or a cvgen pack holding only cvgen's
    files (with `force`, any cvgen pack: its other files are deleted with it), and the folders
    must pass `check_run_folders`. With `choose` (`cvgen generate --select`), the axes it
    gives a choice are written with the method and blocks it picked from the collected states."""
    out = check_pack_target(out, force=force)
    root = store_root or default_store_root()
    check_run_folders(out=out, store=root, store_option="--cache-dir")
    run, arrays, collected, timings = collect_run(settings, root, show_progress)
    choices = None
    if choose is not None:
        clock = time.perf_counter()
        by_name = {axis.name: axis for axis in run.inputs.axes}
        choices = choose(
            run,
            lambda axis, method: _solve_axis_or_none(
                settings, by_name[axis], arrays, run.stored_blocks, method
            ),
        )
        timings["select"] = time.perf_counter() - clock
    clock = time.perf_counter()
    write_solved_pack(run, arrays, out, force=force, choices=choices)
    timings["solve_and_write"] = time.perf_counter() - clock
    total = sum(len(texts) for texts in run.rendered.values())
    return PackResult(
        out=out,
        manifest=run.manifest,
        collected_prompts=collected,
        reused_prompts=total - collected,
        timings=timings,
    )
