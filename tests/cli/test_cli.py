"""CliRunner tests for every command, including bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import craft_gguf, generate_pico_pack

from cvgen.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def pico_pack(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "pack"
    output = generate_pico_pack(pico_llama, out)
    assert f"wrote {out}" in output and "llama-server -m MODEL.gguf" in output
    return out


@pytest.mark.parametrize(
    "command",
    [
        "generate",
        "collect",
        "solve",
        "inspect",
        "commands",
        "compare",
        "eval",
        "axes",
        "html",
        "preset",
        "serve",
        "chat",
        "bake",
        "transfer",
    ],
)
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0
    assert f"Usage: main {command}" in result.output or f"Usage: cvgen {command}" in result.output
    assert "Show this message and exit." in result.output


def test_axes_lists_the_shipped_axes_with_classes() -> None:
    result = run("axes")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 13  # the header and the twelve shipped axes
    language = next(line for line in lines if line.startswith("language"))
    assert language.split()[:3] == ["language", "simple", "ornate"]


def test_commands_takes_the_suggested_scale_for_a_bare_sign(
    pico_pack: Path, tmp_path: Path
) -> None:
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(pico_pack, pack)
    manifest = json.loads((pack / "pack.json").read_text())
    manifest["axes"]["language"]["suggested_scale"] = {
        "negative": 2.25,
        "positive": 1.75,
        "calibrated": True,
    }
    (pack / "pack.json").write_text(json.dumps(manifest))
    files = manifest["axes"]["language"]["files"]
    result = run("commands", str(pack), "--set", "language=+", "--target", "llama-server")
    assert result.exit_code == 0, result.output
    assert f"{files['positive']}:1.75" in result.stdout
    result = run("commands", str(pack), "--set", "language=-", "--target", "llama-server")
    assert f"{files['negative']}:2.25" in result.stdout
    # an axis never calibrated suggests 1 on both poles
    result = run("commands", str(pack), "--set", "optimism=-", "--target", "llama-server")
    negative = manifest["axes"]["optimism"]["files"]["negative"]
    # (scale 1 is written as a plain --control-vector FILE)
    assert f"--control-vector {pack}/{negative}" in result.stdout
    assert f"{negative}:" not in result.stdout


def test_commands_picks_debias_and_the_pole_by_sign(pico_pack: Path) -> None:
    manifest = json.loads((pico_pack / "pack.json").read_text())
    files = manifest["axes"]["language"]["files"]
    result = run("commands", str(pico_pack), "--set", "language=0.5", "--set", "optimism=-1")
    assert result.exit_code == 0, result.output
    server, cli = result.stdout.strip().splitlines()
    assert "with 2 axes a safe common |scale| lies between 0.5 and 0.71" in result.stderr
    assert server.startswith("llama-server -m MODEL.gguf ")
    assert cli.startswith("llama-cli -m MODEL.gguf ")
    assert f"--control-vector {pico_pack}/{files['debias']}" in server
    assert f"--control-vector-scaled {pico_pack}/{files['positive']}:0.5" in server
    optimism = manifest["axes"]["optimism"]["files"]
    assert f"--control-vector {pico_pack}/{optimism['negative']}" in server
    assert optimism["positive"] not in server
    for token in server.split():
        path = token.split(":")[0]
        if path.endswith(".gguf") and path != "MODEL.gguf":
            assert Path(path).is_file()


def test_commands_legacy_syntax_and_layer_range(pico_pack: Path) -> None:
    result = run(
        "commands",
        str(pico_pack),
        "--set",
        "language=-0.25",
        "--legacy-syntax",
        "--target",
        "llama-completion",
        "--layer-range",
        "2",
        "4",
        "--model-path",
        "m.gguf",
    )
    assert result.exit_code == 0, result.output
    negative = json.loads((pico_pack / "pack.json").read_text())["axes"]["language"]["files"][
        "negative"
    ]
    line = result.output.strip()
    assert line.startswith("llama-completion -m m.gguf ")
    assert f"--control-vector-scaled {pico_pack}/{negative} 0.25" in line
    assert line.endswith("--control-vector-layer-range 2 4")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "colour=0.5"],
            "unknown axis 'colour' in --set; the pack has: language, optimism",
        ),
        (["--set", "language"], "expected AXIS=SCALE, got 'language'"),
        (["--set", "language=lots"], "scale 'lots' for axis 'language' is not a number"),
        (["--preset", "vivid"], "unknown preset 'vivid'; the pack has no presets"),
    ],
)
def test_commands_bad_input_is_one_line(pico_pack: Path, args: list[str], message: str) -> None:
    result = run("commands", str(pico_pack), *args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1


def test_commands_needs_a_selection_and_a_pack(pico_pack: Path, tmp_path: Path) -> None:
    assert run("commands", str(pico_pack)).exit_code == 2
    result = run("commands", str(tmp_path), "--set", "language=1")
    assert result.exit_code == 1 and "not a cvgen pack (no pack.json)" in result.output


def test_commands_reports_a_missing_file(pico_pack: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pico_pack, copy)
    files = json.loads((copy / "pack.json").read_text())["axes"]["language"]["files"]
    (copy / files["positive"]).unlink()
    result = run("commands", str(copy), "--set", "language=1")
    assert (
        result.exit_code == 1
        and f"file {files['positive']} of axis 'language' is missing" in result.output
    )


def test_inspect_prints_metadata_and_norms(pico_pack: Path) -> None:
    path = next(pico_pack.glob("*__ornate.gguf"))
    result = run("inspect", str(path))
    assert result.exit_code == 0, result.output
    assert "cvgen.axis = 'language'" in result.output
    assert "cvgen.class = 'ornate'" in result.output
    assert "controlvector.model_hint = 'llama'" in result.output


def test_inspect_refuses_what_llamacpp_refuses(tmp_path: Path, pico_pack: Path) -> None:
    bad = craft_gguf(tmp_path / "zero.gguf", [("direction.0", np.ones(4, dtype=np.float32))])
    result = run("inspect", str(bad))
    assert result.exit_code == 1 and "llama.cpp would refuse this file" in result.output
    assert "direction.0" in result.output
    text = tmp_path / "text.gguf"
    text.write_text("hello")
    result = run("inspect", str(text))
    assert result.exit_code == 1 and str(text) in result.output and result.output.count("\n") == 1
    good = next(pico_pack.glob("*__ornate.gguf"))
    result = run("inspect", str(good), "--n-embd", "64")
    assert result.exit_code == 1 and "64" in result.output


def test_generate_bad_axis_file_is_one_line_and_writes_nothing(
    pico_llama: Path, tmp_path: Path
) -> None:
    axis = tmp_path / "mine.json"
    axis.write_text(json.dumps({"data": [["a", "b"]]}))
    out = tmp_path / "pack"
    result = run("generate", "--model", str(pico_llama), "--axis", str(axis), "--out", str(out))
    assert result.exit_code == 1
    assert result.output == f"Error: {axis}: field 'classes' is missing\n"
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--axis", "nope"], "unknown axis 'nope'; shipped axes:"),
        (
            ["--axis", "language", "--skip-first", "two"],
            "--skip-first: 'two' is neither a block count",
        ),
        (
            ["--axis", "language", "--samples", "0"],
            "--samples: 0 must be at least 2 (it is per class)",
        ),
        (
            ["--axis", "language", "--eigen-candidates", "-1"],
            "--eigen-candidates: -1 must be 0 (all eigenvectors, exact) or a positive count "
            "(an approximation)",
        ),
        ([], "no axis chosen"),
    ],
)
def test_generate_bad_options(
    pico_llama: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "pack"
    result = run("generate", "--model", str(pico_llama), "--out", str(out), *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert not out.exists()


def test_generate_missing_model(tmp_path: Path) -> None:
    result = run(
        "generate",
        "--model",
        str(tmp_path / "absent.gguf"),
        "--axis",
        "language",
        "--out",
        str(tmp_path / "p"),
    )
    assert result.exit_code == 1 and "GGUF file not found" in result.output


def test_generate_unknown_method_lists_choices(pico_llama: Path, tmp_path: Path) -> None:
    result = run(
        "generate",
        "--model",
        str(pico_llama),
        "--axis",
        "language",
        "--method",
        "magic",
        "--out",
        str(tmp_path / "p"),
    )
    assert result.exit_code == 2 and "'cross-covariance', 'mean-diff', 'pca-diff'" in result.output


def test_generate_options_mirror_every_setting_with_its_default() -> None:
    import dataclasses

    from cvgen.generate.settings import GenerateSettings

    command = main.commands["generate"]  # type: ignore[attr-defined]
    params = {param.name: param for param in command.params}
    defaults = GenerateSettings(model="m.gguf", axes=("language",)).to_dict()
    for setting in dataclasses.fields(GenerateSettings):
        assert setting.name in params, setting.name
        if setting.name not in ("model", "axes"):
            assert params[setting.name].default == defaults[setting.name], setting.name
    assert params["model"].required and params["axes"].multiple


def test_remaking_a_pack_in_place_keeps_its_presets(pico_llama: Path, tmp_path: Path) -> None:
    out, store = tmp_path / "pack", tmp_path / "store"
    common = ["--model", str(pico_llama), "--samples", "6", "--tau", "0", "--quiet"]
    common += ["--out", str(out), "--cache-dir", str(store)]
    assert run("generate", "--axis", "language", "--axis", "optimism", *common).exit_code == 0
    assert run("preset", "add", str(out), "calm", "--set", "language=-0.4").exit_code == 0
    added = run("preset", "add", str(out), "both", "--set", "language=0.3", "--set", "optimism=0.2")
    assert added.exit_code == 0, added.output
    assert run("generate", "--axis", "language", "--axis", "optimism", *common).exit_code == 0
    presets = json.loads((out / "pack.json").read_text())["presets"]
    assert presets == {"calm": {"language": -0.4}, "both": {"language": 0.3, "optimism": 0.2}}
    assert "calm" in (out / "index.html").read_text()
    # a preset naming an axis the new pack lacks is dropped, the others kept
    assert run("generate", "--axis", "language", *common).exit_code == 0
    assert json.loads((out / "pack.json").read_text())["presets"] == {"calm": {"language": -0.4}}
