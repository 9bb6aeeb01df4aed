"""Regenerate the README's CLI reference from `--help`, so the docs cannot drift.

python scripts/cli_reference.py          # rewrite README.md in place
python scripts/cli_reference.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from cvgen.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
COMMANDS = (
    "generate",
    "collect",
    "solve",
    "inspect",
    "commands",
    "compare",
    "eval",
    "axes",
    "html",
    "preset add",
    "preset list",
    "preset remove",
)


def cli_reference() -> str:
    """Markdown holding each command's --help text."""
    parts = []
    for command in COMMANDS:
        text = (
            CliRunner()
            .invoke(main, [*command.split(), "--help"], prog_name="cvgen", terminal_width=100)
            .output
        )
        parts.append(f"### `cvgen {command}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def updated_readme(readme: str) -> str:
    """The README with the text between the markers replaced."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{cli_reference()}{END}{tail}"


if __name__ == "__main__":
    current = README.read_text(encoding="utf-8")
    fresh = updated_readme(current)
    if "--check" in sys.argv[1:]:
        if fresh != current:
            print("README.md's CLI reference is out of date: run python scripts/cli_reference.py")
            sys.exit(1)
    else:
        README.write_text(fresh, encoding="utf-8")
