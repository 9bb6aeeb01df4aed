"""Diff transfer on tiny synthetic models: the formula against a plain numpy reference, tensors
the donor left alone kept byte for byte, and every mismatch refused before anything is written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import require_real_model
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import load_file, save_file

from cvgen.weights.enhance import enhance_matrix
from cvgen.weights.gguf_copy import Edit, WeightsError, rewrite_gguf
from cvgen.weights.transfer import (
    RECORD_NAME,
    TransferOptionError,
    TransferSettings,
    check_transfer_paths,
    keep_fraction,
    transfer_model,
    transfer_values,
)

Q = GGMLQuantizationType
SIGMOID = TransferSettings()
NONE = TransferSettings(ratio="none")


def reference(
    base: np.ndarray, donor: np.ndarray, target: np.ndarray, settings: TransferSettings
) -> np.ndarray:
    """The issue's formula in float64, written plainly."""
    base, donor, target = (np.asarray(a, dtype=np.float64) for a in (base, donor, target))
    diff = donor - base
    if settings.ratio == "none":
        return target + diff
    d = np.abs(target - base)
    span = d.max() - d.min()
    x = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    r = 1.0 / (1.0 + np.exp(-(settings.steepness * x - settings.offset)))
    return target + diff * (1.0 - r)


def q4_k_bytes(rows: int, seed: int) -> np.ndarray:
    """Random Q4_K blocks (256 values, 144 bytes each) with sane f16 scales."""
    raw = np.random.default_rng(seed).integers(0, 256, size=(rows, 144), dtype=np.uint8)
    raw[:, 0:4] = np.array([0.01, 0.002], dtype=np.float16).view(np.uint8)
    return raw


def write_gguf(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    *,
    kinds: Mapping[str, GGMLQuantizationType] | None = None,
    architecture: str = "llama",
    blocks: int = 2,
) -> Path:
    """A tiny model GGUF: float32 `tensors` stored as `kinds` says (F32 by default); a uint8
    array with kind Q4_K is taken as the blocks' bytes."""
    writer = GGUFWriter(path, architecture)
    writer.add_key_value(f"{architecture}.block_count", blocks, GGUFValueType.UINT32)
    for name, values in tensors.items():
        kind = (kinds or {}).get(name, Q.F32)
        if kind == Q.F32:
            writer.add_tensor(name, np.asarray(values, dtype=np.float32))
        elif kind == Q.Q4_K:
            writer.add_tensor(name, values, raw_dtype=kind)
        else:
            writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_tensors(path: Path) -> dict[str, object]:
    return {tensor.name: tensor for tensor in GGUFReader(path).tensors}


def raw_bytes(path: Path, name: str) -> bytes:
    return np.asarray(gguf_tensors(path)[name].data).tobytes()  # type: ignore[attr-defined]


def values(path: Path, name: str) -> np.ndarray:
    tensor = gguf_tensors(path)[name]
    kind = Q(tensor.tensor_type)  # type: ignore[attr-defined]
    return np.asarray(dequantize(np.asarray(tensor.data), kind), dtype=np.float32)  # type: ignore[attr-defined]


@pytest.fixture
def three(tmp_path: Path) -> dict[str, Path]:
    """Base, donor and target GGUFs: `a` (F32) and `b` (Q8_0) change in both, `c` (F32) only
    in the target, `k` (Q4_K) in none, `kd` (Q4_K) in the donor."""
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 8)), rng.normal(size=(4, 64)), rng.normal(size=(5,))
    kinds = {"b": Q.Q8_0, "k": Q.Q4_K, "kd": Q.Q4_K}
    k, kd = q4_k_bytes(2, 1), q4_k_bytes(1, 2)
    base = {"a": a, "b": b, "c": c, "k": k, "kd": kd}
    donor = base | {"a": a + rng.normal(size=a.shape), "b": b + 0.3 * rng.normal(size=b.shape)}
    donor["kd"] = q4_k_bytes(1, 3)
    target = base | {"a": a * 1.5, "b": b - 0.2 * rng.normal(size=b.shape), "c": c + 1.0}
    return {
        role: write_gguf(tmp_path / f"{role}.gguf", models, kinds=kinds)
        for role, models in (("base", base), ("donor", donor), ("target", target))
    }


