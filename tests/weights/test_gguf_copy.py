"""The streaming GGUF rewrite: a rewrite with nothing changed is the input, byte for byte (on
the real models too); edits are stored in their own type, or Q8_0 where gguf-py cannot
quantise it, and say so; new fields replace old ones."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from conftest import real_model_path, second_model_path
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

from cvgen.weights.gguf_copy import GgufModel, NewTensor, WeightsError, rewrite_gguf

Q = GGMLQuantizationType


def small_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_name("small")
    writer.add_token_list([f"t{i}" for i in range(40)])
    values = rng.standard_normal((4, 256)).astype(np.float32)
    writer.add_tensor("a.q8", quantize(values, Q.Q8_0), raw_dtype=Q.Q8_0)
    writer.add_tensor("b.q4k", quantize(values, Q.Q8_0), raw_dtype=Q.Q8_0)  # retyped below
    writer.add_tensor("c.f32", values[0])
    writer.add_tensor("d.f16", values[1].astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("which", ["small", "real", "second"])
def test_a_rewrite_with_nothing_changed_is_the_input(tmp_path: Path, which: str) -> None:
    source = {"small": lambda: small_model(tmp_path / "m.gguf"), "real": real_model_path,
              "second": second_model_path}[which]()  # fmt: skip
    if source is None:
        pytest.skip(f"no {which} model here")
    assert rewrite_gguf(source, tmp_path / "out.gguf", fields={}) == []
    assert filecmp.cmp(source, tmp_path / "out.gguf", shallow=False)


def test_edits_keep_their_type_and_fields_and_tensors_are_added(tmp_path: Path) -> None:
    source = small_model(tmp_path / "m.gguf")
    done = rewrite_gguf(
        source,
        tmp_path / "out.gguf",
        fields={"general.name": ("renamed", GGUFValueType.STRING),
                "cvgen.x": (7, GGUFValueType.UINT32)},
        added={"c.bias": NewTensor(np.arange(3, dtype=np.float32), after="c.f32")},
        edits={"a.q8": lambda v: v * 2, "c.f32": lambda v: v + 1, "d.f16": lambda v: None},
        store_as={"c.f32": Q.F16},
    )  # fmt: skip
    assert [(r.name, r.source_type, r.stored_type) for r in done] == [
        ("a.q8", "Q8_0", "Q8_0"), ("c.f32", "F32", "F16")]  # fmt: skip
    reader = GGUFReader(tmp_path / "out.gguf")
    assert [t.name for t in reader.tensors] == ["a.q8", "b.q4k", "c.f32", "c.bias", "d.f16"]
    assert reader.fields["general.name"].contents() == "renamed"
    assert reader.fields["cvgen.x"].contents() == 7
    assert reader.fields["tokenizer.ggml.tokens"].contents()[39] == "t39"
    with GgufModel(source) as model:
        original = model.values("a.q8")
        expected = dequantize(quantize(original * 2, Q.Q8_0), Q.Q8_0)
        tensors = {t.name: t for t in reader.tensors}
        assert np.array_equal(dequantize(np.asarray(tensors["a.q8"].data), Q.Q8_0), expected)
        assert np.array_equal(np.asarray(tensors["b.q4k"].data), model.raw("b.q4k"))
        assert np.array_equal(
            np.asarray(tensors["c.f32"].data), (model.values("c.f32") + 1).astype(np.float16)
        )
        assert np.array_equal(np.asarray(tensors["c.bias"].data), [0, 1, 2])


def test_a_type_gguf_py_cannot_quantise_is_stored_as_q8_0(tmp_path: Path) -> None:
    second = second_model_path()
    if second is None:
        pytest.skip("no second model here")
    name = "blk.0.attn_output.weight"  # Q4_K in gemma-3-270m-q4_k_m
    done = rewrite_gguf(second, tmp_path / "out.gguf", fields={}, edits={name: lambda v: v})
    assert [(r.name, r.source_type, r.stored_type, r.fell_back) for r in done] == [
        (name, "Q4_K", "Q8_0", True)]  # fmt: skip
    with GgufModel(second) as before, GgufModel(tmp_path / "out.gguf") as after:
        assert after.tensors[name].kind == Q.Q8_0
        error = np.abs(after.values(name) - before.values(name)).max()
        assert 0 < error < 0.01 * np.abs(before.values(name)).max()


def test_bad_requests_write_nothing(tmp_path: Path) -> None:
    source = small_model(tmp_path / "m.gguf")
    for kwargs, message in (
        ({"edits": {"nope": lambda v: v}}, "tensor nope"),
        ({"added": {"a.q8": NewTensor(np.zeros(1))}}, "already in the model"),
        ({"edits": {"a.q8": lambda v: v}, "store_as": {"a.q8": Q.Q4_K}}, "cannot store it as Q4_K"),
        ({"edits": {"c.f32": lambda v: v[:2]}}, "edited shape"),
    ):
        with pytest.raises(WeightsError, match=message):
            rewrite_gguf(source, tmp_path / "out.gguf", fields={}, **kwargs)  # type: ignore[arg-type]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    with pytest.raises(WeightsError, match="it is the input model"):
        rewrite_gguf(source, source, fields={})
