"""The `cvgen` command line: parse options, call the library, turn its errors into one line.

Commands: generate, collect, solve, inspect, commands, compare, axes, html, preset (add, list,
remove). Library errors become `click.ClickException` here and only here, so every failure
prints `Error: <one line>` and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cvgen import __version__
from cvgen.common.errors import CvgenError
from cvgen.common.messages import plural
from cvgen.data.shipped import load_axis, shipped_axis_names
from cvgen.generate.settings import GenerateSettings, LayerSkip, option_flag
from cvgen.llamacpp.commands import (
    TARGETS,
    build_command,
    combination_advice,
    default_model_path,
    parse_assignment,
    preset_selection,
)
from cvgen.llamacpp.compare import (
    DEFAULT_PROMPT,
    check_pack_fits_model,
    compare_scales,
    format_side_by_side,
)
from cvgen.pack.writer import PackError, load_manifest
from cvgen.solve.methods import METHODS
from cvgen.vectors.gguf_io import (
    describe_control_vector,
    llamacpp_problems,
    read_control_vector,
    read_model_file_info,
)

if TYPE_CHECKING:
    from cvgen.eval.records import EvalReport

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    """Turn cvgen's own exceptions into a one-line `click.ClickException`; any other exception
    is a bug, reported in one line too (set CVGEN_DEBUG=1 for the traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CvgenError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:
            if os.environ.get("CVGEN_DEBUG") == "1":
                raise
            message = " ".join(str(exc).split()) or "no message"
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {message} (CVGEN_DEBUG=1 shows the traceback)"
            ) from None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cvgen")
def main() -> None:
    """Generate llama.cpp control vectors from contrastive prompts.

    Typical use: `cvgen generate --model M.gguf --axis language --out pack`, then
    `cvgen commands pack --set language=0.5` for the llama-server command line.
    """


def settings_options(command: F) -> F:
    """Add one click option per `GenerateSettings` field: flag, default, help and choices all
    come from the field, so the settings object and the CLI cannot drift apart."""
    for setting in reversed(dataclasses.fields(GenerateSettings)):
        meta = setting.metadata
        declarations = [option_flag(setting.name), *([meta["short"]] if meta["short"] else [])]
        kwargs: dict[str, Any] = {"help": meta["help"]}
        default = (
            setting.default_factory()
            if setting.default_factory is not dataclasses.MISSING
            else setting.default
        )
        if setting.name == "axes":
            kwargs["multiple"] = True
        elif default is dataclasses.MISSING:
            kwargs["required"] = True
        elif isinstance(default, bool):
            kwargs.update(is_flag=True, default=default)
        else:
            kwargs["default"] = default.text if isinstance(default, LayerSkip) else default
            kwargs["show_default"] = default is not None
            if isinstance(default, int | float):
                kwargs["type"] = type(default)
        choices = meta["choices"]
        if choices is not None:
            kwargs["type"] = click.Choice(sorted(METHODS) if choices == "methods" else choices)
        command = click.option(*declarations, setting.name, **kwargs)(command)
    return command


pack_out_option = click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Pack folder to write. An existing one is replaced only when it is a cvgen pack "
    "holding only the files cvgen writes (see --force); any other folder is refused.",
)
force_option = click.option(
    "--force",
    is_flag=True,
    help="Replace the cvgen pack at --out even when it holds files cvgen did not write: "
    "they are DELETED with the old pack. A folder that is not a cvgen pack is still refused.",
)


