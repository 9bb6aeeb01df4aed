"""`cvgen generate`, and the same run split in two: `cvgen collect` (one shard of the states)
and `cvgen solve` (merge the shards, write the pack)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cvgen.cli.common import (
    STORE_HELP,
    force_option,
    one_line_errors,
    pack_out_option,
    quiet_logging,
    settings_from_options,
    settings_options,
)
from cvgen.cli.evaluate import echo_eval_summary
from cvgen.common.messages import plural

if TYPE_CHECKING:
    from cvgen.generate.choices import Chooser
    from cvgen.generate.pipeline import PackResult
    from cvgen.generate.settings import GenerateSettings


@click.command()
@settings_options
@click.option("--all-axes", is_flag=True, help="Extract every shipped axis.")
@pack_out_option
@force_option
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="State store folder (default: $CVGEN_CACHE/states or ~/.cache/cvgen/states).",
)
@click.option(
    "--eval",
    "run_eval",
    is_flag=True,
    help="Then evaluate the pack with `cvgen eval`'s defaults and store its safe scales.",
)
@click.option(
    "--eval-backend",
    type=click.Choice(["auto", "llama.cpp", "hf"]),
    default="auto",
    show_default=True,
    help="The backend of --eval.",
)
@click.option(
    "--select",
    is_flag=True,
    help="Pick each axis's method (its own or the other of cross-covariance and mean-diff) "
    "and block band (all, first half, middle third or last half of its blocks) by the "
    "propensity change at a matched KL of 0.05 nats/token, on half of 12 held-out prompts, and "
    "report the other half; the pack records both halves' figures. It runs the model after "
    "the collection (about 2.5 min per axis for SmolLM2-135M on 2 CPU cores). Off by default: "
    "on 7 axes of SmolLM2-135M the pick beat the default on the held-out half only for tense "
    "(0.557 against 0.299), and lost on storytelling (0.603 against 0.677); see "
    "docs/method-comparison.md. Needs each axis's probes (eval/probes/).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@one_line_errors
def generate(
    out: Path,
    force: bool,
    all_axes: bool,
    cache_dir: Path | None,
    run_eval: bool,
    eval_backend: str,
    select: bool,
    quiet: bool,
    **values: Any,
) -> None:
    """Collect states, solve each block and write a pack of GGUF control vectors.

    Three files per axis: <model>-<axis>__debias.gguf, __<negative>.gguf, __<positive>.gguf.
    Collected states are stored by content, so a re-run reuses them and a killed run resumes.
    """
    from cvgen.generate.pipeline import generate_pack
    from cvgen.pack.readme import example_command

    settings = settings_from_options(values, all_axes=all_axes)
    choose = _chooser(settings) if select else None
    with quiet_logging(quiet=quiet):
        started = time.perf_counter()
        result = generate_pack(
            settings,
            out,
            store_root=cache_dir,
            show_progress=not quiet,
            force=force,
            choose=choose,
        )
        elapsed = time.perf_counter() - started
    _echo_pack_summary(result, elapsed)
    click.echo("\nexample:")
    click.echo(example_command(result.manifest, result.out))
    if run_eval:
        with quiet_logging(quiet=quiet):
            from cvgen.eval.pack_eval import ModelChoice, evaluate_pack

            trust = settings.trust_remote_code
            report = evaluate_pack(
                result.out,
                choice=ModelChoice(settings.model, eval_backend, settings.device, "auto", trust),
                progress=not quiet,
                announce=lambda message: click.echo(message, err=True),
            ).report
        echo_eval_summary(report, result.out, stored=True)


@click.command()
@settings_options
@click.option("--all-axes", is_flag=True, help="Extract every shipped axis.")
@click.option(
    "--shard",
    default=None,
    metavar="i/N|auto",
    help="Collect shard i of N (0-based): a contiguous slice of the samples, for every axis. "
    "auto: RANK/WORLD_SIZE under torchrun, else SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT. "
    "Default: RANK/WORLD_SIZE when set, else the whole run (0/1).",
)
@click.option("--store", type=click.Path(path_type=Path), default=None, help=STORE_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@one_line_errors
def collect(
    all_axes: bool, shard: str | None, store: Path | None, quiet: bool, **values: Any
) -> None:
    """Collect one shard of a run's states into the store, for `cvgen solve` to merge.

    Takes the options of `cvgen generate` (without --out). Run it once per shard, on any
    processes or machines (torchrun, a SLURM array job, any scheduler), then run `cvgen solve`
    with the same options on a store holding every shard.
    """
    from cvgen.extract.shard_descriptions import format_rows
    from cvgen.extract.shard_spec import local_process, resolve_shard
    from cvgen.generate.sharded import collect_shard

    settings = settings_from_options(values, all_axes=all_axes)
    spec = resolve_shard(shard, os.environ)
    with quiet_logging(quiet=quiet):
        started = time.perf_counter()
        result = collect_shard(
            settings,
            spec,
            store_root=store,
            show_progress=not quiet,
            local_process=local_process(os.environ),
        )
        elapsed = time.perf_counter() - started
    collect_seconds = result.timings.get("collect", 0.0)
    rate = result.collected_prompts / collect_seconds if collect_seconds > 0 else 0.0
    click.echo(
        f"shard {result.shard}: samples {format_rows(result.samples)} of {settings.samples}, "
        f"{result.collected_prompts} prompts run"
        + (f" ({rate:.2f} prompts/s)" if result.collected_prompts else "")
        + f", {result.reused_prompts} reused from the store, in {elapsed:.1f} s"
    )
    click.echo(f"described by {result.description}")


@click.command()
@settings_options
@click.option("--all-axes", is_flag=True, help="Extract every shipped axis.")
@pack_out_option
@force_option
@click.option("--store", type=click.Path(path_type=Path), default=None, help=STORE_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@one_line_errors
def solve(
    out: Path, force: bool, all_axes: bool, store: Path | None, quiet: bool, **values: Any
) -> None:
    """Merge the shards collected by `cvgen collect` and write the pack, like generate.

    Takes the same options as the collect runs. Refuses a set of shards that misses or repeats
    a sample, holds an unfinished shard, or was collected with another model, dtype,
    quantisation, blocks or prompts. Loads no weights. With --dtype auto, the shards' dtype.
    """
    from cvgen.generate.sharded import solve_pack
    from cvgen.pack.readme import example_command

    settings = settings_from_options(values, all_axes=all_axes)
    with quiet_logging(quiet=quiet):
        started = time.perf_counter()
        result = solve_pack(settings, out, store_root=store, force=force)
        elapsed = time.perf_counter() - started
    manifest = result.manifest
    layers = manifest.extra["layers"]
    click.echo(
        f"wrote {result.out}: {plural(len(manifest.axes), 'axis', 'axes')} x 3 files, blocks "
        f"{layers[0]}..{layers[-1]}, from shards "
        f"{', '.join(manifest.extra['shards'])}, in {elapsed:.1f} s"
    )
    click.echo("\nexample:")
    click.echo(example_command(manifest, result.out))


def _chooser(settings: GenerateSettings) -> Chooser:
    """`--select`'s chooser, after refusing (before any model work) an axis without probes."""
    from cvgen.eval.selection import SelectSettings, check_select_axes, chooser
    from cvgen.generate.inputs import load_inputs

    check_select_axes({axis.name: axis.classes for axis in load_inputs(settings).axes})
    return chooser(SelectSettings(), announce=lambda message: click.echo(message, err=True))


def _echo_pack_summary(result: PackResult, elapsed: float) -> None:
    """What `cvgen generate` made: the axes, blocks and seconds, and the prompts it ran."""
    manifest = result.manifest
    layers = manifest.extra["layers"]
    collect_seconds = result.timings.get("collect", 0.0)
    rate = result.collected_prompts / collect_seconds if collect_seconds > 0 else 0.0
    per_sample = 1 + 2 * len(manifest.axes)
    click.echo(
        f"wrote {result.out}: {plural(len(manifest.axes), 'axis', 'axes')} x 3 files, blocks "
        f"{layers[0]}..{layers[-1]}, in {elapsed:.1f} s"
        + (
            f" (model load {result.timings['load_model']:.1f} s)"
            if "load_model" in result.timings
            else ""
        )
    )
    if result.collected_prompts:
        click.echo(
            f"prompts run: {result.collected_prompts} in {collect_seconds:.1f} s "
            f"({rate:.2f} prompts/s, {rate / per_sample:.2f} samples/s at {per_sample} prompts "
            f"per sample); reused from the store: {result.reused_prompts}"
        )
    else:
        click.echo(f"prompts run: 0; all {result.reused_prompts} reused from the store")
