"""scripts/cvector_generator.py without llama.cpp: the prompt files, the command line, the
checks of the written file, the sign alignment, and a run of a fake binary."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvgen.llamacpp.binaries import LlamaCppError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from cvector_generator import (  # noqa: E402
    align_signs,
    block_norms,
    check_generator_vector,
    escape_prompt_line,
    generator_arguments,
    generator_prompt,
    run_generator,
    unescape_prompt_line,
    write_prompt_files,
)

from cvgen.vectors.control_vector import ControlVector

CHATML = "<|im_start|>system\nYou are a poet.<|im_end|>\n<|im_start|>user\nWrite.<|im_end|>\n"


@pytest.mark.parametrize(
    "text",
    [CHATML, "a\\nb (a backslash, then n)", "tab\there\r\nwindows", 'quote " and \\x41', "\\"],
)
def test_an_escaped_line_reads_back_as_the_text(text: str) -> None:
    line = escape_prompt_line(text)
    assert "\n" not in line and "\r" not in line
    assert unescape_prompt_line(line) == text


def test_unescape_follows_llama_cpps_string_process_escapes() -> None:
    assert unescape_prompt_line("a\\nb\\tc\\\\d") == "a\nb\tc\\d"
    assert unescape_prompt_line("\\x41\\x4") == "A\\x4"  # two hex digits, else kept as is
    assert unescape_prompt_line("\\q") == "\\q"  # an unknown escape stays
    assert escape_prompt_line("a\\nb") == "a\\\\nb"  # a literal backslash-n is not a newline


def test_prompt_files_pair_lines_and_drop_a_bos_the_tool_adds(tmp_path: Path) -> None:
    positive = ["<s>one\ntwo", "<s>three"]
    negative = ["<s>uno\ndos", "tres"]
    pos, neg = write_prompt_files(tmp_path, positive, negative, stem="ax", bos_text="<s>")
    assert pos.name == "ax.positive.txt" and neg.name == "ax.negative.txt"
    assert pos.read_text(encoding="utf-8") == "one\\ntwo\nthree\n"
    assert neg.read_text(encoding="utf-8") == "uno\\ndos\ntres\n"
    assert generator_prompt("<s>x", bos_text=None) == "<s>x"  # the tool adds no BOS: kept
    with pytest.raises(LlamaCppError, match="2 positive and 1 negative"):
        write_prompt_files(tmp_path, positive, negative[:1])
    with pytest.raises(LlamaCppError, match="negative prompt 1 is empty"):
        write_prompt_files(tmp_path, positive, ["x", "<s>"], bos_text="<s>")


def test_arguments_name_the_files_the_method_and_one_decode_per_prompt(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("bin", "m.gguf", "p.txt", "n.txt", "o.gguf")]
    mean = generator_arguments(*paths, method="mean", threads=1, context=1024)
    assert mean[0] == str(paths[0])
    pairs = dict(zip(mean[1::2], mean[2::2], strict=True))
    assert pairs == {
        "-m": str(paths[1]),
        "--positive-file": str(paths[2]),
        "--negative-file": str(paths[3]),
        "-o": str(paths[4]),
        "--method": "mean",
        "-t": "1",
        "-c": "1024",
        "-b": "1024",
        "-ub": "1024",
        "-ngl": "0",
    }
    pca = generator_arguments(*paths, method="pca", threads=2, pca_batch=50, pca_iterations=500)
    assert pca[-4:] == ["--pca-batch", "50", "--pca-iter", "500"]
    with pytest.raises(LlamaCppError, match="multiple"):
        generator_arguments(*paths, method="pca", threads=1, pca_batch=30, pca_iterations=100)
    with pytest.raises(LlamaCppError, match="'median' is not one of mean, pca"):
        generator_arguments(*paths, method="median", threads=1)


def _unit(seed: int, blocks: range, width: int = 4) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for block in blocks:
        vector = rng.standard_normal(width)
        out[block] = (vector / np.linalg.norm(vector)).astype(np.float32)
    return out


def test_the_written_file_must_be_blocks_1_to_l_minus_1_of_unit_norm() -> None:
    good = ControlVector(_unit(0, range(1, 6)), "llama")
    check_generator_vector(good, n_layer=6, n_embd=4, what="f")
    assert all(abs(norm - 1) < 1e-6 for norm in block_norms(good.directions).values())
    with pytest.raises(LlamaCppError, match="blocks 1..4 \\(4\\), expected 1..5 \\(5\\)"):
        check_generator_vector(
            ControlVector(_unit(0, range(1, 5)), "llama"), n_layer=6, n_embd=4, what="f"
        )
    with pytest.raises(LlamaCppError, match="width 4"):
        check_generator_vector(good, n_layer=6, n_embd=8, what="f")
    doubled = {block: 2 * vector for block, vector in good.directions.items()}
    with pytest.raises(LlamaCppError, match="5 blocks are not of unit norm \\(block 1: 2\\)"):
        check_generator_vector(ControlVector(doubled, "llama"), n_layer=6, n_embd=4, what="f")


def test_align_signs_turns_each_block_toward_the_reference() -> None:
    reference = _unit(1, range(1, 5))
    vector = {
        1: reference[1],
        2: -reference[2],
        3: -0.5 * reference[3] + 0.1,  # mostly against: flipped
        4: reference[4],
    }
    aligned, flipped = align_signs(vector, reference)
    assert flipped == [2, 3]
    for block in (1, 2, 3):
        assert float(aligned[block] @ reference[block]) > 0
    np.testing.assert_array_equal(aligned[2], reference[2])
    assert align_signs({9: reference[1]}, reference)[1] == []  # a block the reference lacks


FAKE = """#!{python}
import sys
import numpy as np
from cvgen.vectors.gguf_file import write_control_vector
args = sys.argv[1:]
option = dict(zip(args[::2], args[1::2]))
lines = open(option["--positive-file"], encoding="utf-8").read().splitlines()
if len(lines) != {pairs}:
    print("error: wrong prompt count", file=sys.stderr)
    sys.exit(3)
if option["--method"] == "pca":
    print("E something went wrong", file=sys.stderr)
    sys.exit(1)
vectors = {{k: np.eye(4, dtype=np.float32)[k % 4] for k in range(1, {n_layer})}}
write_control_vector(option["-o"], vectors, model_hint="llama")
print("wrote file")
"""


def _fake_binary(tmp_path: Path, *, pairs: int, n_layer: int) -> Path:
    binary = tmp_path / "llama-cvector-generator"
    binary.write_text(FAKE.format(python=sys.executable, pairs=pairs, n_layer=n_layer))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def test_run_generator_runs_the_tool_and_reads_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    binary = _fake_binary(tmp_path, pairs=2, n_layer=6)
    folder = tmp_path / "work"

    def run(method: str, n_layer: int, **extra: str) -> Any:
        return run_generator(
            tmp_path / "m.gguf", ["p1", "p2"], ["n1", "n2"], folder,
            method=method, n_layer=n_layer, n_embd=4, binary=binary, **extra,
        )  # fmt: skip

    done = run("mean", 6, stem="language")
    assert done.vector.blocks == (1, 2, 3, 4, 5)
    assert done.path == folder / "language.mean.gguf" and "wrote file" in done.log
    assert (folder / "language.mean.log").is_file()
    with pytest.raises(LlamaCppError, match="exited with 1 and wrote no file: E something"):
        run("pca", 6)
    with pytest.raises(LlamaCppError, match="blocks 1..5 \\(5\\), expected 1..7"):
        run("mean", 8)