@main.command()
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
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@one_line_errors
def generate(
    out: Path,
    force: bool,
    all_axes: bool,
    cache_dir: Path | None,
    run_eval: bool,
    eval_backend: str,
    quiet: bool,
    **values: Any,
) -> None:
    """Collect states, solve each block and write a pack of GGUF control vectors.

    Three files per axis: <model>-<axis>__debias.gguf, __<negative>.gguf, __<positive>.gguf.
    Collected states are stored by content, so a re-run reuses them and a killed run resumes.
    """
    settings = _settings(values, all_axes=all_axes)
    with _logging(quiet=quiet):
        from cvgen.generate.pipeline import (  # after TQDM_DISABLE is set
            example_command,
            generate_pack,
        )

        started = time.perf_counter()
        result = generate_pack(
            settings, out, store_root=cache_dir, show_progress=not quiet, force=force
        )
        elapsed = time.perf_counter() - started
    manifest = result.manifest
    collect_seconds = result.timings.get("collect", 0.0)
    rate = result.collected_prompts / collect_seconds if collect_seconds > 0 else 0.0
    per_sample = 1 + 2 * len(manifest["axes"])
    click.echo(
        f"wrote {result.out}: {plural(len(manifest['axes']), 'axis', 'axes')} x 3 files, blocks "
        f"{manifest['layers'][0]}..{manifest['layers'][-1]}, in {elapsed:.1f} s"
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
    click.echo("\nexample:")
    click.echo(example_command(manifest, result.out))
    if run_eval:
        with _logging(quiet=quiet):
            from cvgen.eval.pack_eval import ModelChoice, evaluate_pack

            trust = settings.trust_remote_code
            report = evaluate_pack(
                result.out,
                choice=ModelChoice(settings.model, eval_backend, settings.device, "auto", trust),
                progress=not quiet,
                announce=lambda message: click.echo(message, err=True),
            ).report
        _echo_eval_summary(report, result.out, stored=True)


def _settings(values: dict[str, Any], *, all_axes: bool) -> GenerateSettings:
    if all_axes and values["axes"]:
        raise click.UsageError("give either --axis or --all-axes, not both")
    if all_axes:
        values["axes"] = shipped_axis_names()
    return GenerateSettings.from_options(values)


STORE_HELP = (
    "State store folder holding the shards (default: $CVGEN_CACHE/states or "
    "~/.cache/cvgen/states). Copy it between machines with rsync -a."
)


@main.command()
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
    from cvgen.extract.shards import format_rows, local_process, resolve_shard

    settings = _settings(values, all_axes=all_axes)
    spec = resolve_shard(shard, os.environ)
    with _logging(quiet=quiet):
        from cvgen.generate.pipeline import collect_shard  # after TQDM_DISABLE is set

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


@main.command()
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
    settings = _settings(values, all_axes=all_axes)
    with _logging(quiet=quiet):
        from cvgen.generate.pipeline import example_command, solve_pack  # after TQDM_DISABLE is set

        started = time.perf_counter()
        result = solve_pack(settings, out, store_root=store, force=force)
        elapsed = time.perf_counter() - started
    manifest = result.manifest
    click.echo(
        f"wrote {result.out}: {plural(len(manifest['axes']), 'axis', 'axes')} x 3 files, blocks "
        f"{manifest['layers'][0]}..{manifest['layers'][-1]}, from shards "
        f"{', '.join(manifest['shards'])}, in {elapsed:.1f} s"
    )
    click.echo("\nexample:")
    click.echo(example_command(manifest, result.out))


@contextmanager
def _logging(*, quiet: bool) -> Iterator[None]:
    """cvgen's log lines on stderr; with `quiet`, warnings only and no progress bars at all
    (also the ones transformers draws with tqdm directly)."""
    logger = logging.getLogger("cvgen")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("cvgen: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    saved = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    # tqdm reads TQDM_DISABLE only when it is first imported (so the CLI imports the pipeline
    # here, inside); the bars transformers draws through its own logging ("Loading weights")
    # are switched off through transformers, whenever tqdm was imported
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    if quiet:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and bars_were_on:
            transformers_logging.enable_progress_bar()
        logger.removeHandler(handler)
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved


def eval_options(command: F) -> F:
    """One click option per `EvalSettings` field (flag, default and help from the field)."""
    from cvgen.eval.settings import SETTING_HELP, EvalSettings

    for setting in reversed(dataclasses.fields(EvalSettings)):
        default = setting.default
        flag = "--" + setting.name.replace("_", "-")
        help_text = SETTING_HELP[setting.name]
        if setting.name in ("scales", "control_scales", "calibration_scales"):
            option = click.option(
                flag, default=",".join(f"{s:g}" for s in default), show_default=True, help=help_text
            )
        elif isinstance(default, bool):
            option = click.option(
                f"{flag}/--no-{flag[2:]}", default=default, show_default=True, help=help_text
            )
        else:
            option = click.option(
                flag, type=type(default), default=default, show_default=True, help=help_text
            )
        command = option(command)
    return command


@main.command("eval")
@click.argument("pack", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model",
    default=None,
    help="The model: a .gguf file (llama.cpp or hf), a folder or a hub id (hf). "
    "Default: the pack's own source.",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "llama.cpp", "hf"]),
    default="auto",
    show_default=True,
    help="auto: llama.cpp for a .gguf model when llama-server is found, else hf (transformers).",
)
@click.option(
    "--axis",
    "axis_names",
    multiple=True,
    help="An axis of the pack to evaluate (repeatable; default: all of them).",
)
@click.option(
    "--probes",
    "probe_assignments",
    multiple=True,
    metavar="AXIS=FILE",
    help="Your own probes file for an axis (repeatable; default: the shipped probes).",
)
@eval_options
@click.option(
    "--store/--no-store",
    default=True,
    show_default=True,
    help="Record the calibrated safe scales in pack.json, the files' metadata and the page.",
)
@click.option("--device", default="auto", show_default=True, help="hf backend: torch device.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="hf backend: weight dtype.",
)
@click.option(
    "--trust-remote-code", is_flag=True, help="hf backend: allow the model's own Python code."
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads (llama.cpp: -t; hf: torch). Use fewer than the free cores on a busy machine.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@one_line_errors
def evaluate(
    pack: Path,
    model: str | None,
    backend: str,
    axis_names: tuple[str, ...],
    probe_assignments: tuple[str, ...],
    store: bool,
    device: str,
    dtype: str,
    trust_remote_code: bool,
    threads: int | None,
    quiet: bool,
    **values: Any,
) -> None:
    """Measure each axis of PACK: propensity slope, text statistics, KL damage and controls,
    at a sweep of scales; write eval.json, eval.md and eval-<axis>.png into the pack and
    store a calibrated safe scale per pole (see the README's "Evaluating a pack")."""
    from cvgen.eval.settings import EvalSettings

    settings = EvalSettings.from_options(values)
    probe_files = {}
    for assignment in probe_assignments:
        name, sep, file = assignment.partition("=")
        if not sep or not name or not file:
            raise click.UsageError(f"--probes: '{assignment}' is not AXIS=FILE")
        probe_files[name] = Path(file)
    with _logging(quiet=quiet):
        from cvgen.eval.pack_eval import ModelChoice, evaluate_pack

        choice = ModelChoice(model, backend, device, dtype, trust_remote_code, threads)
        result = evaluate_pack(
            pack,
            choice=choice,
            axes=axis_names,
            settings=settings,
            store=store,
            progress=not quiet,
            announce=lambda message: click.echo(message, err=True),
            probe_files=probe_files,
        )
    _echo_eval_summary(result.report, pack, stored=store)


def _echo_eval_summary(report: EvalReport, pack: Path, *, stored: bool) -> None:
    for name, axis in report.axes.items():
        slope = axis.propensity.slope if axis.propensity else None
        safe = axis.safe_scale
        click.echo(
            f"{name}: propensity slope "
            + (f"{slope.slope:+.3f} [{slope.low:+.3f}, {slope.high:+.3f}]" if slope else "n/a")
            + f", safe scale -{safe['negative'].scale:.2f} / +{safe['positive'].scale:.2f}"
        )
    click.echo(
        f"wrote {pack}/eval.md, eval.json and {plural(len(report.axes), 'plot')} in "
        f"{report.seconds:.0f} s" + ("; safe scales stored in pack.json" if stored else "")
    )


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--n-embd", type=int, default=None, help="Also check the width against this hidden size."
)
@click.option(
    "--n-layer",
    type=int,
    default=None,
    help="Also check the block indices against this block count.",
)
@click.option(
    "--model",
    "model",
    type=click.Path(path_type=Path),
    default=None,
    help="A llama.cpp model .gguf: check the file against its width and block count.",
)
@one_line_errors
def inspect(file: Path, n_embd: int | None, n_layer: int | None, model: Path | None) -> None:
    """Print a control-vector file's metadata and per-block norms.

    Exits non-zero, saying why, when llama.cpp would refuse or ignore the file.
    """
    if model is not None:
        info = read_model_file_info(model)
        for flag, given, got in (
            ("--n-embd", n_embd, info.n_embd),
            ("--n-layer", n_layer, info.n_layer),
        ):
            if given is not None and given != got:
                raise click.UsageError(f"{flag} {given} disagrees with {model} ({got})")
        n_embd, n_layer = info.n_embd, info.n_layer
    problems = llamacpp_problems(file, n_embd=n_embd, n_layer=n_layer)
    if problems:
        against = f" with {model}" if model is not None else ""
        raise click.ClickException(
            f"{file}: llama.cpp would refuse this file{against}: {'; '.join(problems)}"
        )
    click.echo(describe_control_vector(read_control_vector(file)))