def test_keep_fraction_is_one_minus_the_sigmoid_of_the_normalised_distance() -> None:
    distance = np.array([0.5, 1.0, 3.0, 2.5], dtype=np.float32)
    x = (distance - 0.5) / 2.5
    expected = 1.0 - 1.0 / (1.0 + np.exp(-(12.0 * x - 6.0)))
    assert np.allclose(keep_fraction(distance, SIGMOID), expected, rtol=1e-5, atol=1e-7)
    # a steep sigmoid neither overflows nor warns: 1 at the nearest element, 0 at the farthest
    with np.errstate(all="raise"):
        steep = keep_fraction(distance, TransferSettings(steepness=1e30, offset=0.0))
    assert steep[0] == 0.5 and steep[2] == 0.0 and steep.dtype == np.float32


@pytest.mark.parametrize("settings", [SIGMOID, NONE, TransferSettings(steepness=3, offset=-1)])
def test_the_formula_matches_the_numpy_reference(settings: TransferSettings) -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(16, 32)).astype(np.float32)
    donor = base + rng.normal(size=base.shape).astype(np.float32)
    target = base + rng.normal(scale=0.5, size=base.shape).astype(np.float32)
    kept = (base.copy(), donor.copy(), target.copy())
    got = transfer_values(base, donor, target, settings)
    assert got is not None and got.dtype == np.float32
    assert np.allclose(got, reference(base, donor, target, settings), rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(kept, (base, donor, target), strict=True))
    if settings.ratio == "sigmoid":  # it is not task arithmetic
        assert not np.allclose(got, target + (donor - base), atol=1e-3)


def test_an_equal_distance_everywhere_gives_x_zero() -> None:
    base = np.arange(6, dtype=np.float32).reshape(2, 3)
    donor, target = base + 2.0, base + 0.5  # |target - base| is 0.5 everywhere: max = min
    got = transfer_values(base, donor, target, SIGMOID)
    keep = 1.0 - 1.0 / (1.0 + np.exp(6.0))  # x = 0: r = sigmoid(-offset)
    assert got is not None and np.allclose(got, target + 2.0 * keep, rtol=1e-6)


def test_a_zero_diff_is_none() -> None:
    base = np.ones((2, 2), dtype=np.float32)
    assert transfer_values(base, base.copy(), base * 3, SIGMOID) is None


