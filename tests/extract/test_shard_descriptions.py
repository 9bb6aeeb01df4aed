"""Sharded runs: `cvgen collect --shard i/N` on separate invocations, then `cvgen solve`, give the
same vectors as `cvgen generate`; shard sets that cannot be merged are refused in one line,
naming the shard; shard arrays reuse the rows of a generate. Also the device-map and
bitsandbytes options of the same runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from cvgen.cli import main
from cvgen.extract.loading import bitsandbytes_config
from cvgen.extract.model_source import ModelError
from cvgen.extract.shard_descriptions import SHARDS_FOLDER
from cvgen.vectors.control_vector import ControlVector

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
        expected = ControlVector.from_gguf(path).directions
        got = ControlVector.from_gguf(out / path.name).directions
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
