"""The real consumer: packs for SmolLM2-135M-Instruct loaded in the real llama.cpp (0c1e570).

llama.cpp logs a refused vector file as an error and runs on without it, exit 0; so every run
that applies a vector here is checked for the ``set_adapter_cvec`` line, for the absence of
error lines (cvgen.llamacpp.binaries does both) and for an output that differs from the unsteered one.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import pytest
import torch
from conftest import craft_gguf, require_llama_cpp, require_real_model
from shared_models import RealTransformers

from cvgen.eval.backend import Steering
from cvgen.extract.chat import render_chat_prompt, template_of_model_file
from cvgen.generate.pipeline import generate_pack
from cvgen.generate.settings import GenerateSettings
from cvgen.llamacpp.binaries import (
    Completion,
    LlamaCppError,
    LlamaServer,
    complete,
    supports_legacy_syntax,
)
from cvgen.llamacpp.commands import vector_arguments
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.gguf_file import write_control_vector
from cvgen.vectors.model_header import read_model_file_info

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]

N_LAYER = 30
PROMPT = "Once upon a time, in a small village by the sea, there lived"


@pytest.fixture(scope="module")
def model() -> Path:
    return require_real_model()


@pytest.fixture(scope="module")
def bins() -> Path:
    return require_llama_cpp()


@pytest.fixture(scope="module")
def pack(model: Path, tmp_path_factory: pytest.TempPathFactory, real_store: Path) -> Path:
    """`language` and `character_focus` from the real model, 32 samples per class (as the demo)."""
    out = tmp_path_factory.mktemp("llamacpp") / "pack"
    settings = GenerateSettings(
        model=str(model), axes=("language", "character_focus"), samples=32, seed=0
    )
    generate_pack(settings, out, store_root=real_store, show_progress=False)
    return out


def artifact(name: str, data: Any) -> None:
    """Keep a measured table where CI can find it ($CVGEN_ARTIFACTS), if that is set."""
    folder = os.environ.get("CVGEN_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(data, indent=2) + "\n")


def run(bins: Path, model: Path, prompt: str, vectors: Sequence[str] = (), **kw: Any) -> Completion:
    return complete(model, prompt, vectors=vectors, binary=bins / "llama-completion", **kw)


def test_every_pack_file_loads_in_llama_completion(bins: Path, model: Path, pack: Path) -> None:
    """Both syntaxes where the binary takes them, with and without a layer range; greedy output
    is deterministic and a pole file (at scale 10) changes it."""
    manifest = json.loads((pack / "pack.json").read_text())
    binary = bins / "llama-completion"
    plain = run(bins, model, PROMPT, n_predict=16)
    assert plain.applied is None and plain.text.strip()
    legacy = supports_legacy_syntax(binary)
    assert legacy is False  # 0c1e570 takes FILE:SCALE only (a binary before Dec 2025 would not)
    files = sorted(pack.glob("*.gguf"))
    assert len(files) == 6
    for path in files:
        scaled = run(bins, model, PROMPT, ["--control-vector-scaled", f"{path}:1"], n_predict=16)
        assert scaled.applied == (1, N_LAYER), path.name
        unit = run(bins, model, PROMPT, ["--control-vector", str(path)], n_predict=16)
        assert unit.text == scaled.text, f"{path.name}: scale 1 and --control-vector differ"
        ranged = run(
            bins,
            model,
            PROMPT,
            ["--control-vector-scaled", f"{path}:1", "--control-vector-layer-range", "10", "20"],
            n_predict=16,
        )
        assert ranged.applied == (10, 20), path.name
        if "__debias" not in path.name:
            # proof that the vector reaches the computation, whatever the axis's strength: at
            # scale 10 or -10 a pole file must change the greedy text (at 1, a weak axis such as
            # character_focus on this model may leave 16 greedy tokens as they were; on this
            # story prompt the narration pole at +10 can push the model only further the way
            # it already goes, and leave them too: measured on an AVX-512 build)
            changed = []
            for scale in (10, -10):
                strong = run(
                    bins,
                    model,
                    PROMPT,
                    ["--control-vector-scaled", f"{path}:{scale}"],
                    n_predict=16,
                )
                assert strong.applied == (1, N_LAYER), path.name
                changed.append(strong.text != plain.text)
                if changed[-1]:
                    break
            assert any(changed), f"{path.name} changes the output at neither scale 10 nor -10"
            again = run(bins, model, PROMPT, ["--control-vector-scaled", f"{path}:1"], n_predict=16)
            assert again.text == scaled.text, f"{path.name}: temperature 0 is not deterministic"
    # the lines `cvgen commands` prints for two axes at once
    both = vector_arguments(
        manifest, [("language", 0.6), ("character_focus", -0.4)], vector_dir=str(pack)
    )
    combined = run(bins, model, PROMPT, both, n_predict=16)
    assert combined.applied == (1, N_LAYER) and combined.text != plain.text


def test_the_check_notices_a_file_llama_cpp_refuses(
    bins: Path, model: Path, tmp_path: Path
) -> None:
    """llama.cpp exits 0 without the vector; the log check turns that into an error."""
    refused = craft_gguf(tmp_path / "zero.gguf", [("direction.0", np.ones(576, np.float32))])
    narrow = craft_gguf(tmp_path / "narrow.gguf", [("direction.3", np.ones(64, np.float32))])
    for path in (refused, narrow):
        with pytest.raises(LlamaCppError, match="logged an error"):
            run(bins, model, PROMPT, ["--control-vector", str(path)], n_predict=4)


def test_llama_server_serves_a_pack_and_stops_by_pid(
    bins: Path, model: Path, pack: Path, tmp_path: Path
) -> None:
    manifest = json.loads((pack / "pack.json").read_text())
    vectors = vector_arguments(manifest, [("language", 1.0)], vector_dir=str(pack))
    server_binary = bins / "llama-server"
    with LlamaServer(model, binary=server_binary, log_path=tmp_path / "plain.log") as plain:
        unsteered = plain.completion(PROMPT, n_predict=24)["content"]
    steered_server = LlamaServer(
        model, vectors=vectors, binary=server_binary, log_path=tmp_path / "steered.log"
    )
    with steered_server as server:
        assert server.url.startswith("http://127.0.0.1:")
        steered = server.completion(PROMPT, n_predict=24)["content"]
        process = server.process
        assert process is not None and process.poll() is None
    assert steered.strip() and unsteered.strip() and steered != unsteered
    assert process.returncode is not None  # stopped and reaped by its own PID
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", steered_server.port)) != 0
    # a refused file: the server runs on without it, so start() must fail with the log
    refused = craft_gguf(tmp_path / "zero.gguf", [("direction.0", np.ones(576, np.float32))])
    with pytest.raises(LlamaCppError, match="logged an error"):
        LlamaServer(model, vectors=["--control-vector", str(refused)], binary=server_binary).start()
    with pytest.raises(LlamaCppError, match=r"exited with \d+ while starting.*\n(.|\n)*missing"):
        LlamaServer(tmp_path / "missing.gguf", binary=server_binary).start()


# ---------------------------------------------------------------------- the layer index


def _renormalised_kl(reference: dict[int, float], other: np.ndarray) -> float:
    """KL(P || Q) over P's top tokens, both renormalised on that support."""
    ids = np.array(list(reference))
    p = np.exp(np.array(list(reference.values()), dtype=np.float64))
    p /= p.sum()
    q = np.exp(other[ids].astype(np.float64))
    q /= q.sum()
    return float(np.sum(p * (np.log(p) - np.log(q))))


