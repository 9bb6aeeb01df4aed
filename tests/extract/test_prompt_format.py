"""A model without a chat template: generate says once that its prompts are plain text, and the
pack records how its prompts were given (`prompt_format` in pack.json, a note in README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cvgen.cli import main
from cvgen.pack.manifest import load_manifest

WARNING = "has no chat template: its prompts are given as plain text, not chat turns"


def generate(model: Path, out: Path, *options: str) -> Result:
    arguments = ["generate", "--model", str(model), "--axis", "language", "--samples", "6"]
    arguments += ["--tau", "0", "--out", str(out), "--cache-dir", str(out.parent / "store")]
    return CliRunner().invoke(main, [*arguments, *options], catch_exceptions=False)


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "verbose"])
def test_a_model_without_a_template_is_said_once_and_recorded(
    pico_plain: Path, tmp_path: Path, quiet: bool
) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("mine\n", encoding="utf-8")
    out = tmp_path / "pack"
    result = generate(pico_plain, out, *(["--quiet"] if quiet else []))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if WARNING in line]
    assert warnings == [
        f"cvgen: {pico_plain} {WARNING} (recorded as prompt_format: plain in pack.json)"
    ]
    manifest = load_manifest(out)
    assert manifest.prompt_format == "plain"
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "The model has no chat template, so the prompts were given to it as plain text" in readme
    assert mine.read_text(encoding="utf-8") == "mine\n"


def test_a_model_with_a_template_records_it_silently(pico_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    result = generate(pico_llama, out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "chat template" not in result.output
    assert json.loads((out / "pack.json").read_text())["prompt_format"] == "chat-template"
    assert "no chat template" not in (out / "README.md").read_text(encoding="utf-8")


def test_packs_written_before_the_field_still_load_and_render(
    pico_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pack"
    assert generate(pico_llama, out, "--quiet").exit_code == 0
    manifest = json.loads((out / "pack.json").read_text())
    del manifest["prompt_format"]
    (out / "pack.json").write_text(json.dumps(manifest), encoding="utf-8")
    for arguments in (["html", str(out)], ["commands", str(out), "--set", "language=0.5"]):
        result = CliRunner().invoke(main, arguments, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert "prompt_format" not in load_manifest(out).to_json()