def test_a_gguf_transfer_edits_only_what_the_donor_changed(
    three: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.gguf"
    report = transfer_model(three, out, SIGMOID)
    assert report.form == "gguf" and report.copied == 2
    assert {(r.name, r.source_type, r.stored_type) for r in report.changed} == {
        ("a", "F32", "F32"),
        ("b", "Q8_0", "Q8_0"),
        ("kd", "Q4_K", "Q8_0"),
    }
    expected = reference(
        *(values(three[role], "a") for role in ("base", "donor", "target")), SIGMOID
    )
    assert np.allclose(values(out, "a"), expected, rtol=1e-5, atol=1e-6)
    expected_b = reference(*(values(three[r], "b") for r in ("base", "donor", "target")), SIGMOID)
    step = np.abs(expected_b).max() / 127  # Q8_0's rounding
    assert np.abs(values(out, "b") - expected_b).max() <= step
    assert not np.allclose(values(out, "b"), values(three["target"], "b"), atol=step)
    for name in ("c", "k"):  # diff 0: the target's bytes, a Q4_K one not requantised
        assert raw_bytes(out, name) == raw_bytes(three["target"], name)
    assert Q(gguf_tensors(out)["k"].tensor_type) == Q.Q4_K  # type: ignore[attr-defined]
    fields = GGUFReader(out).fields
    recorded = {k: str(f.contents()) for k, f in fields.items() if k.startswith("cvgen.transfer.")}
    assert recorded == {
        "cvgen.transfer.base": "base.gguf",
        "cvgen.transfer.donor": "donor.gguf",
        "cvgen.transfer.target": "target.gguf",
        "cvgen.transfer.ratio": "sigmoid",
        "cvgen.transfer.steepness": "12",
        "cvgen.transfer.offset": "6",
        "cvgen.transfer.cvgen_version": recorded["cvgen.transfer.cvgen_version"],
    }
    assert fields["llama.block_count"].contents() == 2


def test_ratio_none_is_task_arithmetic(three: dict[str, Path], tmp_path: Path) -> None:
    transfer_model(three, tmp_path / "none.gguf", NONE)
    base, donor, target = (values(three[role], "a") for role in ("base", "donor", "target"))
    assert np.allclose(values(tmp_path / "none.gguf", "a"), target + donor - base, atol=1e-6)


def _mismatch(three: dict[str, Path], role: str, **changes: object) -> Path:
    rng = np.random.default_rng(5)
    tensors = {"a": rng.normal(size=(3, 8)), "b": rng.normal(size=(4, 64)), "c": np.zeros(5)}
    tensors |= {"k": q4_k_bytes(2, 1), "kd": q4_k_bytes(1, 2)}
    tensors |= changes.pop("tensors", {})  # type: ignore[arg-type]
    for name in changes.pop("drop", ()):  # type: ignore[attr-defined]
        del tensors[name]
    kinds = {"b": Q.Q8_0, "k": Q.Q4_K, "kd": Q.Q4_K}
    return write_gguf(three[role], tensors, kinds=kinds, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("role", "changes", "message"),
    [
        ("donor", {"tensors": {"a": np.zeros((3, 9))}}, r"tensor a: shape \[3, 9\] in --donor "),
        ("target", {"drop": ("c",)}, "tensor c is in --base .*base.gguf but not in --target"),
        ("base", {"drop": ("b",)}, "tensor b is in --target .*target.gguf but not in --base"),
        ("donor", {"blocks": 3}, "--donor .*donor.gguf is a 'llama' model of 3 blocks but --base"),
        ("target", {"architecture": "qwen2"}, "--target .* is a 'qwen2' model of 2 blocks"),
    ],
)
def test_a_mismatch_is_named_and_nothing_is_written(
    three: dict[str, Path], tmp_path: Path, role: str, changes: dict[str, object], message: str
) -> None:
    _mismatch(three, role, **changes)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(WeightsError, match=message) as caught:
        transfer_model(three, tmp_path / "out.gguf", SIGMOID)
    assert "\n" not in str(caught.value)
    if "shape" in message:
        assert "[3, 8] in --target" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_options_and_paths_are_refused(three: dict[str, Path], tmp_path: Path) -> None:
    for bad in ({"steepness": 0.0}, {"steepness": float("inf")}, {"offset": float("nan")}):
        with pytest.raises(TransferOptionError, match="--steepness|--offset"):
            TransferSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(TransferOptionError, match="--out .*: it is the --donor model"):
        check_transfer_paths(three, three["donor"])
    with pytest.raises(TransferOptionError, match="--base .*nope.gguf: no such file"):
        check_transfer_paths(three | {"base": tmp_path / "nope.gguf"}, tmp_path / "o.gguf")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder/model.safetensors").write_bytes(b"")
    with pytest.raises(TransferOptionError, match="--donor .*folder is a folder of safetensors"):
        check_transfer_paths(three | {"donor": tmp_path / "folder"}, tmp_path / "o.gguf")
    with pytest.raises(TransferOptionError, match="it is an existing folder"):
        check_transfer_paths(three, tmp_path / "folder")
    with pytest.raises(TransferOptionError, match="folder .*missing does not exist"):
        check_transfer_paths(three, tmp_path / "missing" / "o.gguf")


def test_only_an_earlier_transfer_output_is_replaced(
    three: dict[str, Path], tmp_path: Path
) -> None:
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"not cvgen's")
    with pytest.raises(TransferOptionError, match="it exists and is not a cvgen transfer output"):
        transfer_model(three, mine, SIGMOID)
    assert mine.read_bytes() == b"not cvgen's"
    out = tmp_path / "out.gguf"
    transfer_model(three, out, SIGMOID)
    transfer_model(three, out, NONE)  # replaced: it is cvgen's own
    assert str(GGUFReader(out).fields["cvgen.transfer.ratio"].contents()) == "none"