def test_direction_k_in_llama_cpp_is_the_output_of_hf_block_k(
    bins: Path, model: Path, pack: Path, tmp_path: Path, real_transformers: RealTransformers
) -> None:
    """A file holding only direction.k, in llama.cpp, matches the HF model with the same vector
    added by a forward hook at the output of model.layers[k], and not at k-1 or k+1 (which is
    what a file written one block late would match). The pack's vector at k is rescaled to
    norm 100 so that moving it by one block changes the next token clearly more than the Q4_1
    quantisation does."""
    hf = real_transformers.model()  # the session's one float32 load (tests/shared_models.py)
    tokenizer = real_transformers.tokenizer()
    blocks = hf.model.layers
    prompts = [
        "Write a story about a dragon.",
        "Describe the sea at night.",
        "What makes a good friend?",
        "Tell me about your favourite city.",
    ]
    token_lists = [
        list(
            tokenizer(
                render_chat_prompt(template_of_model_file(read_model_file_info(model)), p),
                add_special_tokens=False,
            )["input_ids"]
        )
        for p in prompts
    ]

    def hf_logprobs(tokens: list[int], block: int | None, vector: np.ndarray | None) -> np.ndarray:
        handle = None
        if block is not None and vector is not None:
            added = torch.from_numpy(vector)

            def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                if isinstance(output, tuple):
                    return (output[0] + added, *output[1:])
                return output + added

            handle = blocks[block].register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = hf(input_ids=torch.tensor([tokens])).logits[0, -1]
        finally:
            if handle is not None:
                handle.remove()
        return torch.log_softmax(logits.double(), dim=-1).numpy()

    server_binary = bins / "llama-server"
    # the unsteered HF rows, computed once: the same forward for every k below
    hf_plain = [hf_logprobs(t, None, None) for t in token_lists]
    with LlamaServer(model, binary=server_binary, log_path=tmp_path / "plain.log") as server:
        unsteered = [
            _renormalised_kl(server.next_token_logprobs(t), plain)
            for t, plain in zip(token_lists, hf_plain, strict=True)
        ]
    pole = ControlVector.from_gguf(next(pack.glob("*language__ornate.gguf"))).directions
    table: dict[str, Any] = {"unsteered": round(fmean(unsteered), 5)}
    for k in (6, 14, 22):
        vector = (100.0 * pole[k] / np.linalg.norm(pole[k])).astype(np.float32)
        path = tmp_path / f"only{k}.gguf"
        write_control_vector(path, {k: vector}, model_hint="llama")
        with LlamaServer(
            model,
            vectors=["--control-vector", str(path)],
            binary=server_binary,
            log_path=tmp_path / f"k{k}.log",
        ) as server:
            steered = [server.next_token_logprobs(t) for t in token_lists]
        row = {
            block: fmean(
                _renormalised_kl(ref, hf_logprobs(t, block, vector))
                for ref, t in zip(steered, token_lists, strict=True)
            )
            for block in (k - 1, k, k + 1)
        }
        moved = fmean(
            _renormalised_kl(ref, plain) for ref, plain in zip(steered, hf_plain, strict=True)
        )
        table[f"k={k}"] = {
            "hf_block_k-1": round(row[k - 1], 5),
            "hf_block_k": round(row[k], 5),
            "hf_block_k+1": round(row[k + 1], 5),
            "hf_unsteered": round(moved, 5),
        }
    artifact("layer_index_kl.json", table)
    for k in (6, 14, 22):
        cells = table[f"k={k}"]
        matched, before, after = cells["hf_block_k"], cells["hf_block_k-1"], cells["hf_block_k+1"]
        assert matched < 0.05, table
        assert 5 * matched < min(before, after), table


