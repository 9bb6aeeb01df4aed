"""`cvgen inspect` (and every command that opens a GGUF it is given) on files that are not
control vectors: a model GGUF, values whose norm overflows float32, NaN/inf values, and paths
that are not regular files (a FIFO must be refused before it is opened, never waited on)."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import craft_gguf
from conftest import folder_snapshot as snapshot
from gguf import GGUFWriter

from cvgen.cli import main
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.format import ControlVectorError
from cvgen.vectors.gguf_file import write_control_vector


def run(*args: str) -> Result:
    """Run the CLI with every warning turned into an error, so a leaked numpy RuntimeWarning
    fails the test instead of reaching the user's terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return CliRunner().invoke(main, list(args), catch_exceptions=False)


def craft_model_gguf(path: Path, blocks: int = 30) -> Path:
    """A llama model GGUF as llama.cpp writes one: its architecture's keys, a tokenizer and
    many weight tensors (about 16 per block, as a real file has), no direction tensor."""
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(blocks)
    writer.add_embedding_length(8)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{index}" for index in range(64)])
    writer.add_tensor("token_embd.weight", np.ones((64, 8), dtype=np.float32))
    for block in range(blocks):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"):
            writer.add_tensor(f"blk.{block}.{name}.weight", np.ones((8, 8), dtype=np.float16))
        writer.add_tensor(f"blk.{block}.attn_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---------------------------------------------------------------- a model is not a control vector


@pytest.mark.parametrize("keys", [True, False], ids=["llama.cpp-model", "bare-tensors"])
def test_inspect_on_a_model_says_it_is_a_model_in_one_line(tmp_path: Path, keys: bool) -> None:
    if keys:
        path = craft_model_gguf(tmp_path / "model.gguf")
    else:  # only general.architecture and model tensors
        path = craft_gguf(
            tmp_path / "model.gguf",
            [("token_embd.weight", np.ones((4, 8), dtype=np.float32))]
            + [(f"blk.{i}.attn_q.weight", np.ones((8, 8), dtype=np.float16)) for i in range(6)],
            architecture="llama",
            model_hint=None,
        )
    before = snapshot(tmp_path)
    result = run("inspect", str(path))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path}: this is a model (architecture llama), not a control vector\n"
    )
    assert snapshot(tmp_path) == before


def test_a_control_vector_with_a_wrong_architecture_is_still_reported_problem_by_problem(
    tmp_path: Path,
) -> None:
    path = craft_gguf(
        tmp_path / "cv.gguf", [("direction.1", np.ones(8, np.float32))], architecture="llama"
    )
    result = run("inspect", str(path))
    assert result.exit_code == 1
    assert "general.architecture is 'llama', expected 'controlvector'" in result.output
    assert "this is a model" not in result.output


# ---------------------------------------------------------------- values llama.cpp cannot use


def test_inspect_refuses_a_norm_that_overflows_float32_without_a_warning(tmp_path: Path) -> None:
    vectors = [
        ("direction.1", np.ones(8, np.float32)),
        ("direction.2", np.full(8, 3e38, np.float32)),
    ]
    path = craft_gguf(tmp_path / "huge.gguf", vectors)
    before = snapshot(tmp_path)
    result = run("inspect", str(path))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output == (
        f"Error: {path}: llama.cpp would refuse this file: tensor 'direction.2' has an L2 norm "
        "of 8.49e+38, which overflows float32 (the steered states would become inf)\n"
    )
    assert "inf\n" not in result.output.replace("become inf)\n", "")
    assert snapshot(tmp_path) == before
    with pytest.raises(ControlVectorError, match="'direction.2' has an L2 norm of 8.49e"):
        ControlVector.from_gguf(path)


@pytest.mark.parametrize(
    ("values", "count"),
    [([np.inf], "1 non-finite value"), ([np.nan, -np.inf], "2 non-finite values")],
)
def test_inspect_refuses_non_finite_values_by_tensor(
    tmp_path: Path, values: list[float], count: str
) -> None:
    vector = np.ones(8, np.float32)
    vector[: len(values)] = values
    path = craft_gguf(tmp_path / "bad.gguf", [("direction.3", vector)])
    result = run("inspect", str(path))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {path}: llama.cpp would refuse this file: tensor 'direction.3' has {count} "
        "(NaN/inf)\n"
    )


def test_writer_refuses_a_norm_that_overflows_float32(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    with pytest.raises(ControlVectorError, match="block 4 has an L2 norm of 8.49e\\+38"):
        write_control_vector(path, {4: np.full(8, 3e38, np.float32)}, model_hint="m")
    assert not path.exists()


def test_norms_near_the_float32_limit_are_computed_in_float64(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    write_control_vector(path, {1: np.full(4, 1e38, np.float32)}, model_hint="m")
    result = run("inspect", str(path))
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("    1  "))
    assert float(row.split()[1]) == pytest.approx(2e38, rel=1e-6)


# ---------------------------------------------------------------- paths that are not files


@contextmanager
def fifo_rescue(fifo: Path) -> Iterator[list[bool]]:
    """While the block runs, unblock anyone who opens `fifo` for reading (by opening it for
    writing, then closing it), so that a regression fails fast instead of hanging the suite;
    the yielded list holds True once that happened."""
    done = threading.Event()
    rescued: list[bool] = []

    def rescue() -> None:
        while not done.wait(0.05):
            try:  # succeeds only while a reader is blocked in open()
                descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            os.close(descriptor)
            rescued.append(True)
            return

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    try:
        yield rescued
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize(
    ("command", "prefix"),
    [
        (["inspect"], ""),
        (["inspect", "cv.gguf", "--model"], ""),
        (["generate", "--axis", "language", "--out", "pack", "--quiet", "--model"], "--model: "),
    ],
    ids=["inspect", "inspect--model", "generate--model"],
)
def test_a_fifo_is_refused_at_once_by_every_command_that_opens_a_gguf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], prefix: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_control_vector(tmp_path / "cv.gguf", {1: np.ones(8, np.float32)}, model_hint="m")
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    with fifo_rescue(fifo) as rescued:
        result = run(*command, str(fifo))
    assert not rescued, "cvgen opened the FIFO"
    assert result.exit_code == 1
    assert result.output == f"Error: {prefix}{fifo}: is a FIFO (named pipe), not a regular file\n"
    assert snapshot(tmp_path) == before
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["cv.gguf", "pipe.gguf"]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda folder: (folder / "dir.gguf").mkdir() or folder / "dir.gguf", "a folder"),
        (lambda folder: Path(os.devnull), "a character device"),
    ],
    ids=["folder", "device"],
)
def test_inspect_refuses_other_non_regular_files(tmp_path: Path, make: object, kind: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = run("inspect", str(path))
    assert result.exit_code == 1
    assert result.output == f"Error: {path}: is {kind}, not a regular file\n"
