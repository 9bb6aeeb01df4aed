"""What every command group of the CLI shares: one-line errors, the log and progress-bar switch
of `--quiet`, and the options generated from `GenerateSettings`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from cvgen.common.errors import CvgenError
from cvgen.data.shipped import shipped_axis_names
from cvgen.generate.settings import GenerateSettings, LayerSkip, option_flag
from cvgen.solve.methods import AUTO_METHOD, METHODS

DATASETS_BARS = "HF_DATASETS_DISABLE_PROGRESS_BARS"

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
            kwargs["type"] = click.Choice(
                [AUTO_METHOD, *sorted(METHODS)] if choices == "methods" else choices
            )
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


def settings_from_options(values: dict[str, Any], *, all_axes: bool) -> GenerateSettings:
    """The run's settings from the values of the `settings_options` (every shipped axis with
    `all_axes`, which excludes --axis)."""
    if all_axes and values["axes"]:
        raise click.UsageError("give either --axis or --all-axes, not both")
    if all_axes:
        values["axes"] = shipped_axis_names()
    return GenerateSettings.from_options(values)


STORE_HELP = (
    "State store folder holding the shards (default: $CVGEN_CACHE/states or "
    "~/.cache/cvgen/states). Copy it between machines with rsync -a."
)


@contextmanager
def quiet_logging(*, quiet: bool) -> Iterator[None]:
    """cvgen's log lines on stderr; with `quiet`, warnings only and no progress bars at all.

    cvgen's own bars are switched off by the `show_progress` / `progress` flag each command
    passes down (tqdm's `disable=`); the bars that transformers and huggingface_hub draw
    ("Loading weights", downloads) and those of datasets (a hub dataset of prompts) through
    their own switches, here, whatever was imported before."""
    logger = logging.getLogger("cvgen")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("cvgen: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    restore = _library_bars_off() if quiet else None
    try:
        yield
    finally:
        if restore is not None:
            restore()
        logger.removeHandler(handler)


def _library_bars_off() -> Callable[[], None]:
    """Switch off the progress bars of transformers (and with them huggingface_hub's) and of
    datasets; return the function that restores them as they were."""
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    # datasets reads its switch when first imported (it may be imported later, for a hub
    # dataset of prompts), and offers an API once it is
    saved = os.environ.get(DATASETS_BARS)
    os.environ[DATASETS_BARS] = "1"
    datasets_tqdm = sys.modules.get("datasets.utils.tqdm")
    if datasets_tqdm is not None and datasets_tqdm.are_progress_bars_disabled():
        datasets_tqdm = None  # already off: leave it off
    if datasets_tqdm is not None:
        datasets_tqdm.disable_progress_bars()

    def restore() -> None:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
        if datasets_tqdm is not None:
            datasets_tqdm.enable_progress_bars()
        if saved is None:
            os.environ.pop(DATASETS_BARS, None)
        else:
            os.environ[DATASETS_BARS] = saved

    return restore
