"""Directional enhancement: the direction and its sign, the edit against a numpy reference,
ablation, untouched bytes, requantisation (gguf-py, llama-quantize, the Q8_0 fallback), the
errors, and one real check that an enhanced SmolLM2 loads in llama.cpp and writes other text."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require_llama_cpp, require_real_model, require_second_model
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize
from manifests import sample_manifest

from cvgen.pack.steering import PackSteering
from cvgen.vectors.gguf_file import write_control_vector
from cvgen.vectors.model_header import read_gguf_layout
from cvgen.weights.enhance import (
    axis_directions,
    enhance_edits,
    enhance_matrix,
    enhance_model,
    model_shape,
    parse_factors,
)
from cvgen.weights.gguf_copy import GgufModel, WeightsError
from cvgen.weights.requantise import (
    find_llama_quantize,
    read_gguf_header,
    rewrite_gguf_requantised,
)

Q = GGMLQuantizationType
N_EMBD, N_IN, N_FF, N_LAYER = 32, 64, 96, 6
TYPES = {1: Q.Q8_0, 2: Q.Q4_0, 3: Q.F32, 4: Q.Q8_0}  # attn_output's type per block


def unit(rng: np.random.Generator, size: int = N_EMBD) -> np.ndarray:
    vector = rng.standard_normal(size)
    return vector / np.linalg.norm(vector)


def write_pack(folder: Path, planted: dict[str, dict[int, np.ndarray]]) -> Path:
    """A pack of two axes whose files are debias = 0.3·u, positive = p·u, negative = −p·u
    (the positive-pole size p is 2, or −2 in block 4 of `language`: there the measured
    positive class lay on −u)."""
    folder.mkdir()
    manifest = sample_manifest()
    manifest["axes"] = {name: manifest["axes"][name] for name in planted}
    manifest["presets"] = {}
    for axis, blocks in planted.items():
        files = manifest["axes"][axis]["files"]
        size = {b: (-2.0 if axis == "language" and b == 4 else 2.0) for b in blocks}
        roles = {
            "debias": {b: 0.3 * u for b, u in blocks.items()},
            "positive": {b: size[b] * u for b, u in blocks.items()},
            "negative": {b: -size[b] * u for b, u in blocks.items()},
        }
        for role, vectors in roles.items():
            write_control_vector(
                folder / files[role],
                {b: v.astype(np.float32) for b, v in vectors.items()},
                model_hint="llama",
            )
    (folder / "pack.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture()
def planted(tmp_path: Path) -> dict[str, dict[int, np.ndarray]]:
    rng = np.random.default_rng(7)
    return {
        "language": {b: unit(rng) for b in (1, 2, 3, 4)},
        "optimism": {b: unit(rng) for b in (2, 3)},
    }


@pytest.fixture()
def pack(tmp_path: Path, planted: dict[str, dict[int, np.ndarray]]) -> Path:
    return write_pack(tmp_path / "pack", planted)


def write_model(path: Path, *, n_embd: int = N_EMBD, kquant: bool = False) -> Path:
    """A tiny 'llama' GGUF: attn_output of each type in TYPES, F32 ffn_down, a norm, and
    blk.5.attn_output (no vector in the pack); with `kquant`, block 1's attn_output is a
    Q4_K tensor of zero bytes (gguf-py cannot quantise Q4_K, so it cannot write a real one)."""
    rng = np.random.default_rng(3)
    writer = GGUFWriter(path, "llama")
    writer.add_embedding_length(n_embd)
    writer.add_block_count(N_LAYER)
    for block in (1, 2, 3, 4, 5):
        values = rng.standard_normal((n_embd, N_IN)).astype(np.float32)
        kind = TYPES.get(block, Q.Q8_0)
        name = f"blk.{block}.attn_output.weight"
        if kquant and block == 1:
            raw = np.zeros(quant_shape_to_byte_shape((n_embd, 256), Q.Q4_K), np.uint8)
            writer.add_tensor(name, raw, raw_dtype=Q.Q4_K)
        elif kind == Q.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)
        ffn = rng.standard_normal((n_embd, N_FF)).astype(np.float32)
        writer.add_tensor(f"blk.{block}.ffn_down.weight", ffn)
        writer.add_tensor(f"blk.{block}.attn_norm.weight", np.ones(n_embd, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def values_of(path: Path) -> dict[str, tuple[str, np.ndarray, bytes]]:
    """name -> (type, float32 values in numpy shape, raw bytes) of every tensor."""
    out = {}
    for tensor in GGUFReader(path).tensors:
        kind = Q(tensor.tensor_type)
        raw = np.asarray(tensor.data)
        values = raw if kind == Q.F32 else dequantize(raw, kind)
        out[tensor.name] = (kind.name, np.array(values, np.float32), raw.tobytes())
    return out


def reference(weight: np.ndarray, steps: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """W' = (I + a_k u_k u_kᵀ)···(I + a_1 u_1 u_1ᵀ) W in float64."""
    result = weight.astype(np.float64)
    for u, a in steps:
        result = result + a * np.outer(u, u @ result)
    return result