@main.command()
@click.argument("pack", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "-s",
    "assignments",
    multiple=True,
    metavar="AXIS=SCALE",
    help="Axis and scale, e.g. language=+0.6 (negative picks the first class). Repeatable.",
)
@click.option("--preset", default=None, help="A preset stored in the pack's manifest.")
@click.option(
    "--target",
    "targets",
    multiple=True,
    type=click.Choice(TARGETS),
    help="Binary to print a line for (default: llama-server and llama-cli).",
)
@click.option(
    "--legacy-syntax",
    is_flag=True,
    help="Pre-December-2025 llama.cpp: --control-vector-scaled FILE SCALE.",
)
@click.option(
    "--model-path",
    default=None,
    help="Model path for -m (default: the pack's .gguf source, else MODEL.gguf).",
)
@click.option(
    "--vector-dir",
    default=None,
    help="Folder of the GGUF files in the command (default: the pack path).",
)
@click.option(
    "--layer-range",
    nargs=2,
    type=int,
    default=None,
    metavar="START END",
    help="Add --control-vector-layer-range START END (inclusive).",
)
@click.option("--multiline", is_flag=True, help="One option per line, joined with backslashes.")
@one_line_errors
def commands(
    pack: Path,
    assignments: tuple[str, ...],
    preset: str | None,
    targets: tuple[str, ...],
    legacy_syntax: bool,
    model_path: str | None,
    vector_dir: str | None,
    layer_range: tuple[int, int] | None,
    multiline: bool,
) -> None:
    """Print llama.cpp command lines that load a pack's vectors at the chosen scales.

    Each axis loads its __debias file at scale 1 plus the pole file its sign picks, at |scale|.
    """
    manifest = load_manifest(pack)
    selection = preset_selection(manifest, preset) if preset else []
    given: set[str] = set()
    for text in assignments:
        axis, scale = parse_assignment(text)
        if axis in given:
            raise click.UsageError(f"--set: axis '{axis}' is given twice")
        given.add(axis)
        # a --set overrides the preset's value for that axis
        selection = [item for item in selection if item[0] != axis] + [(axis, scale)]
    if not selection:
        raise click.UsageError("choose at least one axis with --set AXIS=SCALE or --preset NAME")
    _check_files_exist(pack, manifest, selection)
    model = model_path or default_model_path(manifest)
    if model.endswith(".gguf") and Path(model).is_file():
        check_pack_fits_model(manifest, Path(model), pack=pack)
    directory = vector_dir if vector_dir is not None else str(pack)
    for target in targets or ("llama-server", "llama-cli"):
        click.echo(
            build_command(
                manifest,
                selection,
                target=target,
                model_path=model,
                vector_dir=directory,
                legacy_syntax=legacy_syntax,
                layer_range=layer_range,
                multiline=multiline,
            )
        )
    advice = combination_advice(selection)
    if advice:
        click.echo(advice, err=True)


