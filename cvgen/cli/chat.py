"""`cvgen chat`: a terminal conversation with a llama.cpp model, its control vectors changed
between turns (`cvgen.serve.chat`)."""

from __future__ import annotations

from pathlib import Path

import click

from cvgen.cli.common import one_line_errors
from cvgen.cli.steered import steered_model, steering_options
from cvgen.common.errors import CvgenError
from cvgen.engine.model import open_model
from cvgen.extract.chat import PromptError, render_messages, template_of_model_file
from cvgen.serve.chat import ChatSession, ChatSettings, enable_line_editing
from cvgen.serve.generation import Generator, Sampling
from cvgen.serve.prompts import PromptMaker
from cvgen.vectors.model_header import ModelFileInfo


@click.command()
@steering_options(
    set_help="Steering at the start, e.g. language=+0.6 (repeatable; /set changes it later).",
    preset_help="A preset of the pack to start with.",
)
@click.option("--system", default=None, help="A system message that opens the conversation.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.8,
    show_default=True,
    help="Sampling temperature; 0 is greedy.",
)
@click.option("--seed", type=int, default=None, help="Seed of each reply's draw (default: random).")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="The most tokens of one reply.",
)
@click.option(
    "--ctx-size",
    type=click.IntRange(min=16),
    default=4096,
    show_default=True,
    help="Context size in tokens: the whole conversation must fit in it.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads.")
@click.option(
    "--gpu-layers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Blocks offloaded to the GPU (a GPU build of llama.cpp only).",
)
@one_line_errors
def chat(
    pack: Path,
    model: Path | None,
    assignments: tuple[str, ...],
    preset: str | None,
    allow_unsafe_scales: bool,
    system: str | None,
    temperature: float,
    seed: int | None,
    max_tokens: int,
    ctx_size: int,
    threads: int | None,
    gpu_layers: int,
) -> None:
    """Chat with the model in the terminal, steered by the pack's vectors.

    The model loads once; /set AXIS=SCALE, /preset NAME and /set AXIS=off change the steering
    between turns, /show shows it, /clear starts a new conversation, /help lists the commands.
    Ctrl-C stops a reply; Ctrl-D or /quit leaves. Needs the cvgen[llama] binding.
    """
    steered = steered_model(
        pack, model, assignments, preset, allow_unsafe_scales=allow_unsafe_scales
    )
    steering, selection, model = steered.steering, steered.selection, steered.model
    _check_template(steered.info, model, system)
    settings = ChatSettings(
        max_tokens=max_tokens,
        sampling=Sampling(temperature=temperature, seed=seed),
        system=system or None,
    )
    loaded = open_model(model, gpu_layers=gpu_layers)
    try:
        generator = Generator(loaded, ctx_size=ctx_size, threads=threads)
        try:
            session = ChatSession(
                steering, generator, PromptMaker(loaded), settings, selection=selection
            )
            session.say(
                f"cvgen chat: {model.name} with pack {pack} ({session.axes_text()}); "
                f"{session.steering_text()}. /help lists the commands, /quit leaves."
            )
            enable_line_editing()
            session.run()
        finally:
            generator.close()
    finally:
        loaded.close()


def _check_template(info: ModelFileInfo, model: Path, system: str | None) -> None:
    """The model has a chat template, and the template takes the --system message."""
    template = template_of_model_file(info)
    if template.text is None:
        raise CvgenError(f"--model {model}: the model has no chat template; cvgen chat needs one")
    if system:
        try:  # a template that refuses a system turn says so now, not at the first line
            render_messages(template, [{"role": "system", "content": system}])
        except PromptError as exc:
            raise CvgenError(f"--system: {exc}") from None
