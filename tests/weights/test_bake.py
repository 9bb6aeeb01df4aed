"""`cvgen bake` on small hand-made model files: the biases it writes, the bytes it keeps, the
metadata `cvgen inspect` shows, and every refusal (one line, exit 1, no file left behind)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import folder_snapshot, second_model_path
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import quantize
from serve_pack import SERVE_N_EMBD, SERVE_N_LAYER, write_serve_pack

from cvgen.cli import main
from cvgen.pack.steering import PackSteering

EXISTING_BIAS_BLOCK = 10  # inside the serve pack's blocks 8..20


def fake_model(path: Path, *, architecture: str = "llama", n_embd: int = SERVE_N_EMBD,
               extra: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """A model GGUF with the keys cvgen reads and a few tensors per block: ffn_down.weight
    (F32), attn_output.weight (Q8_0), one existing ffn_down.bias, and `extra` F32 tensors."""
    writer = GGUFWriter(path, architecture)
    writer.add_block_count(SERVE_N_LAYER)
    writer.add_embedding_length(n_embd)
    writer.add_name("fake")
    rng = np.random.default_rng(1)
    for block in range(SERVE_N_LAYER):
        down = rng.standard_normal((n_embd, 2)).astype(np.float32)
        writer.add_tensor(f"blk.{block}.ffn_down.weight", down)
        if block == EXISTING_BIAS_BLOCK:
            bias = rng.standard_normal(n_embd).astype(np.float32)
            writer.add_tensor(f"blk.{block}.ffn_down.bias", bias)
        attn = quantize(
            rng.standard_normal((n_embd, 32)).astype(np.float32), GGMLQuantizationType.Q8_0
        )
        writer.add_tensor(
            f"blk.{block}.attn_output.weight", attn, raw_dtype=GGMLQuantizationType.Q8_0
        )
    for name in extra:
        writer.add_tensor(name, np.ones(n_embd, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    model = fake_model(tmp_path / "model.gguf")
    return write_serve_pack(tmp_path / "pack", model), model


def tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


def test_the_bias_is_the_pack_sum_and_everything_else_is_byte_identical(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    pack, model = setup
    out = tmp_path / "baked.gguf"
    result = run(
        "bake", str(pack), "--set", "language=0.5", "--set", "mood=-1.25", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("baked language=0.5 mood=-1.25 into 13 blocks' ffn_down.bias")
    steering = PackSteering(pack)
    vectors = steering.block_vectors(
        steering.parse_assignments(("language=0.5", "mood=-1.25"), None)
    )
    before, after = tensors(model), tensors(out)
    for name, data in before.items():
        if name != f"blk.{EXISTING_BIAS_BLOCK}.ffn_down.bias":
            assert np.array_equal(after[name], data), name
    for block in range(SERVE_N_LAYER):
        name = f"blk.{block}.ffn_down.bias"
        if block == EXISTING_BIAS_BLOCK:  # added to the bias the model had
            assert np.array_equal(after[name], before[name] + vectors[block])
        elif block in vectors:
            assert np.array_equal(after[name], vectors[block])
        else:
            assert name not in after
    order = [t.name for t in GGUFReader(out).tensors]
    assert order.index("blk.8.ffn_down.bias") == order.index("blk.8.ffn_down.weight") + 1
    shown = run("inspect", str(out))
    assert shown.exit_code == 0, shown.output
    assert "  cvgen.bake.control_vectors = language=0.5,mood=-1.25\n" in shown.output
    assert "  cvgen.bake.pack = pack\n" in shown.output
    assert "tensors:      73 (13 ffn_down biases)" in shown.output


def _refused(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_bad_input_is_one_line_and_writes_nothing(setup: tuple[Path, Path], tmp_path: Path) -> None:
    pack, model = setup
    out = str(tmp_path / "out.gguf")
    gemma = fake_model(tmp_path / "gemma.gguf", architecture="gemma3")
    narrow = fake_model(tmp_path / "narrow.gguf", n_embd=64)
    scaled = fake_model(tmp_path / "scaled.gguf", extra=("blk.9.ffn_down.scale",))
    (tmp_path / "taken.gguf").write_bytes(b"mine")
    before = folder_snapshot(tmp_path)
    cases = [
        (
            ("--set", "language=1", "--model", str(gemma)),
            ("'gemma3'", "post_ffw_norm", "--enhance"),
        ),
        (("--set", "language=1", "--model", str(narrow)), ("n_embd 576", "64")),
        (("--set", "language=1", "--model", str(scaled)), ("blk.9.ffn_down.scale",)),
        (("--set", "tone=1"), ("tone",)),
        (("--set", "language=2"), ("language", "1.5", "--allow-unsafe-scales")),
        (("--set", "language=1", "--out", str(model)), ("it is the input model",)),
        (("--set", "language=1", "--out", str(tmp_path / "taken.gguf")), ("it exists",)),
        ((), ("nothing to bake",)),
    ]
    for extra, needles in cases:
        arguments = ["bake", str(pack), *extra]
        if "--out" not in extra:
            arguments += ["--out", out]
        result = run(*arguments)
        if extra == ():
            assert result.exit_code == 2 and "nothing to bake" in result.output
        else:
            _refused(result, *needles)
        assert folder_snapshot(tmp_path) == before, extra


def test_unsafe_scales_pass_with_the_flag(setup: tuple[Path, Path], tmp_path: Path) -> None:
    pack, _ = setup
    out = tmp_path / "o.gguf"
    result = run(
        "bake", str(pack), "--set", "language=2", "--allow-unsafe-scales", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert np.linalg.norm(tensors(out)["blk.8.ffn_down.bias"]) > 11.0  # 2 x a pole of norm 6


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG


def test_a_disk_that_fills_during_the_write_leaves_no_file(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    pack, _ = setup
    out = tmp_path / "full" / "baked.gguf"
    out.parent.mkdir()
    run_ = subprocess.run(
        [sys.executable, "-m", "cvgen.cli", "bake", str(pack), "--set", "language=1", "--out", str(out)],
        capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert run_.returncode == 1, run_.stderr
    assert run_.stderr.startswith(f"Error: --out {out}: cannot write it (no space left: ")
    assert run_.stderr.count("\n") == 1
    assert list(out.parent.iterdir()) == []


def test_the_real_gemma_3_file_is_refused_for_the_exact_bake(tmp_path: Path) -> None:
    second = second_model_path()
    if second is None:
        pytest.skip("no second model here")
    pack = write_serve_pack(tmp_path / "pack", second)  # a pack that fits: 640 wide, 18 blocks
    out = tmp_path / "out.gguf"
    result = run(
        "bake", str(pack), "--model", str(second), "--set", "language=1", "--out", str(out)
    )
    _refused(result, "architecture 'gemma3'", "normalised (post_ffw_norm)", "--enhance",
             "--control-vector-scaled")  # fmt: skip
    assert not out.exists()


def test_a_hugging_face_folder_takes_enhance_only(setup: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from cvgen.weights.enhance import axis_directions

    pack, _ = setup
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": SERVE_N_EMBD,
                                                    "num_hidden_layers": SERVE_N_LAYER}))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    weights = {f"model.layers.{n}.self_attn.o_proj.weight": torch.randn(SERVE_N_EMBD, 8, generator=generator)
               for n in range(SERVE_N_LAYER)} | {"lm_head.weight": torch.randn(4, SERVE_N_EMBD)}  # fmt: skip
    save_file(weights, folder / "model.safetensors")
    refused = run(
        "bake",
        str(pack),
        "--model",
        str(folder),
        "--set",
        "language=1",
        "--out",
        str(tmp_path / "x"),
    )
    assert refused.exit_code == 2 and "--enhance only" in refused.output
    out = tmp_path / "out"
    result = run(
        "bake", str(pack), "--model", str(folder), "--enhance", "language=-1", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "enhanced language=-1 in 13 tensors" in result.output
    written = load_file(out / "model.safetensors")
    u = axis_directions(PackSteering(pack), "language")[8]
    edited = written["model.layers.8.self_attn.o_proj.weight"].numpy()
    assert (
        np.abs(u @ edited).max()
        < 1e-4
        < np.abs(u @ weights["model.layers.8.self_attn.o_proj.weight"].numpy()).max()
    )
    assert torch.equal(
        written["model.layers.3.self_attn.o_proj.weight"],
        weights["model.layers.3.self_attn.o_proj.weight"],
    )
    assert torch.equal(written["lm_head.weight"], weights["lm_head.weight"])
    record = json.loads((out / "cvgen-enhance.json").read_text())
    assert json.loads(record["cvgen.enhance.factors"]) == {"language": -1.0}