def _check_files_exist(
    pack: Path, manifest: dict[str, Any], selection: list[tuple[str, float]]
) -> None:
    for axis, _ in selection:
        files = manifest["axes"].get(axis, {}).get("files", {})
        for name in files.values():
            if not (pack / name).is_file():
                raise PackError(f"{pack}: file {name} of axis '{axis}' is missing from the pack")


@main.command()
@click.argument("pack", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model",
    type=click.Path(path_type=Path),
    default=None,
    help="The llama.cpp model .gguf (default: the pack's own .gguf source).",
)
@click.option(
    "--axis",
    "axis_names",
    multiple=True,
    help="An axis of the pack to show (repeatable; default: all of them).",
)
@click.option("--prompt", default=DEFAULT_PROMPT, show_default=True, help="The writing prompt.")
@click.option(
    "--scales",
    default="-1,0,1",
    show_default=True,
    help="Comma-separated scales, one column each.",
)
@click.option("--tokens", "-n", default=64, show_default=True, help="Tokens to generate.")
@click.option("--raw", is_flag=True, help="Send the prompt as is, without the chat template.")
@click.option("--width", type=int, default=None, help="Output width (default: the terminal's).")
@one_line_errors
def compare(
    pack: Path,
    model: Path | None,
    axis_names: tuple[str, ...],
    prompt: str,
    scales: str,
    tokens: int,
    raw: bool,
    width: int | None,
) -> None:
    """Show each axis steering: llama.cpp's greedy completions of one prompt at each scale,
    side by side. Needs llama-completion (see scripts/build_llama_cpp.sh)."""
    manifest = load_manifest(pack)
    chosen = list(axis_names) or list(manifest["axes"])
    for name in chosen:
        if name not in manifest["axes"]:
            known = ", ".join(manifest["axes"])
            raise click.UsageError(f"--axis: '{name}' is not in the pack (it has: {known})")
    values = []
    for text in scales.split(","):
        _, value = parse_assignment(f"scale={text.strip()}")
        values.append(value)
    if model is None:
        model = Path(default_model_path(manifest))
        if not model.is_file():
            raise click.UsageError(
                f"--model: the pack's source {model} is not a file; give --model"
            )
    if tokens < 1:
        raise click.UsageError(f"--tokens: {tokens} must be at least 1")
    results = compare_scales(
        pack,
        manifest,
        model,
        axes=chosen,
        scales=values,
        prompt=prompt,
        n_predict=tokens,
        chat=not raw,
        progress=lambda what: click.echo(f"compare: {what}", err=True),
    )
    click.echo(format_side_by_side(results, width=width))


