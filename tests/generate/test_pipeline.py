"""generate_pack end to end on pico models: files, index convention, reuse, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PICO_LAYERS

from cvgen.extract.chat import PromptError
from cvgen.extract.forward import forward_last_token_states
from cvgen.extract.store import StateArray
from cvgen.generate.pipeline import generate_pack
from cvgen.generate.settings import GenerateSettings, LayerSkip
from cvgen.generate.sharded import collected_states
from cvgen.pack.errors import PackError
from cvgen.solve.direction import SolverOptions
from cvgen.solve.methods import solve_cross_covariance
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.llamacpp_rules import llamacpp_problems


def _settings(model: Path, **overrides: object) -> GenerateSettings:
    values: dict[str, object] = dict(
        model=str(model), axes=("language", "optimism"), samples=16, seed=3, tau=0.0
    )
    values.update(overrides)
    return GenerateSettings(**values)  # type: ignore[arg-type]


def _vectors(pack: Path) -> dict[str, dict[int, np.ndarray]]:
    return {p.name: ControlVector.from_gguf(p).directions for p in sorted(pack.glob("*.gguf"))}


def test_pack_has_three_valid_files_per_axis_and_records_samples(
    pico_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pack"
    result = generate_pack(_settings(pico_llama), out, show_progress=False)
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest == result.manifest.to_json()
    assert sorted(p.name for p in out.glob("*.gguf")) == sorted(
        f"{pico_llama.name}-{axis}__{role}.gguf"
        for axis, roles in {
            "language": ("debias", "simple", "ornate"),
            "optimism": ("debias", "optimism", "nihilism"),
        }.items()
        for role in roles
    )
    for path in out.glob("*.gguf"):
        assert llamacpp_problems(path, n_embd=32, n_layer=PICO_LAYERS) == []
        assert ":" not in path.name
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and set(samples[0]["pairs"]) == {"language", "optimism"}
    assert manifest["layers"] == list(
        range(1, PICO_LAYERS - 1)
    )  # block 0 and the last block skipped
    assert result.collected_prompts == 16 * 5  # baseline once, shared by both axes
    readme = (out / "README.md").read_text()
    assert "language" in readme and "__debias.gguf" in readme


def test_pole_files_are_opposite_and_debias_plus_pole_is_the_class_mean(
    pico_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pack"
    generate_pack(_settings(pico_llama, axes=("language",)), out, show_progress=False)
    files = _vectors(out)
    debias = files[f"{pico_llama.name}-language__debias.gguf"]
    negative = files[f"{pico_llama.name}-language__simple.gguf"]
    positive = files[f"{pico_llama.name}-language__ornate.gguf"]
    assert set(debias) == set(negative) == set(positive) and debias
    for block in debias:
        np.testing.assert_allclose(negative[block], -positive[block], atol=1e-7)


def _measured_shift(model_dir: Path, samples: list[dict], axis: dict, block: int) -> np.ndarray:
    """Mean over samples of x_k(positive) - x_k(baseline), measured independently of cvgen's
    collector with transformers' own hidden_states (valid below the last block)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = axis["data"]

    def delta(text: str) -> np.ndarray:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
        return (states[block + 1][0, -1] - states[block][0, -1]).numpy()

    shifts = []
    for sample in samples:
        positive = pairs[sample["pairs"]["language"]][1]
        shifts.append(
            delta(f"{sample['stem']} {positive}. {sample['prompt']}")
            - delta(f"{sample['stem']}. {sample['prompt']}")
        )
    return np.mean(shifts, axis=0)


