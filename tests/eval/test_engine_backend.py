"""The engine backend of `cvgen eval` (`cvgen.eval.engine_backend`): its decode planning on
synthetic sizes, then, on the real SmolLM2 model, against `llama-server` (the real consumer)
and against the engine's own logits read another way.

The real-model tests share one engine, one `llama-server` run per steering configuration and a
steering file of random directions on blocks 8-20 (the pack tests make real ones)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax

from cvgen.eval.backend import BackendError, Steering
from cvgen.eval.engine_backend import EngineBackend, log_softmax_rows, plan_score_decodes
from cvgen.eval.llamacpp_backend import LlamaCppBackend
from cvgen.vectors.control_vector import ControlVector
from tests.conftest import require_llama_cpp, require_real_model

PROMPTS = ("Write a story about a lighthouse keeper.", "Describe a rainy morning in a city.")
REPLIES = (
    "The lighthouse stood on a rock at the edge of the bay.",
    "Rain fell softly on the roofs, and the streets were quiet.",
)

# --- planning (no model) ------------------------------------------------------------------


def test_plan_keeps_the_order_and_every_limit() -> None:
    rng = np.random.default_rng(0)
    sequences = [
        [1, 2, 3, *rng.integers(4, 99, size=int(n)).tolist()] for n in rng.integers(5, 40, 30)
    ]
    firsts = [len(s) // 2 for s in sequences]
    counts = [len(s) - first for s, first in zip(sequences, firsts, strict=True)]
    decodes = plan_score_decodes(sequences, firsts, counts, n_batch=128, n_seq=5, max_outputs=60)
    assert [i for decode in decodes for i in decode] == list(range(30))
    for decode in decodes:
        assert len(decode) <= 5 and sum(counts[i] for i in decode) <= 60
        assert 3 + sum(len(sequences[i]) - 3 for i in decode) <= 128  # the 3-token prefix once
    assert len(decodes) > 30 // 5  # the token and output limits cut some decodes short


def test_plan_refuses_a_sequence_longer_than_a_decode() -> None:
    with pytest.raises(BackendError, match="a scored sequence of 9 tokens and 2 outputs exceeds"):
        plan_score_decodes([[1] * 9], [7], [2], n_batch=8, n_seq=4, max_outputs=10)


def test_log_softmax_rows_is_stable_and_normalised() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]], dtype=np.float32)
    rows = log_softmax_rows(logits)
    assert np.allclose(np.exp(rows).sum(axis=1), 1.0)
    assert np.allclose(rows, log_softmax(logits.astype(np.float64), axis=1))


# --- the real model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineBackend]:
    backend = EngineBackend(require_real_model(), threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def server(engine: EngineBackend) -> Iterator[LlamaCppBackend]:
    require_llama_cpp()
    backend = LlamaCppBackend(engine.model_path, threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def steering(engine: EngineBackend, tmp_path_factory: pytest.TempPathFactory) -> Steering:
    """Random unit directions times 6 on blocks 8-20, in one control-vector file."""
    rng = np.random.default_rng(7)
    directions = {}
    for block in range(8, 21):
        vector = rng.standard_normal(engine.n_embd)
        directions[block] = (6.0 * vector / np.linalg.norm(vector)).astype(np.float32)
    path = tmp_path_factory.mktemp("steer") / "random.gguf"
    ControlVector(directions, "SmolLM2").to_gguf(path)
    return Steering("random", ((path, 1.0),))


def _items(backend: EngineBackend | LlamaCppBackend) -> list[tuple[list[int], list[int]]]:
    prompts = [backend.prompt_ids(text) for text in PROMPTS]
    replies = [backend.continuation_ids(text) for text in REPLIES]
    return [(prompt, reply) for prompt in prompts for reply in replies]


GENERATED_TOKENS = 24


@pytest.fixture(scope="module")
def server_runs(
    server: LlamaCppBackend, steering: Steering
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """label -> the server's forced log-probabilities of every item (concatenated) and its
    greedy texts, unsteered ("plain") and steered: one server start per configuration."""
    items = _items(server)
    prompts = [server.prompt_ids(text) for text in PROMPTS]
    runs = {}
    for label, config in (("plain", Steering("plain")), ("steered", steering)):
        with server.session(config) as session:
            scores = np.concatenate([s.token_logprobs for s in session.score(items)])
            runs[label] = (scores, session.generate(prompts, max_tokens=GENERATED_TOKENS))
    return runs


@pytest.mark.slow
def test_token_ids_are_the_server_backends(engine: EngineBackend, server: LlamaCppBackend) -> None:
    assert _items(engine) == _items(server)
    assert engine.prompt_ids(PROMPTS[0])[0] == engine.prompt_ids(PROMPTS[1])[0]  # the template


@pytest.mark.slow
def test_forced_logprobs_match_the_server(
    engine: EngineBackend, server_runs: dict[str, tuple[np.ndarray, list[str]]], steering: Steering
) -> None:
    """Scored alone (one decode under 64 tokens) an item's log-probabilities are the
    server's to 0.01 nats; in one batch of four they differ by llama.cpp's batch arithmetic
    (measured 0.07 nats a token on average, about what Q4_1 against float32 costs), so the
    batch is held to 0.12 nats on average; the changes steering causes agree (correlation)."""
    items = _items(engine)
    server_scores = {label: run[0] for label, run in server_runs.items()}
    engine_scores, alone = {}, []
    for label, config in (("plain", Steering("plain")), ("steered", steering)):
        with engine.session(config) as session:
            engine_scores[label] = np.concatenate([s.token_logprobs for s in session.score(items)])
            if label == "plain":
                alone = [session.score([item])[0].token_logprobs for item in items[:2]]
    first_two = sum(len(reply) for _, reply in items[:2])
    gap_alone = np.abs(np.concatenate(alone) - server_scores["plain"][:first_two])
    assert gap_alone.mean() < 0.01, gap_alone
    for label in ("plain", "steered"):
        gap = np.abs(engine_scores[label] - server_scores[label])
        assert gap.mean() < 0.12, (label, gap.mean())
    engine_change = engine_scores["steered"] - engine_scores["plain"]
    server_change = server_scores["steered"] - server_scores["plain"]
    assert np.abs(engine_change).mean() > 0.05  # steering moves the log-probabilities
    assert np.corrcoef(engine_change, server_change)[0, 1] > 0.9


@pytest.mark.slow
def test_clearing_the_steering_restores_the_unsteered_scores_bit_for_bit(
    engine: EngineBackend, steering: Steering
) -> None:
    items = _items(engine)
    with engine.session(Steering("plain")) as session:
        before = session.score(items, distributions=True)
    with engine.session(steering) as session:
        steered = session.score(items, distributions=True)
    with engine.session(Steering("plain")) as session:
        after = session.score(items, distributions=True)
    for first, again, moved in zip(before, after, steered, strict=True):
        assert np.array_equal(first.token_logprobs, again.token_logprobs)
        assert np.abs(first.token_logprobs - moved.token_logprobs).max() > 0.1
        assert again.distributions is not None and first.distributions is not None
        assert np.all(again.distributions.kl_from(first.distributions) == 0.0)  # itself


@pytest.mark.slow
def test_kl_is_the_kl_of_the_logits_read_directly(
    engine: EngineBackend, steering: Steering
) -> None:
    """KL(unsteered || steered) from the session's `FullDistributions` equals the KL computed
    from the context's logits of the same single decode, in float64 with scipy."""
    prompt, reply = _items(engine)[0]
    sequence = [*prompt, *reply][:-1]
    outputs = list(range(len(prompt) - 1, len(sequence)))
    with engine.session(Steering("plain")) as session:
        plain = session.score([(prompt, reply)], distributions=True)[0]
    with engine.session(steering) as session:
        steered = session.score([(prompt, reply)], distributions=True)[0]
    assert plain.distributions is not None and steered.distributions is not None
    kl = steered.distributions.kl_from(plain.distributions)
    direct = []
    for vectors in (None, steering.block_vectors()):
        engine.context.set_vectors(vectors)
        engine.context.run([sequence], outputs=[outputs])
        direct.append(log_softmax(engine.context.logits().astype(np.float64), axis=1))
    engine.context.set_vectors(None)
    log_p, log_q = direct
    expected = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    assert kl.mean() > 0.01
    assert np.allclose(kl, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_greedy_generation_is_the_servers(
    engine: EngineBackend, server_runs: dict[str, tuple[np.ndarray, list[str]]], steering: Steering
) -> None:
    """Two prompts, unsteered and steered, 24 tokens, both prompts in one batch: the texts
    equal llama-server's at temperature 0 exactly (measured on this build; a batch rounding
    flip would make one differ, and that difference is what this test would show)."""
    prompts = [engine.prompt_ids(text) for text in PROMPTS]
    for label, config in (("plain", Steering("plain")), ("steered", steering)):
        with engine.session(config) as session:
            ours = session.generate(prompts, max_tokens=GENERATED_TOKENS)
        assert ours == server_runs[label][1], label
        assert all(len(text) > 20 for text in ours)


@pytest.mark.slow
def test_sessions_do_not_nest(engine: EngineBackend) -> None:
    with (
        engine.session(Steering("outer")),
        pytest.raises(BackendError, match="'outer' is still open"),
        engine.session(Steering("inner")),
    ):
        pass


@pytest.mark.slow
def test_a_missing_binding_is_one_line_naming_the_extra() -> None:
    """With llama_cpp not importable, opening the llama.cpp backend fails in one line naming
    the cvgen[llama] extra (the model file is fine, so the binding is what is missing)."""
    model = require_real_model()
    code = (
        "import importlib.util as u, sys\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'llama_cpp' else real(name, *a)\n"
        "from cvgen.eval.pack_eval import open_backend\n"
        "from cvgen.eval.settings import EvalSettings\n"
        "try:\n"
        f"    open_backend('llama.cpp', {str(model)!r}, settings=EvalSettings())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc); sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("EngineError ") and "cvgen[llama]" in done.stdout
    assert len(done.stdout.strip().splitlines()) == 1


def test_cli_eval_refuses_negative_gpu_layers(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cvgen.cli import main

    result = CliRunner().invoke(main, ["eval", str(tmp_path), "--gpu-layers", "-1"])
    assert result.exit_code != 0
    assert "--gpu-layers: -1 must be 0 (CPU) or a number of blocks" in result.output


def test_auto_chooses_the_engine_for_a_gguf_and_the_server_without_the_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cvgen.eval import pack_eval

    monkeypatch.setattr(pack_eval, "binding_available", lambda: True)
    assert pack_eval.choose_backend("auto", "m.gguf") == "llama.cpp"
    assert pack_eval.choose_backend("auto", "HuggingFaceTB/SmolLM2") == "hf"
    assert pack_eval.choose_backend("llama-server", "m.gguf") == "llama-server"
    monkeypatch.setattr(pack_eval, "binding_available", lambda: False)
    monkeypatch.setattr(pack_eval, "find_binary", lambda name: Path("/bin") / name)
    assert pack_eval.choose_backend("auto", "m.gguf") == "llama-server"
    with pytest.raises(pack_eval.EvalError, match="not one of auto, llama.cpp, llama-server, hf"):
        pack_eval.choose_backend("server", "m.gguf")


def test_plan_gives_each_prompt_its_own_decode_and_batches_distinct_prompts() -> None:
    """Continuations of one prompt share a decode (the prompt once); prompts that share only
    the template's prefix are batched together."""
    template, prompts = [1, 2, 3], [[10, 11, 12, 13], [20, 21, 22, 23]]
    sequences, firsts = [], []
    for prompt in prompts:
        for reply in ([30, 31], [40, 41]):
            sequences.append([*template, *prompt, *reply][:-1])
            firsts.append(len(template) + len(prompt) - 1)
    counts = [2] * 4
    plan = plan_score_decodes(sequences, firsts, counts, n_batch=64, n_seq=8, max_outputs=64)
    assert plan == [[0, 1], [2, 3]]
    alone = [[*template, *prompt] for prompt in prompts]
    plan = plan_score_decodes(alone, [6, 6], [1, 1], n_batch=64, n_seq=8, max_outputs=64)
    assert plan == [[0, 1]]