@main.command()
@one_line_errors
def axes() -> None:
    """List the shipped axes: name, negative and positive class, number of pairs."""
    rows = [load_axis(name) for name in shipped_axis_names()]
    width = max(len(axis.name) for axis in rows)
    click.echo(f"{'axis':<{width}}  {'negative':<12} {'positive':<18} pairs")
    for axis in rows:
        click.echo(
            f"{axis.name:<{width}}  {axis.classes[0]:<12} {axis.classes[1]:<18} {len(axis.pairs)}"
        )


@main.command("html")
@click.argument("pack", type=click.Path(path_type=Path))
@click.option(
    "--model-path",
    default=None,
    help="Model path the page starts with (default: the pack's .gguf source, else MODEL.gguf).",
)
@click.option(
    "--vector-dir",
    default=None,
    help="Vector folder the page starts with (default: the pack's absolute path).",
)
@one_line_errors
def html_page(pack: Path, model_path: str | None, vector_dir: str | None) -> None:
    """Write PACK/index.html: a self-contained page that builds llama.cpp command lines.

    Open it in any browser (file:// works; it makes no network requests). `cvgen generate`
    writes it too, and the preset commands keep it up to date.
    """
    from cvgen.pack.page import write_page

    manifest = load_manifest(pack)
    path = write_page(pack, manifest, model_path=model_path, vector_dir=vector_dir)
    click.echo(
        f"wrote {path}: {plural(len(manifest['axes']), 'axis', 'axes')}, "
        f"{plural(len(manifest.get('presets') or {}), 'preset')}"
    )


@main.group()
def preset() -> None:
    """Add, list or remove a pack's presets (named sets of axis scales).

    `cvgen commands PACK --preset NAME` prints a preset's command lines; the pack's index.html
    offers the presets too.
    """


@preset.command("add")
@click.argument("pack", type=click.Path(path_type=Path))
@click.argument("name")
@click.option(
    "--set",
    "-s",
    "assignments",
    multiple=True,
    required=True,
    metavar="AXIS=SCALE",
    help="Axis and scale, as in `cvgen commands`. Repeatable; the order is kept.",
)
@click.option("--replace", is_flag=True, help="Overwrite a preset of the same name.")
@one_line_errors
def preset_add(pack: Path, name: str, assignments: tuple[str, ...], replace: bool) -> None:
    """Store preset NAME in PACK/pack.json and rewrite PACK/index.html."""
    from cvgen.pack.writer import with_preset

    selection = [parse_assignment(text) for text in assignments]
    manifest = with_preset(load_manifest(pack), name, selection, replace=replace)
    _save_presets(pack, manifest)
    click.echo(f"preset '{name}': {_describe_preset(manifest, name)}")


@preset.command("list")
@click.argument("pack", type=click.Path(path_type=Path))
@one_line_errors
def preset_list(pack: Path) -> None:
    """Print each preset of PACK: NAME: AXIS=SCALE ..."""
    manifest = load_manifest(pack)
    for name in manifest.get("presets") or {}:
        click.echo(f"{name}: {_describe_preset(manifest, name)}")


@preset.command("remove")
@click.argument("pack", type=click.Path(path_type=Path))
@click.argument("name")
@one_line_errors
def preset_remove(pack: Path, name: str) -> None:
    """Delete preset NAME from PACK/pack.json and rewrite PACK/index.html."""
    from cvgen.pack.writer import without_preset

    _save_presets(pack, without_preset(load_manifest(pack), name))
    click.echo(f"removed preset '{name}'")


def _describe_preset(manifest: dict[str, Any], name: str) -> str:
    from cvgen.llamacpp.commands import format_scale

    return " ".join(
        f"{axis}={format_scale(scale)}" for axis, scale in preset_selection(manifest, name)
    )


def _save_presets(pack: Path, manifest: dict[str, Any]) -> None:
    from cvgen.pack.page import save_manifest_and_page

    save_manifest_and_page(pack, manifest)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