# --- safetensors folders -------------------------------------------------------------------------


def write_folder(folder: Path, tensors: Mapping[str, torch.Tensor], layers: int = 2) -> Path:
    folder.mkdir()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:2]}, folder / "model-1.safetensors")
    save_file({n: tensors[n] for n in names[2:]}, folder / "model-2.safetensors")
    config = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_safetensors_transfer(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, generator=generator)
    base = {"a": a.to(torch.bfloat16), "b": torch.randn(3, generator=generator)}
    base |= {"c": torch.randn(2, 2, generator=generator).half(), "ids": torch.arange(4)}
    donor = base | {"a": (a + torch.randn(4, 6, generator=generator)).to(torch.bfloat16)}
    target = base | {"a": (a * 2).to(torch.bfloat16), "c": base["c"] * 3}
    models = {
        role: write_folder(tmp_path / role, tensors)
        for role, tensors in (("base", base), ("donor", donor), ("target", target))
    }
    report = transfer_model(models, tmp_path / "out", SIGMOID)
    assert report.form == "safetensors" and report.copied == 3
    assert [r.name for r in report.changed] == ["a"]
    got = load_file(tmp_path / "out/model-1.safetensors")["a"]
    expected = reference(*(m["a"].float().numpy() for m in (base, donor, target)), SIGMOID)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, torch.from_numpy(expected.astype(np.float32)).to(torch.bfloat16))
    second = (tmp_path / "out/model-2.safetensors").read_bytes()
    assert second == (tmp_path / "target/model-2.safetensors").read_bytes()  # c, ids: kept
    record = json.loads((tmp_path / "out" / RECORD_NAME).read_text())
    assert record["donor"] == "donor" and record["ratio"] == "sigmoid"

    write_folder(tmp_path / "wide", base | {"b": torch.zeros(4)})
    with pytest.raises(WeightsError, match=r"tensor b: shape \[4\] in --donor .*wide but \[3\]"):
        transfer_model(models | {"donor": tmp_path / "wide"}, tmp_path / "out2", SIGMOID)
    write_folder(tmp_path / "ids", base | {"ids": torch.arange(4) + 1})
    with pytest.raises(WeightsError, match="tensor ids: dtype I64 is not F32"):
        transfer_model(models | {"donor": tmp_path / "ids"}, tmp_path / "out2", SIGMOID)
    write_folder(tmp_path / "deep", base, layers=3)
    with pytest.raises(WeightsError, match="--target .*deep: config.json gives"):
        transfer_model(models | {"target": tmp_path / "deep"}, tmp_path / "out2", SIGMOID)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(TransferOptionError, match="it is an existing folder"):
        transfer_model(models, tmp_path / "out", SIGMOID)


# --- the real model's tensors --------------------------------------------------------------------
# D and T are the base with one direction enhanced on attn_output by cvgen's directional
# enhancement, W' = W + a u (u^T W) per block (cvgen.weights.enhance.enhance_matrix). The directions
# are seeded random unit vectors (the weight-space claim holds for any direction);
# scripts/measure_transfer.py uses the demo pack's axis directions and measures the behaviour in
# llama.cpp.

