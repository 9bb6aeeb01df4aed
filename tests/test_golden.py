"""The golden test: `cvgen generate` with a fixed seed writes the same pack as the code did
before the house was rebuilt (issue 13).

`tests/golden/*.json` were written by the pre-move code (commit 0083ebd) on x86-64 Linux with
torch 2.13.0+cpu: the SHA-256 of every GGUF file and of samples.jsonl, and the manifest with
this machine's paths replaced by placeholders. Refresh them only for a change that means to
change the output: `CVGEN_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import require_real_model
from shared_models import RealTransformers

from cvgen.cli import main

GOLDEN = Path(__file__).parent / "golden"
# Version strings (cvgen's, and the engine record's transformers version, which the
# newest-release check changes), and a digest over settings that hold this run's paths (the
# settings themselves are compared, with placeholders for the paths).
VOLATILE = ("cvgen_version", "settings_digest", "transformers")


def _normalised(value: Any, paths: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: _normalised(item, paths) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, list):
        return [_normalised(item, paths) for item in value]
    if isinstance(value, str):
        for path, placeholder in paths.items():
            value = value.replace(path, placeholder)
    return value


def _record(out: Path, paths: dict[str, str]) -> dict[str, Any]:
    files = {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(out.iterdir())
        if entry.suffix == ".gguf" or entry.name == "samples.jsonl"
    }
    manifest = json.loads((out / "pack.json").read_text(encoding="utf-8"))
    return {
        "platform": f"{platform.machine()} torch {torch.__version__}",
        "files": files,
        "manifest": _normalised(manifest, paths),
    }


def _check_against_golden(name: str, arguments: list[str], model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    command = ["generate", "--model", str(model), *arguments, "--out", str(out), "--quiet"]
    command += ["--cache-dir", str(tmp_path / "store")]
    result = CliRunner().invoke(main, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    repo = Path(__file__).resolve().parent.parent
    paths = {str(tmp_path): "<TMP>", str(model.parent): "<MODEL_DIR>", str(repo): "<REPO>"}
    record = _record(out, paths)
    golden_file = GOLDEN / f"{name}.json"
    if os.environ.get("CVGEN_WRITE_GOLDEN") == "1":
        golden_file.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    golden = json.loads(golden_file.read_text(encoding="utf-8"))
    assert record["manifest"] == golden["manifest"]
    if record["platform"] != golden["platform"]:
        pytest.skip(f"golden bytes were written on {golden['platform']}, not {record['platform']}")
    assert record["files"] == golden["files"]


def test_pico_pack_is_byte_identical_to_the_golden(pico_llama: Path, tmp_path: Path) -> None:
    arguments = ["--axis", "language", "--axis", "optimism", "--samples", "12", "--tau", "0"]
    _check_against_golden("pico-default", arguments, pico_llama, tmp_path)


def test_pico_pack_of_other_solvers_is_byte_identical(pico_qwen2: Path, tmp_path: Path) -> None:
    arguments = ["--axis", "character_focus", "--samples", "10", "--seed", "3"]
    arguments += ["--method", "pca-diff", "--features", "residual", "--skip-last", "2"]
    _check_against_golden("pico-pca-residual", arguments, pico_qwen2, tmp_path)


def test_pico_mean_diff_pack_is_byte_identical(pico_llama: Path, tmp_path: Path) -> None:
    arguments = ["--axis", "optimism", "--samples", "8", "--method", "mean-diff"]
    _check_against_golden("pico-mean-diff", arguments, pico_llama, tmp_path)


@pytest.mark.slow
def test_real_model_pack_is_byte_identical_to_the_golden(
    tmp_path: Path, real_transformers: RealTransformers
) -> None:
    model = require_real_model()
    arguments = ["--axis", "language", "--samples", "8", "--seed", "1", "--engine", "transformers"]
    # the session's one transformers load of the model (tests/shared_models.py): the same
    # loader's objects, so the bytes are those of a fresh load
    with real_transformers.in_cvgen():
        _check_against_golden("real-language", arguments, model, tmp_path)
