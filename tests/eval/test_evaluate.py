"""`cvgen eval`: settings, control files, the transformers backend's hooks, the propensity
and KL plumbing on known inputs, and CLI runs on the pico model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from conftest import generate_pico_pack
from cvgen.eval.backends import FullDistributions, HfBackend, Scored, Steering

from cvgen.cli.main import main
from cvgen.eval.evaluate import (
    AxisFiles,
    EvalError,
    EvalSettings,
    kl_against,
    parse_scales,
    propensities,
    random_directions,
)
from cvgen.eval.summary import _safe_scales
from cvgen.vectors.gguf_io import read_control_vector, write_control_vector

FAST = [
    "--prompts",
    "3",
    "--max-tokens",
    "8",
    "--neutral-texts",
    "2",
    "--kl-tokens",
    "6",
    "--probe-pairs",
    "2",
    "--probe-tokens",
    "6",
    "--scales",
    "-1,0,1",
    "--bootstrap",
    "200",
    "--quiet",
]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def pico_pack(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "pack"
    generate_pico_pack(pico_llama, out)
    return out


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"scales": (0.0, 1.0)},
            "--scales: [0.0, 1.0] must hold 0 and at least one scale of each sign",
        ),
        (
            {"scales": (1.0, 0.0, -1.0)},
            "--scales: [1.0, 0.0, -1.0] must be ascending without repeats",
        ),
        ({"kl_budget": 0.0}, "--kl-budget: 0.0 must be a positive number"),
        ({"prompts": 0}, "--prompts: 0 must be >= 1"),
        ({"repetition_tolerance": -0.1}, "--repetition-tolerance: -0.1 must be >= 0"),
        (
            {"calibration_scales": (1.0, 2.0)},
            "--calibration-scales: [1.0, 2.0] must be ascending and beyond the sweep's largest "
            "|scale| on both sides",
        ),
    ],
)
def test_settings_refuse_bad_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(EvalError) as caught:
        EvalSettings(**options)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_parse_scales_names_the_bad_item() -> None:
    assert parse_scales("-1.5, 0,2") == (-1.5, 0.0, 2.0)
    with pytest.raises(EvalError, match=r"--scales: 'x' is not a number \(in '-1,x,1'\)"):
        parse_scales("-1,x,1")


# --- control files ---------------------------------------------------------------------------


def test_random_directions_keep_each_blocks_norm_and_are_seeded() -> None:
    rng = np.random.default_rng(1)
    positive = {k: rng.standard_normal(64).astype(np.float32) * k for k in (1, 2, 3)}
    first = random_directions(positive, seed=7)
    again = random_directions(positive, seed=7)
    other = random_directions(positive, seed=8)
    for block, vector in positive.items():
        assert np.linalg.norm(first[block]) == pytest.approx(np.linalg.norm(vector), rel=1e-5)
        np.testing.assert_array_equal(first[block], again[block])
        assert not np.allclose(first[block], other[block])
        cosine = first[block] @ vector / (np.linalg.norm(first[block]) * np.linalg.norm(vector))
        assert abs(cosine) < 0.5  # a random direction in 64 dimensions is far from the axis


def test_axis_files_choose_the_pole_by_sign(tmp_path: Path) -> None:
    files = AxisFiles(
        tmp_path / "m-a__debias.gguf",
        tmp_path / "m-a__neg.gguf",
        tmp_path / "m-a__pos.gguf",
        tmp_path / "rand.gguf",
        tmp_path / "negated.gguf",
    )
    assert files.steering("axis", 0.0).files == ((files.debias, 1.0),)
    assert files.steering("axis", -0.5).files == ((files.debias, 1.0), (files.negative, 0.5))
    assert files.steering("axis", 1.5).files == ((files.debias, 1.0), (files.positive, 1.5))
    assert files.steering("random", -1.0).files == ((files.debias, 1.0), (files.random, -1.0))
    assert files.steering("negated", 1.0).files == ((files.debias, 1.0), (files.negated, 1.0))
    assert Steering("x", files.steering("axis", 1.5).files).arguments() == [
        "--control-vector-scaled",
        f"{files.debias}:1,{files.positive}:1.5",
    ]


def test_steering_sums_its_scaled_files(tmp_path: Path) -> None:
    a = {1: np.full(8, 1.0, np.float32), 2: np.full(8, 2.0, np.float32)}
    b = {2: np.full(8, 10.0, np.float32), 3: np.full(8, 3.0, np.float32)}
    write_control_vector(tmp_path / "a.gguf", a, model_hint="llama")
    write_control_vector(tmp_path / "b.gguf", b, model_hint="llama")
    total = Steering("s", ((tmp_path / "a.gguf", 1.0), (tmp_path / "b.gguf", -0.5))).block_vectors()
    assert sorted(total) == [1, 2, 3]
    np.testing.assert_allclose(total[1], 1.0)
    np.testing.assert_allclose(total[2], 2.0 - 5.0)
    np.testing.assert_allclose(total[3], -1.5)
    assert Steering("none").block_vectors() == {} and Steering("none").arguments() == []


# --- propensity and KL plumbing on known inputs ----------------------------------------------


class FixedSession:
    """Scores each continuation by a table: every token of continuation c gets logprob[c]."""

    def __init__(self, logprob: dict[tuple[int, ...], float]) -> None:
        self.logprob = logprob
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def score(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], *, distributions: bool = False
    ) -> list[Scored]:
        out = []
        for prompt, continuation in items:
            self.calls.append((tuple(prompt), tuple(continuation)))
            value = self.logprob[tuple(continuation)] + 0.1 * len(prompt)
            out.append(Scored(np.full(len(continuation), value)))
        return out

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int) -> list[str]:
        return ["" for _ in prompts]


def test_propensity_is_mean_positive_minus_negative_per_prompt() -> None:
    session = FixedSession({(1,): -2.0, (2, 2): -1.0, (3,): -4.0, (4, 4, 4): -0.5})
    pairs = [((1,), (2, 2)), ((3,), (4, 4, 4))]  # (negative, positive)
    values = propensities(session, [(9,), (9, 9)], pairs)
    # pair 1: -1 - -2 = 1; pair 2: -0.5 - -4 = 3.5; the prompt offset cancels: mean 2.25
    np.testing.assert_allclose(values, [2.25, 2.25])
    assert len(session.calls) == 8


def test_kl_against_identical_distributions_is_zero_and_detects_a_change() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 11))
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    reference = [Scored(np.zeros(5), FullDistributions(log_p.astype(np.float32)))]
    same = [Scored(np.zeros(5), FullDistributions(log_p.astype(np.float32)))]
    np.testing.assert_allclose(kl_against(reference, same), 0.0, atol=1e-6)
    shifted = logits.copy()
    shifted[:, 0] += 2.0
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    moved = [Scored(np.zeros(5), FullDistributions(log_q.astype(np.float32)))]
    expected = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    np.testing.assert_allclose(kl_against(reference, moved), expected, rtol=1e-4)


def test_safe_scales_read_each_pole_on_its_own_side() -> None:
    """A synthetic damage curve: KL 0.02 s^2 on the positive side (budget 0.1 is crossed
    between 2 and 3: 0.08 + 0.2 * 0.1 -> 2.2), 0.05 s^2 on the negative side (crossed between
    1 and 1.5 at 1 + 0.05/0.0625 * 0.5 = 1.4); the repetition bound rises past 0.05 at +3 only
    after the KL limit, and never on the negative side."""
    scales = [-3.0, -2.0, -1.5, -1.0, 0.0, 1.0, 1.5, 2.0, 3.0]
    kl = [(0.05 if s < 0 else 0.02) * s * s for s in scales]
    rise_low = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2]
    damage = {"scales": scales, "kl": kl, "repetition_rise_low": rise_low}
    safe = _safe_scales(damage, EvalSettings(kl_budget=0.1))
    assert safe["positive"] == {"scale": pytest.approx(2.2), "limited_by": "kl"}
    assert safe["negative"] == {"scale": pytest.approx(1.4), "limited_by": "kl"}
    damage["repetition_rise_low"] = [0.0] * 7 + [0.1, 0.2]  # clear repetition from +2 on
    safe = _safe_scales(damage, EvalSettings(kl_budget=0.1))
    # repetition crosses 0.05 between 1.5 (0) and 2 (0.1): 1.5 + 0.5 * 0.5 = 1.75
    assert safe["positive"] == {"scale": pytest.approx(1.75), "limited_by": "repetition"}


# --- the transformers backend ----------------------------------------------------------------


def test_hf_hook_adds_the_vector_to_the_output_of_its_block(
    pico_llama: Path, tmp_path: Path
) -> None:
    """direction.k added at block k's output must equal adding it to block k+1's input."""
    backend = HfBackend.load(str(pico_llama), device="cpu", dtype="float32")
    block = 2
    vector = np.random.default_rng(3).standard_normal(backend.n_embd).astype(np.float32)
    write_control_vector(tmp_path / "v.gguf", {block: vector}, model_hint="llama")
    ids = backend.prompt_ids("Write about a lighthouse.")
    continuation = backend.continuation_ids(" The lamp was lit.")
    with backend.session(Steering("v", ((tmp_path / "v.gguf", 0.7),))) as session:
        steered = session.score([(ids, continuation)], distributions=True)[0]
    with backend.session(Steering("none")) as session:
        plain = session.score([(ids, continuation)], distributions=True)[0]

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
        hidden = args[0] if args else kwargs["hidden_states"]
        added = hidden + torch.from_numpy(vector * np.float32(0.7))
        if args:
            return (added, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": added}

    handle = backend.blocks[block + 1].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with backend.session(Steering("none")) as session:
            manual = session.score([(ids, continuation)], distributions=True)[0]
    finally:
        handle.remove()
    np.testing.assert_allclose(steered.token_logprobs, manual.token_logprobs, atol=1e-4)
    assert np.abs(steered.token_logprobs - plain.token_logprobs).max() > 1e-3
    assert steered.distributions is not None and plain.distributions is not None
    kl = steered.distributions.kl_from(plain.distributions)
    assert kl.shape == (len(continuation),) and (kl > 0).all()


def test_hf_batched_scores_equal_one_by_one(pico_llama: Path) -> None:
    backend = HfBackend.load(str(pico_llama), device="cpu", dtype="float32")
    prompts = [
        backend.prompt_ids(t) for t in ("A short one.", "A much longer prompt than that one.")
    ]
    continuation = backend.continuation_ids(" Yes, indeed.")
    with backend.session(Steering("none")) as session:
        batched = session.score([(p, continuation) for p in prompts])
        single = [session.score([(p, continuation)])[0] for p in prompts]
        texts = session.generate(prompts, max_tokens=5)
        alone = [session.generate([p], max_tokens=5)[0] for p in prompts]
    for got, want in zip(batched, single, strict=True):
        np.testing.assert_allclose(got.token_logprobs, want.token_logprobs, atol=1e-4)
    assert texts == alone


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_eval_writes_the_report_and_stores_safe_scales(pico_pack: Path) -> None:
    result = run("eval", str(pico_pack), "--backend", "hf", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((pico_pack / "eval.json").read_text())
    assert report["backend"] == "hf" and sorted(report["axes"]) == ["language", "optimism"]
    manifest = json.loads((pico_pack / "pack.json").read_text())
    for name, axis in report["axes"].items():
        assert axis["scales"] == [-1.0, 0.0, 1.0]
        assert axis["damage"]["scales"] == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
        assert axis["damage"]["kl"][3] == axis["kl"][1]  # the same debias-only run
        assert len(axis["kl"]) == 3 and axis["kl"][1] >= 0
        # the KL grows away from the debias-only point on both sides
        assert axis["kl"][0] > axis["kl"][1] and axis["kl"][2] > axis["kl"][1]
        slope = axis["propensity"]["slope"]
        assert slope["low"] <= slope["slope"] <= slope["high"]
        negated = axis["controls"]["negated"]["slope"]["slope"]
        assert negated == pytest.approx(-slope["slope"], abs=1e-3 + 0.05 * abs(slope["slope"]))
        assert axis["controls"]["random"]["scales"] == [-1.0, 0.0, 1.0]
        assert len(axis["controls"]["random"]["kl"]) == 3
        safe = {role: axis["safe_scale"][role]["scale"] for role in ("negative", "positive")}
        if min(safe.values()) > 0:
            assert manifest["axes"][name]["safe_scale"] == safe
            positive = read_control_vector(pico_pack / manifest["axes"][name]["files"]["positive"])
            assert positive.metadata["cvgen.safe_scale.positive"] == pytest.approx(safe["positive"])
        assert (pico_pack / f"eval-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["evaluation"]["file"] == "eval.json"
    markdown = (pico_pack / "eval.md").read_text()
    assert "| axis (− / +) | propensity slope" in markdown and "## optimism" in markdown
    assert "safe scale" in result.output
    page = (pico_pack / "index.html").read_text()
    if "safe_scale" in manifest["axes"]["language"]:
        assert '"safe_scale"' in page


def test_cli_eval_refuses_an_unknown_axis_without_writing(pico_pack: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in pico_pack.iterdir())
    result = CliRunner().invoke(main, ["eval", str(pico_pack), "--axis", "nope", "--backend", "hf"])
    assert result.exit_code == 1
    assert (
        f"--axis: 'nope' is not in pack {pico_pack} (it has: language, optimism)" in result.output
    )
    assert sorted(p.name for p in pico_pack.iterdir()) == before


def test_cli_eval_refuses_bad_scales(pico_pack: Path) -> None:
    result = CliRunner().invoke(
        main, ["eval", str(pico_pack), "--scales", "0,1", "--backend", "hf"]
    )
    assert result.exit_code == 1
    assert "--scales: [0.0, 1.0] must hold 0 and at least one scale of each sign" in result.output


def test_generate_with_eval_writes_the_report(pico_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    result = run(
        "generate",
        "--model",
        str(pico_llama),
        "--axis",
        "language",
        "--samples",
        "8",
        "--tau",
        "0",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "store"),
        "--eval",
        "--eval-backend",
        "hf",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert list(report["axes"]) == ["language"] and report["backend"] == "hf"
    assert report["settings"]["scales"] == [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    assert "eval:" in result.output or (out / "eval.md").is_file()


def test_cli_eval_uses_a_probes_file_of_your_own(pico_pack: Path, tmp_path: Path) -> None:
    probes = tmp_path / "mine.json"
    pairs = [["It was plain.", "It was resplendent."], ["He ran.", "He fled, gossamer-light."]]
    probes.write_text(
        json.dumps({"axis": "language", "classes": ["simple", "ornate"], "pairs": pairs})
    )
    at = FAST.index("--probe-pairs")
    options = FAST[:at] + FAST[at + 2 :]
    result = run(
        "eval",
        str(pico_pack),
        "--backend",
        "hf",
        "--axis",
        "language",
        "--probes",
        f"language={probes}",
        "--probe-pairs",
        "0",
        "--no-store",
        *options,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((pico_pack / "eval.json").read_text())
    assert report["axes"]["language"]["propensity"]["probe_pairs"] == 2


def test_cli_eval_refuses_probes_with_other_classes(pico_pack: Path, tmp_path: Path) -> None:
    probes = tmp_path / "wrong.json"
    probes.write_text(
        json.dumps({"axis": "language", "classes": ["plain", "fancy"], "pairs": [["a b", "c d"]]})
    )
    result = CliRunner().invoke(
        main, ["eval", str(pico_pack), "--backend", "hf", "--probes", f"language={probes}"]
    )
    assert result.exit_code == 1
    assert (
        f"{probes}: field 'classes' is ['plain', 'fancy'], but axis 'language' of the pack has "
        "classes ['simple', 'ornate']" in result.output
    )