def test_direction_k_is_the_shift_measured_at_block_k(pico_llama: Path, tmp_path: Path) -> None:
    from cvgen.data.shipped import data_root

    out = tmp_path / "pack"
    generate_pack(_settings(pico_llama, axes=("language",), samples=12), out, show_progress=False)
    files = _vectors(out)
    debias = files[f"{pico_llama.name}-language__debias.gguf"]
    positive = files[f"{pico_llama.name}-language__ornate.gguf"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    axis = json.loads((data_root() / "axes" / "language.json").read_text())
    measured = {k: _measured_shift(pico_llama, samples, axis, k) for k in range(1, PICO_LAYERS - 1)}
    checked = 0
    for block in sorted(debias):
        vector = debias[block] + positive[block]  # = m_B u: the positive class's mean shift along u
        unit = vector / np.linalg.norm(vector)
        # the measured mean shift at block k, projected on u, is exactly |vector|
        assert float(measured[block] @ unit) == pytest.approx(
            float(np.linalg.norm(vector)), rel=1e-3, abs=1e-5
        )
        for neighbour in (block - 1, block + 1):  # a one-block shift would not match
            if neighbour in measured:
                assert abs(
                    float(measured[neighbour] @ unit) - float(np.linalg.norm(vector))
                ) > 1e-2 * float(np.linalg.norm(vector))
        steered = _steered_shift(
            pico_llama, f"{samples[0]['stem']}. {samples[0]['prompt']}", block, vector
        )
        # adding direction.k at the output of model.layers[k] moves block k's output by it...
        np.testing.assert_allclose(steered[block], vector, atol=1e-5)
        # ...and nothing before block k
        assert all(np.allclose(steered[k], 0, atol=1e-6) for k in range(block))
        # so it reproduces, along u, the shift measured at block k
        assert float(steered[block] @ unit) == pytest.approx(
            float(measured[block] @ unit), rel=1e-3
        )
        checked += 1
    assert checked >= 2


def _steered_shift(model_dir: Path, text: str, block: int, vector: np.ndarray) -> np.ndarray:
    """Per block output, (steered - unsteered) at the last token, when a forward hook adds
    `vector` to the output of `model.model.layers[block]`: shape (n_layer, d)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def outputs() -> np.ndarray:
        # read by hooks registered after the steering hook, so they see its result
        # (transformers' own hidden_states are recorded before later hooks run)
        return forward_last_token_states(
            model,
            model.model.layers,
            list(range(PICO_LAYERS - 1)),
            ids.tolist(),
            pad_id=0,
            device=torch.device("cpu"),
        )[:, 0]

    plain = outputs()
    added = torch.from_numpy(vector)
    handle = model.model.layers[block].register_forward_hook(
        lambda module, args, output: (
            output + added if isinstance(output, torch.Tensor) else (output[0] + added, *output[1:])
        )
    )
    try:
        steered = outputs()
    finally:
        handle.remove()
    return steered - plain


def test_rerun_reuses_states_and_a_new_axis_reuses_the_baseline(
    pico_llama: Path, tmp_path: Path
) -> None:
    first = generate_pack(
        _settings(pico_llama, axes=("language",)), tmp_path / "a", show_progress=False
    )
    again = generate_pack(
        _settings(pico_llama, axes=("language",)), tmp_path / "b", show_progress=False
    )
    grown = generate_pack(
        _settings(pico_llama, axes=("language", "humility")), tmp_path / "c", show_progress=False
    )
    assert (first.collected_prompts, again.collected_prompts, grown.collected_prompts) == (
        48,
        0,
        32,
    )
    for name, vectors in _vectors(tmp_path / "a").items():
        for block, vector in vectors.items():
            np.testing.assert_array_equal(vector, _vectors(tmp_path / "b")[name][block])


def test_a_killed_collection_resumes_and_gives_identical_vectors(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(pico_llama, axes=("language",), samples=24, batch_tokens=200)
    reference = generate_pack(
        settings, tmp_path / "ref", store_root=tmp_path / "store-ref", show_progress=False
    )
    original = StateArray.write_rows
    written = {"batches": 0}

    def dying_write(self: StateArray, rows: list[int], states: np.ndarray) -> None:
        if written["batches"] == 3:
            raise KeyboardInterrupt("simulated kill")
        written["batches"] += 1
        original(self, rows, states)

    monkeypatch.setattr(StateArray, "write_rows", dying_write)
    with pytest.raises(KeyboardInterrupt):
        generate_pack(
            settings, tmp_path / "resumed", store_root=tmp_path / "store", show_progress=False
        )
    assert not (tmp_path / "resumed").exists()  # no partial pack
    monkeypatch.setattr(StateArray, "write_rows", original)
    resumed = generate_pack(
        settings, tmp_path / "resumed", store_root=tmp_path / "store", show_progress=False
    )
    assert 0 < resumed.collected_prompts < reference.collected_prompts
    assert resumed.reused_prompts == reference.collected_prompts - resumed.collected_prompts
    ref_vectors, new_vectors = _vectors(tmp_path / "ref"), _vectors(tmp_path / "resumed")
    assert ref_vectors.keys() == new_vectors.keys()
    for name in ref_vectors:
        assert ref_vectors[name].keys() == new_vectors[name].keys()
        for block in ref_vectors[name]:
            np.testing.assert_allclose(
                new_vectors[name][block], ref_vectors[name][block], atol=1e-6
            )


def test_second_family_and_methods(pico_qwen2: Path, tmp_path: Path) -> None:
    for method in ("cross-covariance", "mean-diff", "pca-diff"):
        result = generate_pack(
            _settings(pico_qwen2, axes=("empathy",), method=method),
            tmp_path / method,
            show_progress=False,
        )
        assert result.manifest.to_json()["settings"]["method"] == method
        vectors = _vectors(tmp_path / method)
        assert len(vectors) == 3 and all(v for v in vectors.values())
    names = {
        m: _vectors(tmp_path / m)[f"{pico_qwen2.name}-empathy__sociopathy.gguf"]
        for m in ("mean-diff", "pca-diff")
    }
    assert any(
        not np.allclose(names["mean-diff"][k], names["pca-diff"][k]) for k in names["mean-diff"]
    )


def test_system_turn_refused_by_a_template_without_one(pico_qwen2: Path, tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="rejects a system turn"):
        generate_pack(
            _settings(pico_qwen2, system_message=True), tmp_path / "p", show_progress=False
        )
    assert not (tmp_path / "p").exists()


def test_model_without_chat_template_uses_the_plain_fallback(
    pico_plain: Path, tmp_path: Path
) -> None:
    result = generate_pack(
        _settings(pico_plain, axes=("language",), samples=8), tmp_path / "p", show_progress=False
    )
    assert result.collected_prompts == 24


def test_skip_fractions_and_refusing_a_foreign_folder(pico_llama: Path, tmp_path: Path) -> None:
    settings = _settings(
        pico_llama,
        axes=("language",),
        skip_first=LayerSkip.parse("0.34", option="x"),
        skip_last=LayerSkip("0"),
    )
    result = generate_pack(settings, tmp_path / "p", show_progress=False)
    assert result.manifest.to_json()["layers"] == [
        2,
        3,
        4,
        5,
    ]  # round(0.34 * 6) = 2 skipped at the start
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PackError, match="exists and is not a cvgen pack"):
        generate_pack(_settings(pico_llama, axes=("language",)), foreign, show_progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_an_axis_with_no_passing_block_fails_and_writes_nothing(
    pico_llama: Path, tmp_path: Path
) -> None:
    from cvgen.generate.inputs import GenerateError

    with pytest.raises(GenerateError, match="axis 'language': no block passed"):
        generate_pack(
            _settings(pico_llama, axes=("language",), tau=1e9), tmp_path / "p", show_progress=False
        )
    assert not (tmp_path / "p").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".p")] == []


def test_example_command_falls_back_to_legacy_syntax_for_a_colon(
    pico_llama: Path, tmp_path: Path
) -> None:
    from cvgen.pack.readme import example_command

    result = generate_pack(
        _settings(pico_llama, axes=("language",)), tmp_path / "a:b", show_progress=False
    )
    command = example_command(result.manifest, tmp_path / "a:b")
    positive = result.manifest.to_json()["axes"]["language"]["files"]["positive"]
    assert command.endswith(f"--control-vector-scaled {tmp_path}/a:b/{positive} 0.5")
    assert example_command(result.manifest, tmp_path / "ab").endswith(
        f"{tmp_path}/ab/{positive}:0.5"
    )


KILLER = """
import os, signal, sys
from pathlib import Path
from cvgen.generate.pipeline import generate_pack
from cvgen.generate.sharded import collected_states
from cvgen.generate.settings import GenerateSettings
from cvgen.extract.store import StateArray

original = StateArray.write_rows
count = {"batches": 0}

def write_then_die(self, rows, states):
    original(self, rows, states)
    count["batches"] += 1
    if count["batches"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real kill

StateArray.write_rows = write_then_die
settings = GenerateSettings(model=sys.argv[1], axes=("language",), samples=24, seed=3, tau=0.0,
                            batch_tokens=200)
generate_pack(settings, Path(sys.argv[2]), store_root=Path(sys.argv[3]), show_progress=False)
"""


def test_a_sigkilled_run_resumes_from_its_last_batch(pico_llama: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    out, store = tmp_path / "pack", tmp_path / "store"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(pico_llama), str(out), str(store)],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    done = sum(path.read_bytes().count(1) for path in store.glob("*.done"))
    assert done > 0
    settings = _settings(pico_llama, axes=("language",), samples=24, batch_tokens=200)
    resumed = generate_pack(settings, out, store_root=store, show_progress=False)
    assert (resumed.reused_prompts, resumed.collected_prompts) == (done, 72 - done)
    fresh = generate_pack(
        settings, tmp_path / "fresh", store_root=tmp_path / "store2", show_progress=False
    )
    assert fresh.collected_prompts == 72
    for name, vectors in _vectors(tmp_path / "fresh").items():
        for block, vector in vectors.items():
            np.testing.assert_allclose(_vectors(out)[name][block], vector, atol=1e-6)


def test_manifest_carries_the_settings_and_their_digest(pico_llama: Path, tmp_path: Path) -> None:
    one = generate_pack(
        _settings(pico_llama, axes=("language",)), tmp_path / "a", show_progress=False
    )
    two = generate_pack(
        _settings(pico_llama, axes=("language",), seed=4), tmp_path / "b", show_progress=False
    )
    assert (
        one.manifest.to_json()["settings"]["seed"] == 3
        and two.manifest.to_json()["settings"]["seed"] == 4
    )
    assert one.manifest.to_json()["settings_digest"] != two.manifest.to_json()["settings_digest"]
    again = _settings(pico_llama, axes=("language",)).digest()
    assert one.manifest.to_json()["settings_digest"] == again


def test_growing_samples_runs_only_the_new_prompts(
    pico_llama: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    small = _settings(pico_llama, axes=("language",), samples=4)
    grown = _settings(pico_llama, axes=("language",), samples=8)
    generate_pack(small, tmp_path / "small", store_root=store, show_progress=False)
    before = {path.name: np.load(path) for path in store.glob("*.npy")}
    with caplog.at_level(logging.INFO, logger="cvgen"):
        result = generate_pack(grown, tmp_path / "grown", store_root=store, show_progress=False)
    assert (result.collected_prompts, result.reused_prompts) == (12, 12)  # 3 arrays x 4 rows
    assert "reused 12 stored prompts, running 12 new ones" in caplog.messages
    assert "copied the states of 12 prompts from stored rows of the same text" in caplog.messages
    small_arrays = {_array_name(store, name): states for name, states in before.items()}
    for path in store.glob("*.npy"):
        if path.name in before:
            continue
        name = _array_name(store, path.name)
        assert np.array_equal(np.load(path)[:, :4], small_arrays[name]), name  # bit-identical
    fresh = generate_pack(
        grown, tmp_path / "fresh", store_root=tmp_path / "fresh-store", show_progress=False
    )
    assert fresh.collected_prompts == 24
    grown_vectors, fresh_vectors = _vectors(tmp_path / "grown"), _vectors(tmp_path / "fresh")
    assert grown_vectors.keys() == fresh_vectors.keys()
    for file, vectors in fresh_vectors.items():
        assert vectors.keys() == grown_vectors[file].keys()
        for block, vector in vectors.items():
            np.testing.assert_allclose(grown_vectors[file][block], vector, atol=1e-5)


def _array_name(store: Path, data_file: str) -> str:
    """The array name ("baseline", "language/negative", ...) recorded beside a data file."""
    meta = json.loads((store / data_file).with_suffix(".json").read_text())
    return str(meta["array"])


@pytest.mark.parametrize("features", ["delta", "residual"])
def test_pack_vectors_are_solved_from_the_chosen_features(
    pico_llama: Path, tmp_path: Path, features: str
) -> None:
    settings = _settings(pico_llama, axes=("language",), features=features)
    store = tmp_path / "store"
    generate_pack(settings, tmp_path / "pack", store_root=store, show_progress=False)
    ornate = _vectors(tmp_path / "pack")[f"{pico_llama.name}-language__ornate.gguf"]
    states = collected_states(settings, store_root=store, show_progress=False)
    assert states.collected_prompts == 0  # the pack's own states, from the store
    names = ("language/negative", "language/positive", "baseline")
    for block in states.stored_blocks[1:]:
        h = {name: states.arrays[name].block(block).astype(np.float64) for name in names}
        if features == "delta":
            for name in names:
                h[name] = h[name] - states.arrays[name].block(block - 1)
        by_hand = solve_cross_covariance(
            h["language/negative"] - h["baseline"],
            h["language/positive"] - h["baseline"],
            SolverOptions(tau=0.0),
        )
        assert by_hand is not None
        scale = float(np.abs(by_hand.positive).max())
        np.testing.assert_allclose(ornate[block], by_hand.positive, atol=1e-3 * scale)


def test_method_auto_solves_each_axis_with_its_files_method(
    pico_llama: Path, tmp_path: Path
) -> None:
    """`person` names mean-diff in its file: under the default (auto) it is solved so, exactly
    as under an explicit --method mean-diff, while `language`, naming none, gets
    cross-covariance; a named method applies to every axis."""
    store = tmp_path / "store"
    packs = {}
    for method in ("auto", "mean-diff", "cross-covariance"):
        settings = _settings(pico_llama, axes=("language", "person"), method=method)
        packs[method] = generate_pack(
            settings, tmp_path / method, store_root=store, show_progress=False
        ).out
    manifest = json.loads((packs["auto"] / "pack.json").read_text())
    assert manifest["settings"]["method"] == "auto"
    assert manifest["axes"]["person"]["method"] == "mean-diff"
    assert manifest["axes"]["language"]["method"] == "cross-covariance"
    (person_file,) = packs["auto"].glob("*person__third_person.gguf")
    assert ControlVector.from_gguf(person_file).metadata["cvgen.method"] == "mean-diff"
    auto, mean, cross = (_vectors(packs[m]) for m in ("auto", "mean-diff", "cross-covariance"))
    for name, vectors in auto.items():
        same = mean[name] if "-person__" in name else cross[name]
        assert sorted(vectors) == sorted(same) and all(
            np.array_equal(vectors[k], same[k]) for k in vectors
        ), name
    # and the two methods do differ on person (else the check above could not fail)
    pole = next(name for name in auto if name.endswith("person__third_person.gguf"))
    assert sorted(mean[pole]) != sorted(cross[pole]) or any(
        not np.allclose(mean[pole][k], cross[pole][k]) for k in mean[pole]
    )
    explicit = json.loads((packs["cross-covariance"] / "pack.json").read_text())
    assert explicit["axes"]["person"]["method"] == "cross-covariance"
    readme = (packs["auto"] / "README.md").read_text()
    assert "with each axis's own method (`auto`): language `cross-covariance`, person " in readme
    assert "`mean-diff`, from 16 samples" in " ".join(readme.split())
    assert (
        "with the `cross-covariance` method from 16"
        in (packs["cross-covariance"] / "README.md").read_text()
    )


def test_the_readme_shows_cvgens_own_verdicts_for_a_model_it_measured(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where cvgen ships a measured table for a model file of this name, the pack README gives
    each axis's verdict there with its numbers, "not measurable on this model" included."""
    from cvgen.data import measured
    from cvgen.data.measured import AxisRow, MeasuredTable

    def row(axis: str, low: float, random: float, method: str) -> AxisRow:
        return AxisRow(
            axis, ("a", "b"), low + 0.003, low, low + 0.006, 0.0, random, -low, (0.01, 0.01),
            (4.0, 4.0), ("sweep", "sweep"), (0.05, 0.05), {}, method,
        )  # fmt: skip

    rows = [
        row("language", 0.19, -0.007, "cross-covariance"),
        row("person", 0.001, 0.003, "mean-diff"),
    ]
    table = MeasuredTable(pico_llama.name, "cmd", "2026-12-02", {}, rows)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "pico.json").write_text(json.dumps(table.to_dict()))
    monkeypatch.setattr(measured, "measured_root", lambda: tmp_path / "tables")
    settings = _settings(pico_llama, axes=("language", "person"), samples=12)
    out = generate_pack(settings, tmp_path / "pack", show_progress=False).out
    readme = (out / "README.md").read_text()
    assert (
        f"Measured by cvgen on a model file of this name ({pico_llama.name}, 2026-12-02)" in readme
    )
    assert (
        "| language | `cross-covariance` | +0.193 [+0.190, +0.196]; random -0.007; steers |"
        in readme
    )
    assert (
        "| person | `mean-diff` | +0.004 [+0.001, +0.007]; random +0.003; not measurable on this "
        "model |" in readme
    )
    other = MeasuredTable("another-model.gguf", "cmd", "2026-12-02", {}, rows)
    (tmp_path / "tables" / "pico.json").write_text(json.dumps(other.to_dict()))
    again = generate_pack(settings, tmp_path / "pack2", show_progress=False).out
    assert "Measured by cvgen on a model file" not in (again / "README.md").read_text()
