"""The real SmolLM2-135M-Instruct GGUF (scripts/fetch_model.sh): slow, run in CI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_real_model
from shared_models import RealTransformers

from cvgen.generate.pipeline import generate_pack
from cvgen.generate.settings import GenerateSettings
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.llamacpp_rules import llamacpp_problems

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_model() -> Path:
    return require_real_model()


@pytest.fixture(scope="module")
def real_pack(
    real_model: Path, tmp_path_factory: pytest.TempPathFactory, real_transformers: RealTransformers
) -> Path:
    """A `language` pack from the real model, 12 samples per class, collected by transformers
    (the llama.cpp engine's convention is tested in tests/engine/test_engine_capture.py), with
    the session's one transformers load of the model (tests/shared_models.py)."""
    out = tmp_path_factory.mktemp("real") / "pack"
    settings = GenerateSettings(
        model=str(real_model), axes=("language",), samples=12, seed=5, engine="transformers"
    )
    with real_transformers.in_cvgen():
        generate_pack(settings, out, store_root=out.parent / "store", show_progress=False)
    return out


def test_real_gguf_pack_is_valid_and_direction_k_matches_block_k(
    real_pack: Path, real_transformers: RealTransformers
) -> None:
    out = real_pack
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["model"]["n_layer"] == 30 and manifest["model"]["n_embd"] == 576
    for path in out.glob("*.gguf"):
        assert llamacpp_problems(path, n_embd=576, n_layer=30) == []
    files = {
        p.name.split("__")[1]: ControlVector.from_gguf(p).directions for p in out.glob("*.gguf")
    }
    assert len(files["ornate.gguf"]) >= 10  # most blocks pass tau on the real model

    model = real_transformers.model()  # float32, eval mode
    tokenizer = real_transformers.tokenizer()
    axis = json.loads((Path(__file__).resolve().parents[2] / "axes" / "language.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]

    def hidden(text: str) -> tuple[torch.Tensor, ...]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(input_ids=ids, output_hidden_states=True).hidden_states

    shifts = []
    for sample in samples:
        positive = axis["data"][sample["pairs"]["language"]][1]
        pos = hidden(f"{sample['stem']} {positive}. {sample['prompt']}")
        base = hidden(f"{sample['stem']}. {sample['prompt']}")
        shifts.append(
            np.stack(
                [
                    (
                        pos[k + 1][0, -1] - pos[k][0, -1] - base[k + 1][0, -1] + base[k][0, -1]
                    ).numpy()
                    for k in range(29)
                ]
            )
        )
    measured = np.mean(shifts, axis=0)  # (block, d): the positive class's mean delta shift
    errors = {"k": [], "k+1": []}  # relative error of m_B read from block k and from k+1
    for block in sorted(files["debias.gguf"])[:6]:
        vector = files["debias.gguf"][block] + files["ornate.gguf"][block]
        norm = float(np.linalg.norm(vector))
        for name, read in (("k", block), ("k+1", block + 1)):
            errors[name].append(abs(float(measured[read] @ vector) / norm - norm) / norm)
    # debias + positive = m_B u: block k's own shift projects onto it exactly (float rounding),
    # the next block's does not (on average over the blocks: one block may match by chance)
    assert max(errors["k"]) < 2e-3, errors
    assert float(np.mean(errors["k+1"])) > 0.05, errors