# ---------------------------------------------------------------------- sign, end to end


# --- cvgen eval on the real consumer ----------------------------------------------------------


def test_eval_backends_agree_on_token_logprobs_and_kl(
    bins: Path,
    model: Path,
    pack: Path,
    monkeypatch: pytest.MonkeyPatch,
    real_transformers: RealTransformers,
) -> None:
    """The llama.cpp backend (grammar-forced tokens, full-vocabulary log-probabilities) and the
    transformers backend (hooks) give the same forced-token log-probabilities and KL, up to
    the Q4_1 arithmetic, unsteered and with language at +1; the top-k KL is a lower bound."""
    from cvgen.eval.controls import AxisFiles
    from cvgen.eval.hf_backend import HfBackend
    from cvgen.eval.llamacpp_backend import LlamaCppBackend

    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(bins))
    llama = LlamaCppBackend(model, top_k=256)
    with real_transformers.in_cvgen():  # the session's one load (tests/shared_models.py)
        hf = HfBackend.load(str(model), device="cpu", dtype="float32")
    manifest = json.loads((pack / "pack.json").read_text())
    files = manifest["axes"]["language"]["files"]
    axis = AxisFiles(*(pack / files[role] for role in ("debias", "negative", "positive")))
    try:
        prompt = llama.prompt_ids("Write a story about a lighthouse keeper.")
        reply = llama.continuation_ids(
            "The lighthouse stood on a rock at the edge of the bay, and every night its lamp "
            "turned slowly over the dark water."
        )
        assert reply == hf.continuation_ids(
            "The lighthouse stood on a rock at the edge of the bay, and every night its lamp "
            "turned slowly over the dark water."
        )
        scored = {}
        for name, backend in (("llama.cpp", llama), ("hf", hf)):
            for label, steering in (
                ("plain", Steering("plain")),
                ("ornate", axis.steering("axis", 1.0)),
            ):
                with backend.session(steering) as session:
                    scored[name, label] = session.score([(prompt, reply)], distributions=True)[0]
    finally:
        llama.close()
    gaps = {
        label: np.abs(
            scored["llama.cpp", label].token_logprobs - scored["hf", label].token_logprobs
        )
        for label in ("plain", "ornate")
    }
    changes = {
        name: scored[name, "ornate"].token_logprobs - scored[name, "plain"].token_logprobs
        for name in ("llama.cpp", "hf")
    }
    exact = scored["hf", "ornate"].distributions.kl_from(scored["hf", "plain"].distributions)
    top = scored["llama.cpp", "ornate"].distributions.kl_from(
        scored["llama.cpp", "plain"].distributions
    )
    artifact(
        "eval_backends.json",
        {
            "token_logprob_gap_mean": {k: float(v.mean()) for k, v in gaps.items()},
            "steering_change": {k: v.tolist() for k, v in changes.items()},
            "kl_hf_exact": exact.tolist(),
            "kl_llama_top256": top.tolist(),
        },
    )
    # Q4_1 in llama.cpp (activations quantised for the matmuls) against the same weights
    # dequantised to float32 in transformers: measured mean gap 0.065 nats per token
    assert gaps["plain"].mean() < 0.12 and gaps["ornate"].mean() < 0.12, gaps
    # the two backends see the same steering: the per-token changes it causes agree
    assert np.corrcoef(changes["llama.cpp"], changes["hf"])[0, 1] > 0.8
    assert (
        abs(changes["llama.cpp"].mean() - changes["hf"].mean())
        < 0.3 * abs(changes["hf"].mean()) + 0.02
    )
    assert exact.mean() > 0.02
    assert abs(top.mean() - exact.mean()) < 0.25 * exact.mean() + 0.01


