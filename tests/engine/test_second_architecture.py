"""The llama.cpp engine on a second family: Gemma 3 270M Q4_K_M (scripts/fetch_second_model.sh),
a base model without a chat template, whose graph normalises each block's FFN output before the
residual add and whose states are hundreds of times larger than SmolLM2's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require_binding, require_llama_cpp, require_second_model

from cvgen.cli import main
from cvgen.engine.context import ContextSettings, LlamaContext
from cvgen.engine.model import EngineTokenizer, open_model
from cvgen.llamacpp.binaries import complete

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]
THREADS = os.environ.get("CVGEN_TEST_THREADS", "2")
N_LAYER, N_EMBD = 18, 640
PROMPT = "The old lighthouse keeper climbed the stairs and"


@pytest.fixture(scope="module")
def gemma() -> Path:
    require_binding()
    return require_second_model()


def test_capture_and_control_vectors_follow_the_same_convention(gemma: Path) -> None:
    with open_model(gemma) as model:
        assert (model.n_layer, model.n_embd, model.architecture) == (N_LAYER, N_EMBD, "gemma3")
        assert EngineTokenizer(model).chat_template is None  # a base model
        prompts = [model.tokenize(f"{PROMPT} {word}", add_special=True) for word in ("saw", "a")]
        settings = ContextSettings(n_batch=256, n_seq=2, threads=int(THREADS))
        with LlamaContext(model, settings) as context:
            blocks = list(range(N_LAYER))
            before = context.run(prompts, wanted=blocks)
            alone = context.run(prompts[1:], wanted=blocks)
            assert before is not None and alone is not None
            cos = (before[:, 1] * alone[:, 0]).sum(-1)
            cos /= np.linalg.norm(before[:, 1], axis=-1) * np.linalg.norm(alone[:, 0], axis=-1)
            assert cos.min() > 0.999  # the BOS and prompt prefix decoded once, then shared
            vector = np.random.default_rng(0).standard_normal(N_EMBD).astype(np.float32) * 50
            context.set_vectors({9: vector})
            steered = context.run(prompts, wanted=blocks)
            context.set_vectors(None)
            assert steered is not None
            assert np.abs(steered[8] - before[8]).max() == 0.0
            assert np.abs(steered[9] - before[9] - vector).max() < 0.05  # |state| ~ 1e3-1e4
            assert np.array_equal(context.run(prompts, wanted=blocks), before)


def test_a_pack_of_the_base_model_loads_in_llama_cpp_and_changes_its_text(
    gemma: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pack"
    arguments = ["generate", "--model", str(gemma), "--axis", "language", "--samples", "16"]
    arguments += ["--threads", THREADS, "--out", str(out), "--cache-dir", str(tmp_path / "s")]
    result = CliRunner().invoke(main, [*arguments, "--quiet", "--tau", "0"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["engine"]["name"] == "llama.cpp" and manifest["prompt_format"] == "plain"
    assert (manifest["model"]["n_layer"], manifest["model"]["n_embd"]) == (N_LAYER, N_EMBD)
    binary = require_llama_cpp() / "llama-completion"
    plain = complete(gemma, PROMPT, n_predict=12, binary=binary, threads=int(THREADS))
    (ornate,) = out.glob("*__ornate.gguf")
    steered = complete(
        gemma,
        PROMPT,
        vectors=["--control-vector-scaled", f"{ornate}:8"],
        n_predict=12,
        binary=binary,
        threads=int(THREADS),
    )
    assert steered.applied == (1, N_LAYER)
    assert steered.text != plain.text
