"""The `cvgen` command line: one module per command group, each turning the library's errors into
one line (`cvgen.cli.common.one_line_errors`), and `main`, the group that holds them all.

Commands: generate, collect, solve (`cli.generate`), eval (`cli.evaluate`), inspect, axes
(`cli.inspect`), commands, compare (`cli.commands`), html, preset add/list/remove (`cli.page`),
serve (`cli.serve`), chat (`cli.chat`), bake (`cli.bake`) and transfer (`cli.transfer`).
Library errors become `click.ClickException` here and only here, so every failure prints
`Error: <one line>` and exits non-zero.
"""

from __future__ import annotations

import click

from cvgen import __version__
from cvgen.cli.bake import bake
from cvgen.cli.chat import chat
from cvgen.cli.commands import commands, compare
from cvgen.cli.evaluate import evaluate
from cvgen.cli.generate import collect, generate, solve
from cvgen.cli.inspect import axes, inspect
from cvgen.cli.page import html_page, preset
from cvgen.cli.serve import serve
from cvgen.cli.transfer import transfer


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cvgen")
def main() -> None:
    """Generate llama.cpp control vectors from contrastive prompts.

    Typical use: `cvgen generate --model M.gguf --axis language --out pack`, then
    `cvgen commands pack --set language=0.5` for the llama-server command line.
    """


for command in (generate, collect, solve, evaluate, inspect, commands, compare, axes, serve):
    main.add_command(command)
main.add_command(html_page)
main.add_command(preset)
main.add_command(chat)
main.add_command(bake)
main.add_command(transfer)

__all__ = ["main"]
