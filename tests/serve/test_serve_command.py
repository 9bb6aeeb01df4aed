"""`cvgen serve`'s checks, all made before the model loads (the server start is replaced by a
recorder), and its security defaults: loopback, the key from an option or the environment."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import real_model_path
from serve_pack import write_serve_pack

from cvgen.cli import main

serve_command = importlib.import_module(
    "cvgen.cli.serve"
)  # the module: cvgen.cli.serve is the command


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def record(steering: Any, model: Path, settings: Any, default: Any, **options: Any) -> None:
        calls.append({"model": model, "settings": settings, "default": default, **options})

    monkeypatch.setattr(serve_command, "run_server", record)
    monkeypatch.delenv(serve_command.API_KEY_VARIABLE, raising=False)
    return calls


@pytest.fixture
def model() -> Path:
    path = real_model_path()
    if path is None:
        pytest.skip("the SmolLM2 GGUF is not here (its header is read, the model not loaded)")
    return path


def serve(*arguments: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["serve", *arguments], env=env)
    return result.exit_code, result.output


def test_defaults_listen_on_loopback_without_a_key(
    tmp_path: Path, model: Path, started: list[dict[str, Any]]
) -> None:
    pack = write_serve_pack(tmp_path / "pack", model)
    code, output = serve(str(pack))  # the model: the pack's .gguf source
    assert code == 0, output
    (call,) = started
    assert (call["host"], call["port"], call["api_key"]) == ("127.0.0.1", 8080, None)
    assert call["model"] == model and call["default"] == ()
    assert call["settings"].max_tokens == 512 and call["settings"].max_body_bytes == 1 << 20
    assert "warning" not in output


def test_the_key_comes_from_the_environment_and_other_hosts_are_warned_of(
    tmp_path: Path, model: Path, started: list[dict[str, Any]]
) -> None:
    pack = write_serve_pack(tmp_path / "pack", model)
    code, output = serve(str(pack), "--preset", "vivid", env={"CVGEN_API_KEY": "k3y"})
    assert code == 0, output
    assert started[-1]["api_key"] == "k3y"
    assert started[-1]["default"] == (("language", "0.8"), ("mood", "-0.5"))
    code, output = serve(str(pack), "--host", "0.0.0.0", "--set", "mood=-1.5")
    assert code == 0, output
    assert "warning: --host 0.0.0.0 is reachable from other machines" in output
    assert started[-1]["default"] == (("mood", "-1.5"),)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--set", "tone=1"], "unknown axis 'tone'"),
        (["--set", "language=2"], "safe positive scale 1.5"),
        (["--set", "language=lots"], "is not a number"),
        (["--preset", "loud"], "unknown preset 'loud'"),
        (["--api-key", " "], "--api-key"),
        (["--model", "notes.txt"], "notes.txt"),
        (["--port", "70000"], "--port"),
    ],
)
def test_bad_options_are_one_line_before_the_model_loads(
    tmp_path: Path,
    model: Path,
    started: list[dict[str, Any]],
    options: list[str],
    words: str,
) -> None:
    pack = write_serve_pack(tmp_path / "pack", model)
    (tmp_path / "notes.txt").write_text("not a model")
    code, output = serve(
        str(pack), *[o.replace("notes.txt", str(tmp_path / "notes.txt")) for o in options]
    )
    assert code != 0 and not started
    assert words in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0]  # one line (after click's usage lines)


def test_a_pack_without_a_model_here_or_for_another_model_is_refused(
    tmp_path: Path, model: Path, started: list[dict[str, Any]]
) -> None:
    code, output = serve(str(tmp_path / "absent"))
    assert code != 0 and "not a cvgen pack" in output
    pack = write_serve_pack(tmp_path / "pack", tmp_path / "gone.gguf")
    code, output = serve(str(pack))
    assert code != 0 and "pass --model" in output
    manifest = json.loads((pack / "pack.json").read_text())
    manifest["model"]["n_embd"] = 960
    (pack / "pack.json").write_text(json.dumps(manifest))
    code, output = serve(str(pack), "--model", str(model))
    assert code != 0 and "n_embd 960" in output and not started
