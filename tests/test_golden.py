"""The golden test: `cvgen generate` with a fixed seed writes the same pack as the code did
before the house was rebuilt (issue 13).

`tests/golden/*.json` hold the SHA-256 of every GGUF file and of samples.jsonl, and the manifest
with the machine's paths replaced by placeholders. The manifests are compared everywhere, their
numbers to a relative 1e-3 (the manifest rounds statistics such as `fisher_ratio` to 4 places,
and another CPU's float rounding moves the last place). The bytes are compared only on a machine
whose float arithmetic is the golden's: `platform` names the CPU architecture, torch's version
and a fingerprint of a few float operations (matrix products, an eigendecomposition, a softmax)
of the kind the collection and the solve run. On another machine the bytes check is skipped.

History: written first by the pre-move code (commit 0083ebd) on x86-64 Linux, torch 2.13.0+cpu.
Rewritten with the fingerprint on a machine of another CPU (AVX-512) whose packs matched those
manifests to the rounding and the samples file byte for byte; the pico tokenizer is trained on
the eight axes of that time (`TOKENIZER_AXES` in conftest.py), so later axes change nothing.
Refresh them only for a change that means to change the output:
`CVGEN_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
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


def numerics_fingerprint() -> str:
    """A digest of float results that differ between CPUs whose vector units or BLAS kernels
    round differently: torch and numpy matrix products of the collection's and the solve's
    shapes, a symmetric eigendecomposition and a softmax, on fixed inputs."""
    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    for rows, inner, cols in ((37, 32, 64), (9, 576, 1536), (64, 576, 576)):
        a = rng.standard_normal((rows, inner), dtype=np.float32)
        b = rng.standard_normal((inner, cols), dtype=np.float32)
        digest.update((torch.from_numpy(a) @ torch.from_numpy(b)).numpy().tobytes())
        digest.update((a @ b).tobytes())
    square = rng.standard_normal((64, 64))
    digest.update(np.linalg.eigh(square @ square.T)[1].tobytes())
    logits = torch.from_numpy(rng.standard_normal((8, 600), dtype=np.float32))
    digest.update(torch.softmax(logits, dim=-1).numpy().tobytes())
    return digest.hexdigest()[:16]


def _platform() -> str:
    return f"{platform.machine()} torch {torch.__version__} numerics {numerics_fingerprint()}"


def close(new: Any, golden: Any, path: str = "manifest") -> list[str]:
    """Where `new` differs from `golden`: the same keys, lists and strings, and numbers within
    a relative 1e-3 (an absolute 1e-4 near zero)."""
    if isinstance(new, dict) and isinstance(golden, dict):
        if set(new) != set(golden):
            return [f"{path}: keys {sorted(set(new) ^ set(golden))} on one side only"]
        return [line for key in new for line in close(new[key], golden[key], f"{path}.{key}")]
    if isinstance(new, list) and isinstance(golden, list):
        if len(new) != len(golden):
            return [f"{path}: {len(new)} items, the golden {len(golden)}"]
        return [
            line
            for i, pair in enumerate(zip(new, golden, strict=True))
            for line in close(*pair, f"{path}[{i}]")
        ]
    numbers = (int, float)
    if isinstance(new, numbers) and isinstance(golden, numbers) and not isinstance(new, bool):
        if isinstance(golden, bool) or not math.isclose(new, golden, rel_tol=1e-3, abs_tol=1e-4):
            return [f"{path}: {new!r}, the golden {golden!r}"]
        return []
    return [] if new == golden else [f"{path}: {new!r}, the golden {golden!r}"]


def _record(out: Path, paths: dict[str, str]) -> dict[str, Any]:
    files = {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(out.iterdir())
        if entry.suffix == ".gguf" or entry.name == "samples.jsonl"
    }
    manifest = json.loads((out / "pack.json").read_text(encoding="utf-8"))
    return {
        "platform": _platform(),
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
    differences = close(record["manifest"], golden["manifest"])
    assert not differences, differences
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


def test_the_manifest_comparison_takes_rounding_and_refuses_a_change() -> None:
    golden = {"fisher_ratio": {"7": 0.8437, "8": 2.0024}, "layers": [1, 2], "method": "mean-diff"}
    rounded = {"fisher_ratio": {"7": 0.8436, "8": 2.0026}, "layers": [1, 2], "method": "mean-diff"}
    assert close(rounded, golden) == []
    moved = {**rounded, "fisher_ratio": {"7": 0.8437, "8": 2.1}}
    assert close(moved, golden) == ["manifest.fisher_ratio.8: 2.1, the golden 2.0024"]
    assert close({**golden, "layers": [1, 3]}, golden) == ["manifest.layers[1]: 3, the golden 2"]
    assert close({**golden, "method": "pca-diff"}, golden)
    assert close({**golden, "tau": 0.5}, golden) == ["manifest: keys ['tau'] on one side only"]
