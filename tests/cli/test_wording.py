"""Small wordings, through the CLI: JSON positions without "at at", counted nouns in the right
number, a non-string continuation named as such, and --prompts-column refused for a .txt file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import folder_snapshot as snapshot
from manifests import sample_manifest, write_manifest

from cvgen.cli import main
from cvgen.common.messages import plural


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def generate(model: Path, tmp_path: Path, *options: str) -> Result:
    return run(
        "generate",
        "--model",
        str(model),
        "--samples",
        "4",
        "--out",
        str(tmp_path / "pack"),
        "--cache-dir",
        str(tmp_path / "store"),
        "--quiet",
        *options,
    )


def test_plural() -> None:
    assert plural(1, "item") == "1 item"
    assert plural(0, "item") == "0 items"
    assert plural(1, "axis", "axes") == "1 axis"
    assert plural(2, "axis", "axes") == "2 axes"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"classes": ["a", "b"], "data": [["x', "Unterminated string starting at line 1, column"),
        ('{"classes": ["a", "b"], "data": [["x"]]}', "field 'data[0]' has 1 item; expected"),
        (
            '{"classes": ["a", "b"], "data": [[1, 2]]}',
            "field 'data[0][0]' is the number 1, not a string; expected the negative continuation",
        ),
        (
            '{"classes": ["a", "b"], "data": [["x", ["y"]]]}',
            "field 'data[0][1]' is a list, not a string; expected the positive continuation",
        ),
    ],
    ids=["unterminated", "one-item", "numbers", "list"],
)
def test_axis_file_messages_read_right(
    pico_llama: Path, tmp_path: Path, content: str, message: str
) -> None:
    axis = tmp_path / "mine.json"
    axis.write_text(content, encoding="utf-8")
    before = snapshot(tmp_path)
    result = generate(pico_llama, tmp_path, "--axis", str(axis))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {axis}: ")
    assert message in result.output
    assert "at at" not in result.output and "1 items" not in result.output
    assert "empty negative" not in result.output
    assert result.output.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_a_broken_pack_json_names_the_position_once(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "pack.json").write_text('{"format": "cvgen-pack", "model": "x', encoding="utf-8")
    result = run("html", str(pack))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {pack / 'pack.json'}: not valid JSON (Unterminated string starting at line 1, "
        "column 35)\n"
    )
    assert sorted(entry.name for entry in pack.iterdir()) == ["pack.json"]


def test_counts_are_pluralised_in_command_output(tmp_path: Path) -> None:
    manifest = sample_manifest()
    manifest["axes"] = {"language": manifest["axes"]["language"]}
    manifest["presets"] = {"calm": {"language": 0.5}}
    pack = write_manifest(tmp_path / "pack", manifest)
    result = run("html", str(pack))
    assert result.exit_code == 0
    assert result.output == f"wrote {pack / 'index.html'}: 1 axis, 1 preset\n"


@pytest.mark.parametrize("prompts", ["mine.txt", None], ids=["txt", "shipped"])
def test_prompts_column_is_refused_where_it_does_not_apply(
    pico_llama: Path, tmp_path: Path, prompts: str | None
) -> None:
    options = ["--axis", "language", "--prompts-column", "text"]
    if prompts is not None:
        (tmp_path / prompts).write_text("Write a story.\nWrite a poem.\n", encoding="utf-8")
        options += ["--prompts", str(tmp_path / prompts)]
    before = snapshot(tmp_path)
    result = generate(pico_llama, tmp_path, *options)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    if prompts is not None:
        assert result.output == (
            f"Error: --prompts-column text: does not apply to {tmp_path / prompts}, a .txt file "
            "holds one prompt per line; drop the option\n"
        )
    else:
        assert result.output == (
            "Error: --prompts-column text: applies only to a --prompts file or dataset, and "
            "none is given\n"
        )
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "pack").exists()


def test_prompts_column_still_applies_to_a_jsonl_file(tmp_path: Path) -> None:
    # the .txt check is on the suffix only: a .jsonl file keeps its column
    from cvgen.data.shipped import load_writing_prompts

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"text": "Write a story."}) + "\n", encoding="utf-8")
    assert load_writing_prompts(str(path), column="text") == ("Write a story.",)
