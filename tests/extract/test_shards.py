"""Sharded runs: `cvgen collect --shard i/N` on separate invocations, then `cvgen solve`, give the
same vectors as `cvgen generate`; bad shard sets are refused in one line; torchrun and SLURM
environments pick the shard; device maps and bitsandbytes options."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from cvgen.cli import main
from cvgen.extract.model import ModelError, bitsandbytes_config, gpu_share
from cvgen.extract.shards import (
    SHARDS_FOLDER,
    ShardError,
    ShardSpec,
    format_rows,
    local_process,
    resolve_shard,
    slurm_array_shard,
)
from cvgen.extract.store import content_key
from cvgen.vectors.gguf_io import read_control_vector

SAMPLES = 16  # 3 shards of 5, 5 and 6 samples: an uneven split


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def options(model: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(model),
        "--axis",
        "language",
        "--axis",
        "optimism",
        "--samples",
        str(SAMPLES),
        "--seed",
        "3",
        "--tau",
        "0",
        "--quiet",
        *extra,
    ]


def collect(model: Path, store: Path, shard: str, *extra: str) -> Result:
    result = run("collect", *options(model, *extra), "--shard", shard, "--store", str(store))
    assert result.exit_code == 0, result.output
    return result


def solve(model: Path, store: Path, out: Path, *extra: str) -> Result:
    return run("solve", *options(model, *extra), "--store", str(store), "--out", str(out))


def gguf_bytes(pack: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(pack.glob("*.gguf"))}


def one_error_line(result: Result) -> str:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def sharded_store(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards 0/3, 1/3 and 2/3 of the run, with batches of one prompt, each collected by its
    own `cvgen collect`; shard 2/3 in a separate process that finds it in RANK/WORLD_SIZE."""
    store = tmp_path_factory.mktemp("sharded") / "store"
    for shard in ("0/3", "1/3"):
        collect(pico_llama, store, shard, "--batch-tokens", "1")
    environment = {**os.environ, "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}
    environment["CVGEN_CACHE"] = str(store.parent / "unused-cache")
    environment["HF_HUB_OFFLINE"] = "1"
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "cvgen.cli",
            "collect",
            *options(pico_llama, "--batch-tokens", "1"),
        ]
        + ["--store", str(store)],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("shard 2/3: samples 10..15 of 16, 30 prompts run")
    return store


@pytest.fixture(scope="module")
def generated(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unsharded pack of the same run, also with batches of one prompt."""
    out = tmp_path_factory.mktemp("generated") / "pack"
    result = run(
        "generate",
        *options(pico_llama, "--batch-tokens", "1"),
        "--out",
        str(out),
        "--cache-dir",
        str(out.parent / "store"),
    )
    assert result.exit_code == 0, result.output
    return out


def copy_store(store: Path, tmp_path: Path) -> Path:
    """The store copied elsewhere, as rsync would copy it to another machine."""
    return Path(shutil.copytree(store, tmp_path / "copied-store"))


def description_of(store: Path, spec: str) -> Path:
    for path in (store / SHARDS_FOLDER).glob("*.json"):
        if json.loads(path.read_text())["shard"] == spec:
            return path
    raise AssertionError(f"no description of shard {spec}")


def test_sharded_collect_and_solve_give_byte_identical_files_to_generate(
    pico_llama: Path, sharded_store: Path, generated: Path, tmp_path: Path
) -> None:
    store = copy_store(sharded_store, tmp_path)  # also proves a copied store still works
    out = tmp_path / "pack"
    # solve loads no weights, so a --device this machine may lack is no obstacle
    result = solve(pico_llama, store, out, "--device", "cuda:7")
    assert result.exit_code == 0, result.output
    assert "from shards 0/3, 1/3, 2/3" in result.output
    sharded, whole = gguf_bytes(out), gguf_bytes(generated)
    assert len(whole) == 6 and sharded.keys() == whole.keys()
    for name in whole:
        assert sharded[name] == whole[name], name  # byte for byte
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["shards"] == ["0/3", "1/3", "2/3"]
    assert (out / "samples.jsonl").read_text() == (generated / "samples.jsonl").read_text()
    described = json.loads(description_of(store, "1/3").read_text())
    assert described["samples"] == [5, 6, 7, 8, 9]
    assert described["plan"]["samples"] == SAMPLES
    assert set(described["arrays"]) == {
        "baseline",
        "language/negative",
        "language/positive",
        "optimism/negative",
        "optimism/positive",
    }


def test_shards_of_different_splits_and_default_batches_agree_to_float_tolerance(
    pico_llama: Path, generated: Path, tmp_path: Path
) -> None:
    """Shards 0/2, 2/4 and 3/4 cover the samples once; with the default length-bucketed
    batches the batch shapes differ from generate's, so the states agree to float rounding."""
    store = tmp_path / "store"
    for shard in ("0/2", "2/4", "3/4"):
        collect(pico_llama, store, shard)
    out = tmp_path / "pack"
    result = solve(pico_llama, store, out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "pack.json").read_text())["shards"] == ["0/2", "2/4", "3/4"]
    for path in sorted(generated.glob("*.gguf")):
        expected = read_control_vector(path).directions
        got = read_control_vector(out / path.name).directions
        assert got.keys() == expected.keys()
        for block in expected:
            # float32 rounding of other batch shapes, through the solver: a few 1e-6 on
            # components of vectors of norm ~0.2 (a component near 0 has no relative scale)
            np.testing.assert_allclose(got[block], expected[block], rtol=1e-4, atol=1e-5)