# --- the direction and the math --------------------------------------------------------------


def test_direction_is_the_unit_difference_toward_the_positive_pole(pack: Path, planted) -> None:
    directions = axis_directions(PackSteering(pack), "language")
    assert sorted(directions) == [1, 2, 3, 4]
    for block, u in directions.items():
        assert u.dtype == np.float32 and abs(np.linalg.norm(u) - 1) < 1e-6
        expected = -planted["language"][block] if block == 4 else planted["language"][block]
        assert float(u @ expected) > 0.9999, block  # positive - negative, not its negation
    with pytest.raises(WeightsError, match="unknown axis 'tone'; the pack has: language, optimism"):
        axis_directions(PackSteering(pack), "tone")


def test_the_edit_scales_the_written_component_along_u_only() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((N_EMBD, N_IN)).astype(np.float32)
    u = unit(rng).astype(np.float32)
    other = unit(rng)
    other -= (other @ u) * u  # a residual dimension orthogonal to u
    for factor in (1.5, -0.5, -1.0):
        edited = enhance_matrix(weight, u, factor)
        assert edited.dtype == np.float32
        np.testing.assert_allclose(edited, reference(weight, [(u, factor)]), atol=2e-5)
        x = rng.standard_normal(N_IN)
        assert np.isclose(u @ edited @ x, (1 + factor) * (u @ weight @ x), rtol=1e-4, atol=1e-4)
        assert np.isclose(other @ edited @ x, other @ weight @ x, rtol=1e-4, atol=1e-4)
    ablated = enhance_matrix(weight, u, -1.0)
    assert np.abs(u @ ablated).max() < 1e-5 * np.abs(u @ weight).max()


# --- GGUF ------------------------------------------------------------------------------------


def test_gguf_enhancement_matches_the_reference_and_keeps_types(
    tmp_path: Path, pack: Path, planted
) -> None:
    source = write_model(tmp_path / "m.gguf")
    out = tmp_path / "out.gguf"
    done = enhance_model(pack, source, out, {"optimism": -1.0, "language": 1.5}, ffn=True)
    before, after = values_of(source), values_of(out)
    edited = {f"blk.{b}.{t}.weight" for b in (1, 2, 3, 4) for t in ("attn_output", "ffn_down")}
    assert {item.name for item in done.rewritten} == edited
    assert not any(item.fell_back for item in done.rewritten)
    assert done.summary() == [
        "5 F32 -> F32: stored again in its own type by gguf-py",
        "1 Q4_0 -> Q4_0: stored again in its own type by gguf-py",
        "2 Q8_0 -> Q8_0: stored again in its own type by gguf-py",
    ]
    steering = PackSteering(pack)
    language = axis_directions(steering, "language")
    optimism = axis_directions(steering, "optimism")
    for name, (kind, values, raw) in before.items():
        assert after[name][0] == kind, name  # every type kept
        if name not in edited:
            assert after[name][2] == raw, name  # untouched: byte for byte
            continue
        block = int(name.split(".")[1])
        steps = [(language[block], 1.5)]  # the pack's axis order: language, then optimism
        if block in optimism:
            steps.append((optimism[block], -1.0))
        tolerance = {"F32": 1e-4, "Q8_0": 0.05, "Q4_0": 0.8}[kind]
        np.testing.assert_allclose(after[name][1], reference(values, steps), atol=tolerance)
    f32 = after["blk.3.attn_output.weight"][1]  # block 3: optimism ablated last, in float32
    assert np.abs(optimism[3] @ f32).max() < 1e-4
    record = {f.name: f.contents() for f in GGUFReader(out).fields.values()}
    assert json.loads(record["cvgen.enhance.factors"]) == {"optimism": -1.0, "language": 1.5}


def test_factor_zero_and_unlisted_blocks_leave_every_tensor_as_it_was(
    tmp_path: Path, pack: Path
) -> None:
    source = write_model(tmp_path / "m.gguf")
    names = model_shape(source).tensor_names
    assert enhance_edits(pack, {"language": 0.0}, form="gguf", tensor_names=names) == {}
    out = tmp_path / "out.gguf"
    done = enhance_model(pack, source, out, {"language": 0.0, "optimism": 2.0}, blocks=[3])
    assert [item.name for item in done.rewritten] == ["blk.3.attn_output.weight"]
    before, after = values_of(source), values_of(out)
    for name in before:
        if name != "blk.3.attn_output.weight":
            assert after[name][2] == before[name][2], name


