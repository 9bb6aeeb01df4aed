"""`cvgen transfer` through CliRunner: the summary and fallback lines, and one-line errors with
exit code 2 for bad options, 1 for models that do not match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from cvgen.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["transfer", *args], catch_exceptions=False)


def _gguf(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A tiny llama GGUF: float32 arrays as F32, uint8 arrays as Q4_K blocks."""
    writer = GGUFWriter(path, "llama")
    writer.add_key_value("llama.block_count", 1, GGUFValueType.UINT32)
    for name, values in tensors.items():
        if values.dtype == np.uint8:
            writer.add_tensor(name, values, raw_dtype=GGMLQuantizationType.Q4_K)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def models(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(1, 144), dtype=np.uint8)
    blocks[:, :4] = np.array([0.01, 0.001], dtype=np.float16).view(np.uint8)
    base = {"w": rng.normal(size=(2, 4)).astype(np.float32), "k": blocks}
    changed = blocks.copy()
    changed[:, 20:] ^= 1
    donor = base | {"w": base["w"] + 1, "k": changed}
    target = base | {"w": base["w"] * 2}
    paths = [
        _gguf(tmp_path / f"{r}.gguf", m) for r, m in zip("bdt", (base, donor, target), strict=True)
    ]
    return ["--base", str(paths[0]), "--donor", str(paths[1]), "--target", str(paths[2])]


def test_transfer_writes_the_model_and_says_what_it_did(
    models: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "no-llama").mkdir()
    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(tmp_path / "no-llama"))  # no llama-quantize
    out = tmp_path / "o.gguf"
    result = run(*models, "--out", str(out), "--steepness", "8")
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip().splitlines()
    assert lines == [
        "  1 F32 -> F32: stored again in its own type by gguf-py",
        "  1 Q4_K -> Q8_0: stored as Q8_0 (gguf-py cannot quantise it; llama-quantize not used)",
        f"wrote {out}: 2 tensors changed, 0 copied byte for byte "
        "(ratio sigmoid, steepness 8, offset 6)",
    ]
    fields = GGUFReader(out).fields
    assert str(fields["cvgen.transfer.steepness"].contents()) == "8"
    none = run(*models, "--out", str(tmp_path / "n.gguf"), "--ratio", "none")
    assert none.exit_code == 0 and "(ratio none)" in none.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steepness", "0"], "--steepness: 0.0 must be finite and > 0"),
        (["--steepness", "inf"], "--steepness: inf must be finite and > 0"),
        (["--offset", "nan"], "--offset: nan must be finite"),
        (["--ratio", "half"], "'half' is not one of 'sigmoid', 'none'"),
    ],
)
def test_bad_options_exit_2(
    models: list[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    result = run(*models, "--out", str(tmp_path / "o.gguf"), *extra)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o.gguf").exists()


def test_bad_paths_exit_2_and_touch_nothing(models: list[str], tmp_path: Path) -> None:
    target = models[5]
    before = Path(target).read_bytes()
    same = run(*models, "--out", target)
    assert same.exit_code == 2 and f"Error: --out {target}: it is the --target model" in same.output
    assert Path(target).read_bytes() == before
    missing = run(*models[:4], "--target", str(tmp_path / "gone.gguf"), "--out", "x.gguf")
    assert missing.exit_code == 2 and "--target" in missing.output
    assert "gone.gguf: no such file or folder" in missing.output
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    taken = run(*models, "--out", str(foreign))
    assert taken.exit_code == 2 and "it exists and is not a cvgen transfer output" in taken.output
    assert foreign.read_text() == "mine"


def test_a_shape_mismatch_is_one_line_and_exit_1(models: list[str], tmp_path: Path) -> None:
    _gguf(
        Path(models[3]),
        {"w": np.zeros((2, 5), dtype=np.float32), "k": np.zeros((1, 144), np.uint8)},
    )
    result = run(*models, "--out", str(tmp_path / "o.gguf"))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("Error: tensor w: shape [2, 5] in --donor ")
    assert "but [2, 4] in --target" in result.output
    assert not (tmp_path / "o.gguf").exists()