def test_a_missing_shard_is_named_and_nothing_is_written(
    pico_llama: Path, sharded_store: Path, tmp_path: Path
) -> None:
    store = copy_store(sharded_store, tmp_path)
    description_of(store, "1/3").unlink()
    out = tmp_path / "pack"
    line = one_error_line(solve(pico_llama, store, out))
    assert line == (
        f"Error: {store}: shard 1/3 missing (samples 5..9); run cvgen collect --shard 1/3 "
        "with the same options"
    )
    assert not out.exists()


def test_an_unfinished_shard_is_refused(
    pico_llama: Path, sharded_store: Path, tmp_path: Path
) -> None:
    store = copy_store(sharded_store, tmp_path)
    keys = json.loads(description_of(store, "2/3").read_text())["arrays"]
    done = store / f"{keys['optimism/positive']}.done"
    done.write_bytes(b"\x01\x00" + done.read_bytes()[2:])  # one row never written
    line = one_error_line(solve(pico_llama, store, tmp_path / "pack"))
    assert line == (
        f"Error: {store}: shard 2/3 is incomplete (1 of 30 prompts pending); rerun cvgen "
        "collect --shard 2/3 with the same options"
    )


def test_a_store_copied_without_its_state_files_is_refused(
    pico_llama: Path, sharded_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "only-descriptions"
    shutil.copytree(sharded_store / SHARDS_FOLDER, store / SHARDS_FOLDER)
    line = one_error_line(solve(pico_llama, store, tmp_path / "pack"))
    assert "state file" in line and "is missing; copy the whole store folder" in line


def test_overlapping_shards_are_refused(
    pico_llama: Path, sharded_store: Path, tmp_path: Path
) -> None:
    store = copy_store(sharded_store, tmp_path)
    collect(pico_llama, store, "1/2")  # samples 8..15: overlaps 1/3 (5..9) and 2/3 (10..15)
    line = one_error_line(solve(pico_llama, store, tmp_path / "pack"))
    assert " are in both shard " in line and "shard 1/2" in line
    assert "keep one split" in line


def test_a_shard_of_another_model_is_named(
    pico_llama: Path, pico_qwen2: Path, sharded_store: Path, tmp_path: Path
) -> None:
    store = copy_store(sharded_store, tmp_path)
    description_of(store, "1/3").unlink()
    collect(pico_qwen2, store, "1/3")
    line = one_error_line(solve(pico_llama, store, tmp_path / "pack"))
    assert line.startswith(f"Error: {store}: shard 1/3 was collected with a different model (")
    assert f"{pico_qwen2.name} folder:" in line and line.endswith(
        "; recollect it with these settings"
    )


def test_a_shard_of_other_settings_is_named_with_the_setting(
    pico_llama: Path, sharded_store: Path, tmp_path: Path
) -> None:
    store = copy_store(sharded_store, tmp_path)
    description_of(store, "0/3").unlink()
    collect(pico_llama, store, "0/3", "--seed", "4")  # the later --seed wins
    line = one_error_line(solve(pico_llama, store, tmp_path / "pack"))
    assert line == (
        f"Error: {store}: shard 0/3 was collected for different prompt texts (seed 4, not 3); "
        "recollect it with these settings"
    )


def test_an_explicit_dtype_must_match_the_shards(
    pico_llama: Path, sharded_store: Path, tmp_path: Path
) -> None:
    line = one_error_line(
        solve(pico_llama, sharded_store, tmp_path / "pack", "--dtype", "bfloat16")
    )
    assert line.startswith(f"Error: {sharded_store}: no shard of this run; shard ")
    assert line.endswith("was collected in float32, not bfloat16 (pass --dtype float32)")


def test_solving_an_empty_store_says_to_collect_first(pico_llama: Path, tmp_path: Path) -> None:
    line = one_error_line(solve(pico_llama, tmp_path / "empty", tmp_path / "pack"))
    assert line == (
        f"Error: {tmp_path / 'empty'}: no shard of this run (run cvgen collect --store "
        f"{tmp_path / 'empty'} with the same options first)"
    )


def test_a_shard_beyond_the_samples_is_empty_but_counted(pico_llama: Path, tmp_path: Path) -> None:
    """With more shards than samples (more ranks than needed), the extra shards hold no sample;
    they still describe themselves, and load no model."""
    result = collect(pico_llama, tmp_path / "store", "0/20")
    assert result.output.startswith("shard 0/20: samples none of 16, 0 prompts run")
    described = json.loads(description_of(tmp_path / "store", "0/20").read_text())
    assert described["samples"] == [] and described["arrays"] == {}
    line = one_error_line(solve(pico_llama, tmp_path / "store", tmp_path / "pack"))
    assert "shards 1/20, 2/20, 3/20, 4/20, 5/20, 6/20, 7/20, 8/20 and 11 more missing" in line
    assert "(samples 0..15)" in line


@pytest.mark.parametrize("n", [0, 1, 5, 16, 17])
@pytest.mark.parametrize("count", [1, 2, 3, 7, 20])
def test_the_shards_of_a_split_cover_every_sample_once(n: int, count: int) -> None:
    rows = [list(ShardSpec(index, count).rows(n)) for index in range(count)]
    assert sorted(row for part in rows for row in part) == list(range(n))
    sizes = [len(part) for part in rows]
    assert max(sizes) - min(sizes) <= 1
    assert all(part == list(range(part[0], part[-1] + 1)) for part in rows if part)


def test_shard_spec_parsing() -> None:
    assert ShardSpec.parse("2/4") == ShardSpec(2, 4) and str(ShardSpec(2, 4)) == "2/4"
    assert list(ShardSpec(1, 3).rows(16)) == [5, 6, 7, 8, 9]
    with pytest.raises(ShardError, match=r"--shard: '4/4' needs 0 <= i < N"):
        ShardSpec.parse("4/4")
    with pytest.raises(ShardError, match=r"--shard: 'two/4' is not i/N"):
        ShardSpec.parse("two/4")
    assert format_rows([0, 1, 2, 5, 7, 8]) == "0..2, 5, 7..8" and format_rows([]) == "none"


def test_torchrun_environment_picks_the_shard_and_the_local_process() -> None:
    torchrun = {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}
    assert resolve_shard(None, torchrun) == ShardSpec(5, 16)
    assert resolve_shard("auto", torchrun) == ShardSpec(5, 16)
    assert resolve_shard("0/2", torchrun) == ShardSpec(0, 2)  # an explicit --shard wins
    assert resolve_shard(None, {}) == ShardSpec(0, 1)
    assert local_process(torchrun) == (1, 8) and local_process({}) is None
    with pytest.raises(ShardError, match=r"RANK=16 is not in 0..WORLD_SIZE-1 \(WORLD_SIZE=16\)"):
        resolve_shard(None, {**torchrun, "RANK": "16"})
    with pytest.raises(ShardError, match="WORLD_SIZE='x' is not a whole number"):
        resolve_shard(None, {**torchrun, "WORLD_SIZE": "x"})


def test_slurm_array_environment_picks_the_shard() -> None:
    def task(task_id: int, count: int, first: int, step: int = 1) -> dict[str, str]:
        return {
            "SLURM_ARRAY_TASK_ID": str(task_id),
            "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_ARRAY_TASK_MIN": str(first),
            "SLURM_ARRAY_TASK_STEP": str(step),
        }

    assert resolve_shard("auto", task(0, 8, 0)) == ShardSpec(0, 8)  # --array=0-7
    assert resolve_shard("auto", task(8, 8, 1)) == ShardSpec(7, 8)  # --array=1-8
    assert resolve_shard("auto", task(6, 8, 0, 2)) == ShardSpec(3, 8)  # --array=0-14:2
    # a SLURM array alone does not shard a run without --shard auto
    assert resolve_shard(None, task(3, 8, 0)) == ShardSpec(0, 1)
    with pytest.raises(ShardError, match="not on an evenly spaced array; pass --shard i/N"):
        slurm_array_shard(task(5, 8, 0, 2))
    with pytest.raises(ShardError, match="--shard auto: neither RANK/WORLD_SIZE"):
        resolve_shard("auto", {})


def test_a_torchrun_process_gets_its_share_of_the_node_gpus() -> None:
    assert gpu_share(0, 4, 8) == [0, 1] and gpu_share(3, 4, 8) == [6, 7]
    assert gpu_share(0, 1, 8) == list(range(8))
    with pytest.raises(ModelError, match="8 processes on this node but only 4 GPUs"):
        gpu_share(0, 8, 4)


def test_quantisation_and_shard_enter_the_store_key_only_when_set() -> None:
    import hashlib

    plain = content_key(model_identity="m", dtype="float32", blocks=[0, 1], texts=["a", "b"])
    from cvgen.extract.store import STORE_FORMAT, texts_digest

    before = {
        "format": STORE_FORMAT,
        "model": "m",
        "dtype": "float32",
        "blocks": [0, 1],
        "texts": texts_digest(["a", "b"]),
        "n": 2,
    }
    # unsharded, unquantised runs keep the keys of stores written before shards existed
    assert plain == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    keys = {
        plain,
        content_key(
            model_identity="m",
            dtype="float32",
            blocks=[0, 1],
            texts=["a", "b"],
            quantization="4bit",
        ),
        content_key(
            model_identity="m",
            dtype="float32",
            blocks=[0, 1],
            texts=["a", "b"],
            quantization="8bit",
        ),
        content_key(
            model_identity="m", dtype="float32", blocks=[0, 1], texts=["a", "b"], shard="1/3"
        ),
    }
    assert len(keys) == 4


def test_load_in_without_bitsandbytes_is_one_line(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails, as when not installed
    with pytest.raises(ModelError, match="--load-in 4bit: needs bitsandbytes"):
        bitsandbytes_config("4bit", torch.float32)
    out = tmp_path / "pack"
    result = run("generate", *options(pico_llama, "--load-in", "8bit"), "--out", str(out))
    line = one_error_line(result)
    assert line.startswith("Error: --load-in 8bit: needs bitsandbytes, which cannot be imported")
    assert line.endswith("install it with: pip install bitsandbytes")
    assert not out.exists()


def test_device_map_auto_on_cpu_gives_the_same_vectors(
    pico_llama: Path, generated: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pack"
    result = run(
        "generate",
        *options(pico_llama, "--batch-tokens", "1", "--device-map", "auto", "--device", "cpu"),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "store"),
    )
    assert result.exit_code == 0, result.output
    assert "prompts run: 80" in result.output  # collected again, not reused
    manifest = json.loads((out / "pack.json").read_text())
    assert manifest["settings"]["device_map"] == "auto"
    assert manifest["settings"]["load_in"] == "none"
    assert gguf_bytes(out) == gguf_bytes(generated)


class _CapturingLoader:
    """Stands in for AutoModelForCausalLM: records the from_pretrained keyword arguments."""

    calls: list[dict[str, Any]] = []

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs: Any) -> torch.nn.Module:
        cls.calls.append(kwargs)
        return torch.nn.Linear(2, 2)


def test_loader_arguments_for_device_maps_and_bitsandbytes(
    pico_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import transformers

    from cvgen.extract.model import gpus_for_process, load_causal_lm, resolve_model_source

    monkeypatch.setattr(transformers, "AutoModelForCausalLM", _CapturingLoader)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda gpu: (1000 * (gpu + 1), 10**6))
    source = resolve_model_source(str(pico_llama))
    _CapturingLoader.calls = []

    def load(**options: Any) -> dict[str, Any]:
        load_causal_lm(
            source,
            dtype=torch.bfloat16,
            device=torch.device("cpu"),
            trust_remote_code=False,
            **options,
        )
        return _CapturingLoader.calls[-1]

    # torchrun process 1 of 4 on an 8-GPU node: GPUs 2 and 3, 90% of their free memory
    assert gpus_for_process((1, 4)) == [2, 3] and gpus_for_process(None) is None
    shared = load(device_map="auto", gpus=gpus_for_process((1, 4)))
    assert shared["device_map"] == "auto" and shared["max_memory"] == {2: 2700, 3: 3600}
    assert "max_memory" not in load(device_map="auto")  # one process: every GPU, then CPU
    quantised = load(load_in="4bit")
    config = quantised["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantised["device_map"] == {"": "cpu"}  # placed at load time, never moved with .to
    assert load(load_in="8bit")["quantization_config"].load_in_8bit
    plain = load()
    assert "device_map" not in plain and "quantization_config" not in plain
    assert plain["dtype"] == torch.bfloat16


def test_torchrun_processes_take_one_gpu_each(monkeypatch: pytest.MonkeyPatch) -> None:
    from cvgen.extract.model import device_for_local_rank

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert device_for_local_rank(torch.device("cuda"), 3) == torch.device("cuda", 3)
    assert device_for_local_rank(torch.device("cuda"), 11) == torch.device("cuda", 3)
    assert device_for_local_rank(torch.device("cuda", 5), 3) == torch.device("cuda", 5)
    assert device_for_local_rank(torch.device("cpu"), 3) == torch.device("cpu")
    assert device_for_local_rank(torch.device("cuda"), None) == torch.device("cuda")


def test_an_unsharded_collect_and_generate_share_their_states(
    pico_llama: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    result = run("collect", *options(pico_llama), "--store", str(store))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("shard 0/1: samples 0..15 of 16, 80 prompts run")
    again = run(
        "generate", *options(pico_llama), "--out", str(tmp_path / "a"), "--cache-dir", str(store)
    )
    assert again.exit_code == 0, again.output
    assert "prompts run: 0; all 80 reused from the store" in again.output
    solved = solve(pico_llama, store, tmp_path / "b")
    assert solved.exit_code == 0, solved.output
    assert gguf_bytes(tmp_path / "a") == gguf_bytes(tmp_path / "b")


def test_shards_reuse_the_rows_of_a_generate_in_the_same_store(
    pico_llama: Path, tmp_path: Path
) -> None:
    """Shard arrays have their own keys, but their rows are found by text in the arrays that
    `cvgen generate` wrote, so no prompt is run again and solve gives generate's exact files."""
    store = tmp_path / "store"
    generated = run(
        "generate", *options(pico_llama), "--out", str(tmp_path / "a"), "--cache-dir", str(store)
    )
    assert generated.exit_code == 0, generated.output
    for shard, rows in (("0/2", "0..7"), ("1/2", "8..15")):
        result = collect(pico_llama, store, shard)
        assert result.output.startswith(
            f"shard {shard}: samples {rows} of 16, 0 prompts run, 40 reused from the store"
        ), result.output
    solved = solve(pico_llama, store, tmp_path / "b")
    assert solved.exit_code == 0, solved.output
    assert json.loads((tmp_path / "b" / "pack.json").read_text())["shards"] == ["0/2", "1/2"]
    assert gguf_bytes(tmp_path / "b") == gguf_bytes(tmp_path / "a")
