"""`cvgen eval`: measure a pack's axes and store their calibrated safe scales."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cvgen.cli.common import F, one_line_errors, quiet_logging
from cvgen.common.messages import plural

if TYPE_CHECKING:
    from cvgen.eval.records import EvalReport


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


@click.command("eval")
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
    type=click.Choice(["auto", "llama.cpp", "llama-server", "hf"]),
    default="auto",
    show_default=True,
    help="llama.cpp: one model and context through llama-cpp-python (the cvgen[llama] extra); "
    "llama-server: one server per configuration (slower); hf: transformers. auto: llama.cpp for "
    "a .gguf model, llama-server when the extra is missing, else hf.",
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
    help="CPU threads (llama.cpp and llama-server: -t; hf: torch). Use fewer than the free cores "
    "on a busy machine.",
)
@click.option(
    "--gpu-layers",
    type=int,
    default=0,
    show_default=True,
    help="llama.cpp and llama-server: blocks offloaded to the GPU (needs a GPU build of llama.cpp).",
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
    gpu_layers: int,
    quiet: bool,
    **values: Any,
) -> None:
    """Measure each axis of PACK: propensity slope, text statistics, KL damage and controls,
    at a sweep of scales; write eval.json, eval.md and eval-<axis>.png into the pack and
    store a calibrated safe scale per pole (see docs/evaluation.md)."""
    from cvgen.eval.settings import EvalSettings

    settings = EvalSettings.from_options(values)
    probe_files = {}
    for assignment in probe_assignments:
        name, sep, file = assignment.partition("=")
        if not sep or not name or not file:
            raise click.UsageError(f"--probes: '{assignment}' is not AXIS=FILE")
        probe_files[name] = Path(file)
    with quiet_logging(quiet=quiet):
        from cvgen.eval.pack_eval import ModelChoice, evaluate_pack

        choice = ModelChoice(
            model=model,
            backend=backend,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            threads=threads,
            gpu_layers=gpu_layers,
        )
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
    echo_eval_summary(result.report, pack, stored=store)


def echo_eval_summary(report: EvalReport, pack: Path, *, stored: bool) -> None:
    """One line per evaluated axis (propensity slope, safe scales), then what was written."""
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