def test_hf_model_is_edited_in_its_own_dtype(tmp_path: Path, pack: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 6}))
    rng = np.random.default_rng(5)
    tensors = {}
    for block in range(1, 5):
        o = rng.standard_normal((N_EMBD, N_IN)).astype(np.float32)
        tensors[f"model.layers.{block}.self_attn.o_proj.weight"] = torch.tensor(o).bfloat16()
        down = rng.standard_normal((N_EMBD, N_FF)).astype(np.float32)
        tensors[f"model.layers.{block}.mlp.down_proj.weight"] = torch.tensor(down)
    tensors["model.norm.weight"] = torch.ones(N_EMBD)
    save_file(tensors, str(folder / "model.safetensors"))
    out = tmp_path / "hf-out"
    done = enhance_model(pack, folder, out, {"language": -1.0}, ffn=True)
    assert len(done.rewritten) == 8 and done.binary is None
    from safetensors.torch import load_file

    written = load_file(str(out / "model.safetensors"))
    directions = axis_directions(PackSteering(pack), "language")
    o_proj = written["model.layers.2.self_attn.o_proj.weight"]
    assert o_proj.dtype == torch.bfloat16
    down = written["model.layers.2.mlp.down_proj.weight"].numpy()
    source_down = tensors["model.layers.2.mlp.down_proj.weight"].numpy()
    np.testing.assert_allclose(down, reference(source_down, [(directions[2], -1.0)]), atol=1e-4)
    assert np.abs(directions[2] @ down).max() < 1e-4  # ablated
    assert torch.equal(written["model.norm.weight"], tensors["model.norm.weight"])
    assert (out / "config.json").read_bytes() == (folder / "config.json").read_bytes()


def test_a_kquant_tensor_falls_back_to_q8_0_without_llama_quantize(
    tmp_path: Path, pack: Path
) -> None:
    source = write_model(tmp_path / "m.gguf", kquant=True)
    out = tmp_path / "out.gguf"
    done = enhance_model(pack, source, out, {"language": 1.5}, blocks=[1], use_llama_quantize=False)
    (item,) = done.rewritten
    assert (item.source_type, item.stored_type, item.fell_back) == ("Q4_K", "Q8_0", True)
    assert done.summary() == [
        "1 Q4_K -> Q8_0: stored as Q8_0 (gguf-py cannot quantise it; llama-quantize not used)"
    ]
    assert read_gguf_header(out).tensors["blk.1.attn_output.weight"].kind == Q.Q8_0


# --- errors ----------------------------------------------------------------------------------


def test_a_pack_for_another_model_and_bad_requests_are_refused(tmp_path: Path, pack: Path) -> None:
    wide = write_model(tmp_path / "wide.gguf", n_embd=48)
    with pytest.raises(WeightsError) as caught:
        enhance_model(pack, wide, tmp_path / "o.gguf", {"language": 1.0})
    assert str(caught.value) == (
        f"--model {wide}: pack file m-language__debias.gguf has direction.1 of 32 floats, "
        "but the model's llama.embedding_length is 48"
    )
    assert not (tmp_path / "o.gguf").exists()
    source = write_model(tmp_path / "m.gguf")
    names = model_shape(source).tensor_names
    with pytest.raises(WeightsError, match=r"^--blocks 5: no enhanced axis has a vector for"):
        enhance_edits(pack, {"language": 1.0}, form="gguf", tensor_names=names, blocks=[5])
    with pytest.raises(WeightsError, match=r"^tensor blk.4.attn_output.weight \(to enhance\)"):
        enhance_edits(
            pack, {"language": 1}, form="gguf", tensor_names=names - {"blk.4.attn_output.weight"}
        )
    with pytest.raises(WeightsError, match="unknown axis 'tone'"):
        enhance_model(pack, source, tmp_path / "o.gguf", {"tone": 1.0})
    assert parse_factors(("language=1.5", "optimism=-1", "language=2")) == {
        "optimism": -1.0,
        "language": 2.0,
    }
    with pytest.raises(WeightsError, match=r"^--enhance language=big: expected AXIS=FACTOR"):
        parse_factors(("language=big",))


# --- llama-quantize: K-quants stored again in their own type ---------------------------------


