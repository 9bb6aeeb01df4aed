"""One manifest validation for every command that opens a pack, and a README whose
user-given text (names, classes, descriptions) is escaped for Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import folder_snapshot as snapshot
from conftest import generate_pico_pack
from manifests import sample_manifest, write_manifest

from cvgen.cli import main
from cvgen.common.messages import markdown_code, markdown_text
from cvgen.data.shipped import data_root
from cvgen.pack.errors import PackError
from cvgen.pack.manifest import load_manifest, parse_manifest
from cvgen.pack.readme import render_pack_readme

HOSTILE_CLASS = "<script>alert(1)</script>"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# ---------------------------------------------------------------- one validation for all


PACK_COMMANDS = {
    "html": ["html"],
    "commands": ["commands", "{pack}", "--set", "language=0.5"],
    "compare": ["compare", "{pack}", "--model", "{model}"],
    "eval": ["eval", "{pack}", "--model", "{model}", "--backend", "hf"],
    "preset-list": ["preset", "list"],
    "preset-add": ["preset", "add", "{pack}", "calm", "--set", "language=0.5"],
}


def _arguments(name: str, pack: Path, model: Path) -> list[str]:
    arguments = PACK_COMMANDS[name]
    if "{pack}" not in arguments:
        arguments = [*arguments, "{pack}"]
    return [item.format(pack=pack, model=model) for item in arguments]


@pytest.mark.parametrize("command", sorted(PACK_COMMANDS))
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            "../../../../etc/passwd",
            "expected a plain .gguf file name in the pack folder (letters, digits, '_', '-', "
            "'.'; no '/')",
        ),
        ("/etc/passwd.gguf", "expected a plain .gguf file name in the pack folder"),
        ("..gguf", "expected a plain .gguf file name in the pack folder"),
        ("m-language__simple.gguf", None),  # the negative pole's file: the same file twice
    ],
    ids=["traversal", "absolute", "hidden", "duplicate"],
)
def test_every_command_refuses_a_file_outside_the_pack_in_the_same_line(
    tmp_path: Path, command: str, value: str, reason: str | None
) -> None:
    manifest = sample_manifest()
    manifest["axes"]["language"]["files"]["debias"] = value
    pack = write_manifest(tmp_path / "pack", manifest)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    before = snapshot(tmp_path)
    result = run(*_arguments(command, pack, model))
    assert result.exit_code == 1
    source = pack / "pack.json"
    if reason is None:
        expected = "field 'axes.language.files' names the same file twice"
    else:
        expected = f"field 'axes.language.files.debias' is {value!r}, {reason}"
    assert result.output.startswith(f"Error: {source}: {expected}")
    assert result.output.count("\n") == 1
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("axes.language.classes", ["same", "same"], "names the class 'same' twice"),
        ("axes.language.description", 3, "field 'axes.language.description' is 3"),
        ("model.name", ["x"], "field 'model.name' is ['x'], expected a string"),
        ("prompt_format", "jinja", "field 'prompt_format' is 'jinja', expected one of"),
    ],
)
def test_load_manifest_refuses_other_bad_fields(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    manifest = sample_manifest()
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    node[last] = value
    pack = write_manifest(tmp_path / "pack", manifest)
    with pytest.raises(PackError, match=f"^{pack / 'pack.json'}: .*") as caught:
        load_manifest(pack)
    assert message in str(caught.value)


def test_a_pack_without_the_newer_fields_is_accepted(tmp_path: Path) -> None:
    manifest = sample_manifest()
    assert "prompt_format" not in manifest
    pack = write_manifest(tmp_path / "pack", manifest)
    assert load_manifest(pack).to_json() == manifest
    assert parse_manifest({**manifest, "prompt_format": "plain"}, "pack.json").prompt_format == (
        "plain"
    )


def test_html_and_commands_agree_on_a_good_pack(tmp_path: Path) -> None:
    pack = write_manifest(tmp_path / "pack", sample_manifest())
    assert run("html", str(pack)).exit_code == 0
    result = run("commands", str(pack), "--set", "optimism=1")
    assert result.exit_code == 1  # the files are missing, which only commands needs
    assert "file m-optimism__debias.gguf of axis 'optimism' is missing" in result.output


# ---------------------------------------------------------------- the README


def test_markdown_text_escapes_markup_and_cell_separators() -> None:
    assert markdown_text(HOSTILE_CLASS) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert markdown_text("a | b\nc") == "a \\| b c"
    assert markdown_text("*x* _y_ [l](u) `c` \\ ~z~ #1 !") == (
        "\\*x\\* \\_y\\_ \\[l\\](u) \\`c\\` \\\\ \\~z\\~ \\#1 \\!"
    )
    assert markdown_text("plain-name.v1") == "plain-name.v1"
    assert markdown_code("cross_covariance") == "`cross_covariance`"
    assert markdown_code("a`b") == "``a`b``"


def _readme_manifest() -> dict[str, Any]:
    manifest = sample_manifest()
    manifest["model"]["name"] = "pico | <b>model</b>"
    manifest["settings"] = {"method": "cross_covariance", "samples": 12, "seed": 0, "features": "x"}
    manifest["cvgen_version"] = "0.1.0"
    language = manifest["axes"]["language"]
    language["classes"] = ["simple", HOSTILE_CLASS]
    language["description"] = "plain | ornate\nprose"
    return manifest


def test_readme_escapes_every_user_given_text() -> None:
    readme = render_pack_readme(
        parse_manifest(_readme_manifest(), "pack.json"), "llama-server -m MODEL.gguf"
    )
    assert "<script" not in readme and "<b>" not in readme
    assert readme.startswith("# Control vectors for pico \\| &lt;b&gt;model&lt;/b&gt;\n")
    row = next(line for line in readme.splitlines() if line.startswith("| language "))
    assert row.startswith(
        "| language | simple | &lt;script&gt;alert(1)&lt;/script&gt; | plain \\| ornate prose |"
    )
    # an unescaped '|' is a cell boundary: five cells per row, like the header
    header = next(line for line in readme.splitlines() if line.startswith("| axis "))
    assert row.replace("\\|", "").count("|") == header.count("|") == 6


def test_generate_writes_an_escaped_readme(pico_llama: Path, tmp_path: Path) -> None:
    axis = json.loads((data_root() / "axes" / "language.json").read_text(encoding="utf-8"))
    axis["name"] = "hostile"
    axis["classes"] = ["plain", HOSTILE_CLASS]
    axis["description"] = "plain | ornate *words*"
    axis_file = tmp_path / "hostile.json"
    axis_file.write_text(json.dumps(axis), encoding="utf-8")
    out = tmp_path / "pack"
    generate_pico_pack(pico_llama, out, axes=(str(axis_file),))
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "<script" not in readme
    row = next(line for line in readme.splitlines() if line.startswith("| hostile "))
    assert "| plain | &lt;script&gt;alert(1)&lt;/script&gt; | plain \\| ornate \\*words\\* |" in row
    assert load_manifest(out).axes["hostile"].classes[1] == HOSTILE_CLASS


def test_an_axis_name_cannot_place_its_eval_plot_outside_the_pack() -> None:
    from cvgen.eval.report import plot_name

    assert plot_name("language") == "eval-language.png"
    assert plot_name("../../etc/x") == "eval-etc-x.png"
    assert "/" not in plot_name("lang <script> 'ü'")
