"""scripts/build_llama_cpp.sh's short cut: a cached shared build is reused only when every tool
asked for and both libraries the binding needs are there; anything missing means a build (here a
stubbed download that fails at once, so no compiler runs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_llama_cpp.sh"
TOOLS = ("llama-completion", "llama-server", "llama-cli", "llama-quantize")
BENCH_TOOLS = ("llama-cvector-generator", "llama-batched-bench")
LIBRARIES = ("libllama.so", "libggml-base.so")


def _fake_bin(cache: Path, names: tuple[str, ...]) -> Path:
    folder = cache / "llama.cpp" / "0c1e570-shared" / "bin"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


def _run(cache: Path, *arguments: str, amx: str = "native") -> subprocess.CompletedProcess[str]:
    # a python whose `pip download` fails: the script gets past its short cut only to stop there
    stub = cache / "no-python"
    stub.write_text("#!/bin/sh\nexit 3\n")
    stub.chmod(0o755)
    env = {
        **os.environ,
        "CVGEN_CACHE": str(cache),
        "PYTHON": str(stub),
        "CVGEN_LLAMA_BENCH_TOOLS": "0",
        # plain -march=native, so that the result does not depend on this machine's CPU
        "CVGEN_LLAMA_AMX": amx,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_a_complete_cached_build_is_reused(tmp_path: Path) -> None:
    folder = _fake_bin(tmp_path, TOOLS + LIBRARIES)
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder)


@pytest.mark.parametrize("missing", LIBRARIES)
def test_a_build_without_the_bindings_libraries_is_not_reused(tmp_path: Path, missing: str) -> None:
    _fake_bin(tmp_path, TOOLS + tuple(n for n in LIBRARIES if n != missing))
    done = _run(tmp_path)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "building llama.cpp 0c1e570 (CPU: native, shared libraries)" in done.stderr


def test_bench_asks_for_the_benchmarks_tools_too(tmp_path: Path) -> None:
    folder = _fake_bin(tmp_path, TOOLS + LIBRARIES)
    assert _run(tmp_path, "--bench").returncode != 0
    for name in BENCH_TOOLS:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    done = _run(tmp_path, "--bench")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder)


def test_the_old_static_build_is_left_alone(tmp_path: Path) -> None:
    static = tmp_path / "llama.cpp" / "0c1e570" / "bin"
    static.mkdir(parents=True)
    (static / "llama-server").write_text("old")
    _fake_bin(tmp_path, TOOLS + LIBRARIES)
    assert _run(tmp_path).returncode == 0
    assert (static / "llama-server").read_text() == "old"


def test_a_build_made_for_the_other_cpu_choice_is_rebuilt(tmp_path: Path) -> None:
    folder = _fake_bin(tmp_path, TOOLS + LIBRARIES)
    (folder.parent / "CPU").write_text("native-without-amx\n")
    done = _run(tmp_path)
    assert done.returncode != 0 and done.stdout == ""
    assert "building llama.cpp 0c1e570 (CPU: native, shared libraries)" in done.stderr
    (folder.parent / "CPU").write_text("native\n")
    assert _run(tmp_path).stdout.strip() == str(folder)


def test_an_unknown_amx_choice_is_refused_in_one_line(tmp_path: Path) -> None:
    _fake_bin(tmp_path, TOOLS + LIBRARIES)
    done = _run(tmp_path, amx="maybe")
    assert done.returncode == 2
    assert done.stderr.strip() == "build_llama_cpp: CVGEN_LLAMA_AMX=maybe (use off or native)"