def tiny_kquant_llama(folder: Path, binary: Path) -> Path:
    """A 2-block llama (n_embd 256) in F32, quantised to Q4_K_M by llama-quantize."""
    rng = np.random.default_rng(1)
    writer = GGUFWriter(folder / "tiny-f32.gguf", "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(512)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_context_length(64)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tensor("token_embd.weight", rng.standard_normal((32, 256)).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(256, np.float32))
    shapes = {"attn_q": (256, 256), "attn_k": (256, 256), "attn_v": (256, 256)}
    shapes.update({"attn_output": (256, 256), "ffn_gate": (512, 256), "ffn_up": (512, 256)})
    shapes["ffn_down"] = (256, 512)
    for block in range(2):
        for name, shape in shapes.items():
            values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            writer.add_tensor(f"blk.{block}.{name}.weight", values)
        writer.add_tensor(f"blk.{block}.attn_norm.weight", np.ones(256, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = folder / "tiny-q4km.gguf"
    command = [str(binary), str(folder / "tiny-f32.gguf"), str(out), "Q4_K_M", "1"]
    subprocess.run(command, capture_output=True, check=True, timeout=120)
    return out


def test_llama_quantize_requantises_only_the_edited_kquant_tensors(tmp_path: Path) -> None:
    binary = find_llama_quantize()
    if binary is None:
        pytest.skip("llama-quantize not built (scripts/build_llama_cpp.sh builds it)")
    source = tiny_kquant_llama(tmp_path, binary)
    header = read_gguf_header(source)
    edited = ["blk.0.attn_output.weight", "blk.1.ffn_down.weight"]
    assert [header.tensors[n].kind for n in edited] == [Q.Q4_K, Q.Q6_K]
    u = unit(np.random.default_rng(2), 256).astype(np.float32)
    out = tmp_path / "out.gguf"
    edits = {name: (lambda w: enhance_matrix(w, u, -1.0)) for name in edited}
    done = rewrite_gguf_requantised(
        source, out, fields={}, edits=edits, llama_quantize=binary, threads=1
    )
    assert done.by_llama_quantize == frozenset(edited)
    assert done.summary() == [
        "1 Q4_K -> Q4_K: stored again in its own type by llama-quantize",
        "1 Q6_K -> Q6_K: stored again in its own type by llama-quantize",
    ]
    before, after = values_of(source), values_of(out)
    assert set(after) == set(before)
    for name, (kind, values, raw) in before.items():
        assert after[name][0] == kind, name
        if name in edited:
            assert after[name][2] != raw
            expected = reference(values, [(u, -1.0)])
            error = np.abs(after[name][1] - expected).mean() / np.abs(expected).mean()
            assert error < 0.15, name  # Q4_K / Q6_K rounding, not a wrong edit
            assert np.abs(u @ after[name][1]).mean() < 0.5 * np.abs(u @ values).mean()
        else:
            assert after[name][2] == raw, name
    assert not list(tmp_path.glob(".out.gguf*"))  # no intermediate left


# --- the real model --------------------------------------------------------------------------

PROMPT = "Once upon a time, in a small village by the sea, there lived"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["real", "second"])
def test_enhanced_models_load_in_llama_cpp_and_write_other_text(
    tmp_path: Path, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2 (Q4_1, requantised by gguf-py) and Gemma 3 (Q4_K/Q6_K, by llama-quantize):
    `cvgen bake --enhance` writes a file llama.cpp runs, whose text differs from the model's,
    with every tensor it did not edit byte for byte."""
    from click.testing import CliRunner
    from serve_pack import write_serve_pack

    from cvgen.cli import main
    from cvgen.llamacpp.binaries import complete

    model = require_real_model() if which == "real" else require_second_model()
    bins = require_llama_cpp()
    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(bins))  # where cvgen finds llama-quantize
    pack = write_serve_pack(tmp_path / "pack", model)  # random directions that fit the model
    binary = bins / "llama-completion"
    plain = complete(model, PROMPT, n_predict=8, threads=1, binary=binary).text
    out = tmp_path / "enhanced.gguf"
    result = CliRunner().invoke(main, ["bake", str(pack), "--model", str(model),
                                       "--enhance", "language=-1", "--ffn", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    by = "llama-quantize" if which == "second" else "gguf-py"
    assert f"stored again in its own type by {by}" in result.output
    assert "Q8_0 (gguf-py cannot" not in result.output
    text = complete(out, PROMPT, n_predict=8, threads=1, binary=binary).text
    assert text.strip() and text != plain
    before, after = read_gguf_layout(model), read_gguf_layout(out)
    edited = {n for n in (t.name for t in before.tensors) if "attn_output" in n or "ffn_down" in n}
    kinds = {t.name: t.kind for t in after.tensors}
    blocks = set(PackSteering(pack).axes["language"].positive)
    with GgufModel(model) as a, GgufModel(out) as b:
        for tensor in before.tensors:
            assert kinds[tensor.name] == tensor.kind, tensor.name
            same = np.array_equal(a.raw(tensor.name), b.raw(tensor.name))
            block = int(tensor.name.split(".")[1]) if tensor.name.startswith("blk.") else -1
            assert same != (tensor.name in edited and block in blocks), tensor.name
