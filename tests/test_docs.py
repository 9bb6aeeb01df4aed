"""The docs: a short README, docs/cli.md generated from --help, links that lead to files (and
headings) of the repository, and shell examples that use only options their command has."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import click

from cvgen.cli import main

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
README_LIMIT_BYTES = 12_000

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_COMMAND = re.compile(r"(?:^|[\s;&|(])cvgen\s+([a-z][\w-]*)((?:\s+[^\s;&|]+)*)")
_SHELL_FENCES = ("```sh", "```bash", "```shell", "```console")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _cli_reference_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", REPO / "scripts" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _shell_blocks(text: str) -> list[str]:
    """The text of each fenced shell block, with backslash-continued lines joined."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None and stripped in _SHELL_FENCES:
            current = []
        elif current is not None and stripped.startswith("```"):
            blocks.append("\n".join(current).replace("\\\n", " "))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match:
            slug = _slug(match.group(2))
            count = sum(1 for anchor in found if re.fullmatch(re.escape(slug) + r"(-\d+)?", anchor))
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _links(path: Path) -> list[str]:
    """Every link target in the prose of a Markdown file (code spans and blocks left out)."""
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        targets.extend(_LINK.findall(_INLINE_CODE.sub("", line)))
    return targets


def _broken_links(path: Path, repo: Path) -> list[str]:
    """The relative links of `path` that leave `repo`, lead to no file, or to no heading."""
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not destination.is_relative_to(repo.resolve()):
            broken.append(f"{target} (leaves the repository)")
        elif not destination.is_file():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.name})")
    return broken


def _command_options(command: click.Command) -> set[str]:
    options = {"--help", "-h"}
    for parameter in command.params:
        if isinstance(parameter, click.Option):
            options.update(parameter.opts)
            options.update(parameter.secondary_opts)
    return options


def _resolve_command(name: str, words: list[str]) -> tuple[str, click.Command, list[str]]:
    """The cvgen command that `cvgen NAME WORDS...` runs, and the words after its name."""
    assert isinstance(main, click.Group)
    command = main.commands.get(name)
    assert command is not None, f"`cvgen {name}` is not a command"
    label = name
    if isinstance(command, click.Group):
        assert words and words[0] in command.commands, (
            f"`cvgen {name} {words[:1]}`: no such command"
        )
        label, command, words = f"{name} {words[0]}", command.commands[words[0]], words[1:]
    return label, command, words


def _unknown_options(block: str) -> tuple[int, list[str]]:
    """How many cvgen commands a shell block runs, and each option none of them has."""
    checked, unknown = 0, []
    for line in block.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        for name, rest in _COMMAND.findall(line):
            label, command, words = _resolve_command(name, rest.split())
            options = _command_options(command)
            checked += 1
            for word in words:
                flag = word.split("=", 1)[0]
                if flag.startswith("-") and flag not in options:
                    unknown.append(f"cvgen {label} {flag}")
    return checked, unknown


def test_cli_doc_matches_help() -> None:
    module = _cli_reference_module()
    assert "--samples" in module.cli_reference()
    assert module.CLI_DOC == DOCS / "cli.md"
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert module.cli_document() == current, "run: python scripts/cli_reference.py"
    for command in module.COMMANDS:
        assert f"### `cvgen {command}`" in current


def test_public_api_names_resolve() -> None:
    import cvgen

    for name in cvgen.__all__:
        assert getattr(cvgen, name) is not None, name
    assert cvgen.generate_pack.__module__.startswith("cvgen.generate.")


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) < README_LIMIT_BYTES
    quick_start = text.split("## Quick start", 1)[1]
    first_block = _shell_blocks(quick_start)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    assert [command for command in commands if command] == [
        "bash scripts/demo.sh",
        "bash scripts/test.sh",
    ]
    assert (REPO / "scripts" / "demo.sh").is_file() and (REPO / "scripts" / "test.sh").is_file()


def test_every_relative_link_leads_to_a_file_of_the_repository() -> None:
    for path in _markdown_files():
        assert _broken_links(path, REPO) == [], path.name
        assert "../shared" not in path.read_text(encoding="utf-8"), path.name


def test_named_scripts_and_tests_exist() -> None:
    named = set()
    for path in _markdown_files():
        named |= set(re.findall(r"`((?:scripts|tests)/[\w./-]*)", path.read_text(encoding="utf-8")))
    assert "scripts/demo.sh" in named and "tests/test_golden.py" in named
    assert sorted(name for name in named if not (REPO / name).exists()) == []


def test_the_readme_links_every_doc() -> None:
    linked = {target.partition("#")[0] for target in _links(README)}
    docs = {f"docs/{path.name}" for path in DOCS.glob("*.md")}
    assert len(docs) >= 8
    assert docs <= linked, sorted(docs - linked)


def test_the_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# A heading\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "[ok](there.md#a-heading) [outside](../../shared/docs/ALGORITHM.md) "
        "[gone](missing.md) [bad anchor](there.md#nothing) `[code](ignored.md)`\n"
        "```sh\n[fenced](ignored.md)\n```\n[web](https://example.org/x.md)\n",
        encoding="utf-8",
    )
    assert _broken_links(page, tmp_path) == [
        "../../shared/docs/ALGORITHM.md (leaves the repository)",
        "missing.md (no such file)",
        "there.md#nothing (no heading #nothing in there.md)",
    ]


def test_shell_examples_use_only_real_options() -> None:
    checked, unknown = 0, []
    for path in _markdown_files():
        for block in _shell_blocks(path.read_text(encoding="utf-8")):
            count, bad = _unknown_options(block)
            checked += count
            unknown += [f"{path.name}: {entry}" for entry in bad]
    assert unknown == []
    assert checked >= 20


def test_the_option_check_finds_a_wrong_option() -> None:
    block = "cvgen generate --model M \\\n  --samples 8 --out p --sample 3\ncvgen preset list p -x"
    assert _unknown_options(block.replace("\\\n", " ")) == (
        2,
        ["cvgen generate --sample", "cvgen preset list -x"],
    )
