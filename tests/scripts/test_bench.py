"""A small smoke run of scripts/bench.py on the pico model, and its FLOP count and solver oracle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import SCRIPTS, load_script

from cvgen.extract.prefix_cache import MIN_SHARED_PREFIX, shared_prefix_length


def _bench() -> ModuleType:
    return load_script("bench")


@pytest.fixture(scope="module")
def smoke(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "bench.py"),
            "--smoke",
            "--model",
            str(pico_llama),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_smoke_collection_reuses_the_whole_shared_prefix_and_reads_the_reference_states(
    smoke: tuple[dict, str], pico_llama: Path
) -> None:
    """The figures are checked against what the test computes itself from the same prompts:
    the collector must reuse exactly the prefix that all prompts share (0 when the installed
    transformers stops handing the cache on, as 5.24 did), compute only the suffixes, and
    read the same states as the reference route."""
    results, printed = smoke
    collection = results["collection"]
    work = _bench().build_workload(str(pico_llama), samples=3, axis="language")
    lengths = [len(ids) for ids in work.token_ids]
    shared = shared_prefix_length(work.token_ids)
    assert shared >= MIN_SHARED_PREFIX  # enough to be worth a cache
    assert collection["prompts"] == len(lengths) == 3 * 3
    assert collection["prompt_tokens"] == sum(lengths)
    assert collection["shared_prefix_tokens"] == shared
    computed = collection["computed_tokens"]
    assert computed["reference"] == sum(lengths)
    # the prefix runs once, then each prompt's own tokens (padded): never fewer than the real
    # tokens once, and fewer than whole prompts
    assert sum(lengths) - (len(lengths) - 1) * shared <= computed["cvgen"] < computed["bare"]
    # the reference route and cvgen's collector read the same states from the same prompts
    for difference in collection["max_relative_state_difference"].values():
        assert difference < 1e-4
    assert "Collection" in printed and f"shared prefix {shared} tokens" in printed


def test_smoke_memory_pack_and_solver_sections(smoke: tuple[dict, str], pico_llama: Path) -> None:
    results, printed = smoke
    small, large = results["memory"]["runs"]
    assert (small["samples"], large["samples"]) == (2, 16)
    assert (small["prompts"], large["prompts"]) == (6, 48)
    # the store holds exactly (stored blocks, prompts, width) float32 per array, plus headers
    work = _bench().build_workload(str(pico_llama), samples=2, axis="language")
    row_bytes = len(work.stored_blocks) * work.width * 4
    for run in (small, large):
        stored = run["store_mib"] * 2**20
        assert run["prompts"] * row_bytes <= stored <= run["prompts"] * row_bytes + 3 * 4096
    pack = results["pack"]
    assert pack["axes"] == 8 and len(pack["reference_run_seconds"]) == 8
    assert [row["d"] for row in results["solver"]] == [48, 96]
    for row in results["solver"]:
        assert row["abs_cos"] > 0.9999  # the approximation and the exact method agree
        assert row["abs_cos_planted"] > 0.9  # and both find the planted axis
    assert "Solver: cross-covariance" in printed and "Pack: 8 axes" in printed


def test_forward_flops_counts_weights_and_attention() -> None:
    bench = _bench()
    # one span of 3 tokens: 2 * params * 3, plus keys attended 1 + 2 + 3 = 6 per block
    assert bench.forward_flops(100, 8, 2, [(0, 3)]) == 2 * 100 * 3 + 4 * 8 * 2 * 6
    # tokens 2..3 of a prompt whose first two come from a cache attend to 3 and 4 keys
    assert bench.forward_flops(100, 8, 1, [(2, 4)]) == 2 * 100 * 2 + 4 * 8 * 1 * 7
    assert bench.padded_tokens([5, 4, 1], [[0, 1], [2]]) == 2 * 5 + 1


def test_exact_route_finds_the_planted_axis() -> None:
    bench = _bench()
    a, b, axis = bench.planted_data(40, 32, seed=1)
    found = bench.eigh_cross_covariance(a, b, bench.SolverOptions(eigen_candidates=4))
    assert found is not None
    assert abs(float(found.direction @ axis)) > 0.95
    assert found.mean_positive > found.mean_negative