def test_cli_eval_on_llama_cpp_measures_the_language_axis(
    bins: Path, pack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cvgen eval` with real llama.cpp: the language axis's propensity rises with scale (its
    interval above 0), more steeply than the random direction's, and the negated vector's
    slope is the axis's, reversed."""
    from click.testing import CliRunner

    from cvgen.cli import main

    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(bins))
    target = pack.parent / "eval-pack"
    if not target.exists():
        import shutil

        shutil.copytree(pack, target)
    result = CliRunner().invoke(
        main,
        [
            "eval",
            str(target),
            "--axis",
            "language",
            "--backend",
            "llama.cpp",
            "--scales",
            "-1,0,1",
            "--prompts",
            "4",
            "--probe-pairs",
            "3",
            # the generations and the KL still run, but nothing here reads them: 4 tokens
            # of each (were 32 generated, 2 texts x 24 KL tokens; the test measured 235 s
            # before, 190 s after, at 1 thread on the shared 2-core machine)
            "--max-tokens",
            "4",
            "--neutral-texts",
            "1",
            "--kl-tokens",
            "4",
            "--calibration-scales",
            "",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((target / "eval.json").read_text())
    language = report["axes"]["language"]
    artifact("eval_language_llamacpp.json", language)
    slope = language["propensity"]["slope"]
    assert report["backend"] == "llama.cpp"
    assert slope["low"] > 0
    random = language["controls"]["random"]["slope"]["slope"]
    assert abs(random) < 0.5 * slope["slope"]
    negated = language["controls"]["negated"]["slope"]["slope"]
    assert negated == pytest.approx(-slope["slope"], rel=0.05, abs=0.01)
    manifest = json.loads((target / "pack.json").read_text())
    assert manifest["evaluation"]["backend"] == "llama.cpp"
