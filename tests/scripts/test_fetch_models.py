"""scripts/fetch_model.sh and scripts/fetch_second_model.sh with a damaged cached file: it is not
taken for the model, and nothing but the model's path ever reaches stdout (callers capture it).
The download is stubbed to fail at once, so no network is used."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
MODELS = {
    "fetch_model.sh": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "fetch_second_model.sh": "gemma-3-270m-q4_k_m.gguf",
}


@pytest.mark.parametrize("script", sorted(MODELS))
def test_a_damaged_cached_model_is_not_printed(tmp_path: Path, script: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / MODELS[script]).write_bytes(b"GGUF truncated")
    stub = tmp_path / "no-python"
    stub.write_text("#!/bin/sh\nexit 3\n")
    stub.chmod(0o755)
    done = subprocess.run(
        ["bash", str(SCRIPTS / script)],
        capture_output=True,
        text=True,
        env={**os.environ, "CVGEN_CACHE": str(tmp_path), "PYTHON": str(stub)},
        check=False,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert not (models / f"{MODELS[script]}.part").exists()