ENHANCE = 1.5
DONOR_BLOCKS, TARGET_BLOCKS = (14, 16, 21, 22), (8, 16, 21, 22)  # 16, 21, 22 are shared


def _enhance(directions: Mapping[int, np.ndarray]) -> dict[str, Edit]:
    """The enhancement edits W' = W + a u (u^T W) on each block's attn_output."""

    def edit(u: np.ndarray) -> Edit:
        return lambda w: enhance_matrix(w, u, ENHANCE)

    return {f"blk.{block}.attn_output.weight": edit(u) for block, u in directions.items()}


def _gain(path: Path, block: int, u: np.ndarray, base: Path) -> float:
    """How much the block's attn_output amplifies direction u, against the base's."""
    name = f"blk.{block}.attn_output.weight"
    return float(np.linalg.norm(u @ values(path, name)) / np.linalg.norm(u @ values(base, name)))


@pytest.fixture(scope="module")
def real_three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A base of the real model's Q4_1 attn_output tensors of six blocks, and D and T."""
    model = require_real_model()
    blocks = sorted(set(DONOR_BLOCKS) | set(TARGET_BLOCKS))
    wanted = {f"blk.{block}.attn_output.weight" for block in blocks}
    folder = tmp_path_factory.mktemp("real")
    writer = GGUFWriter(folder / "base.gguf", "llama")
    writer.add_key_value("llama.block_count", 30, GGUFValueType.UINT32)
    for tensor in GGUFReader(model).tensors:
        if tensor.name in wanted:
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=Q(tensor.tensor_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    rng = np.random.default_rng(7)

    def unit() -> np.ndarray:
        v = rng.normal(size=576).astype(np.float32)
        return v / np.linalg.norm(v)

    donor_u = {block: unit() for block in DONOR_BLOCKS}
    target_u = {block: unit() for block in TARGET_BLOCKS}
    paths = {role: folder / f"{role}.gguf" for role in ("base", "donor", "target")}
    rewrite_gguf(paths["base"], paths["donor"], fields={}, edits=_enhance(donor_u))
    rewrite_gguf(paths["base"], paths["target"], fields={}, edits=_enhance(target_u))
    outs = {}
    for settings in (SIGMOID, NONE):
        outs[settings.ratio] = folder / f"out-{settings.ratio}.gguf"
        transfer_model(paths, outs[settings.ratio], settings)
    return {"paths": paths, "outs": outs, "donor_u": donor_u, "target_u": target_u}


@pytest.mark.slow
def test_real_tensors_carry_the_donors_direction_and_keep_the_targets(
    real_three: dict[str, Any],
) -> None:
    paths, outs = real_three["paths"], real_three["outs"]
    donor_u, target_u = real_three["donor_u"], real_three["target_u"]
    base = paths["base"]
    for ratio, out in outs.items():
        for block, u in donor_u.items():  # D's direction: amplified in O as in D, not in T
            donor_gain = _gain(paths["donor"], block, u, base)
            assert donor_gain > 2.0 and _gain(paths["target"], block, u, base) < 1.05
            assert abs(_gain(out, block, u, base) - donor_gain) < 0.03 * donor_gain, (ratio, block)
        for block, u in target_u.items():  # T's direction: kept as T has it
            target_gain = _gain(paths["target"], block, u, base)
            assert abs(_gain(out, block, u, base) - target_gain) < 0.03 * target_gain, (
                ratio,
                block,
            )
        # block 8 only T changed: the diff is 0 there, so O has T's bytes
        assert raw_bytes(out, "blk.8.attn_output.weight") == raw_bytes(
            paths["target"], "blk.8.attn_output.weight"
        )
    # the two ratios give different tensors where both models moved (block 16 is shared)
    name = "blk.16.attn_output.weight"
    assert raw_bytes(outs["sigmoid"], name) != raw_bytes(outs["none"], name)
