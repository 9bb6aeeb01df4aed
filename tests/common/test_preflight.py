"""Issue 12, items 1-4: nothing lost, every input checked before the model loads.

Each test runs the input through the CLI on the pico model and asserts a one-line message
naming the file, field or option, a non-zero exit, that the model was never loaded, and that
every file that was there before is byte for byte what it was."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import generate_pico_pack

from cvgen.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "unexpected" not in result.output
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the weights fails the test: every refusal here comes before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model's weights were loaded")

    monkeypatch.setattr("cvgen.generate.collection.load_causal_lm", refuse)


@pytest.fixture(scope="module")
def pico_pack(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preflight") / "pack"
    generate_pico_pack(pico_llama, out, axes=("language",))
    return out


# item 1: only a provable cvgen pack is replaced


def test_a_folder_with_a_foreign_pack_json_is_refused_and_kept(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: None
) -> None:
    # the exact commands of issue 12, item 1
    monkeypatch.chdir(tmp_path)
    Path("proj").mkdir()
    Path("proj/pack.json").write_text('{"name":"my-node-project"}\n')
    Path("proj/important.txt").write_text("important\n")
    result = run("generate", "-m", str(pico_llama), "-a", "language", "-n", "2", "-o", "proj")
    line = one_line_error(result)
    assert line == (
        f"Error: --out {tmp_path / 'proj'}: exists and is not a cvgen pack (its pack.json has no "
        "field 'format' of 'cvgen-pack'; it holds important.txt); choose another folder"
    )
    assert snapshot(tmp_path / "proj") == {
        "pack.json": b'{"name":"my-node-project"}\n',
        "important.txt": b"important\n",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["proj"]  # no staging, no store
    forced = run("generate", "-m", str(pico_llama), "-a", "language", "-o", "proj", "--force")
    assert one_line_error(forced) == line  # --force never replaces a folder that is not a pack
    assert snapshot(tmp_path / "proj") == {
        "pack.json": b'{"name":"my-node-project"}\n',
        "important.txt": b"important\n",
    }


def test_a_file_added_to_a_real_pack_refuses_the_run_and_force_replaces_it(
    pico_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pack"
    generate_pico_pack(pico_llama, out, axes=("language",))
    (out / "notes.txt").write_text("my notes\n")
    before = snapshot(out)
    common = ["generate", "-m", str(pico_llama), "-a", "language", "-n", "12", "--tau", "0"]
    common += ["-o", str(out), "--cache-dir", str(tmp_path / "store"), "-q"]
    line = one_line_error(run(*common, "--seed", "3"))
    assert line == (
        f"Error: --out {out}: the cvgen pack there holds notes.txt, which cvgen did not write; "
        "move it out, or pass --force to delete it with the old pack"
    )
    assert snapshot(out) == before
    forced = run(*common, "--seed", "3", "--force")
    assert forced.exit_code == 0, forced.output
    assert not (out / "notes.txt").exists()
    assert json.loads((out / "pack.json").read_text())["settings"]["seed"] == 3


def test_a_pack_with_eval_outputs_and_own_temporaries_is_replaced(
    pico_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pack"
    generate_pico_pack(pico_llama, out, axes=("language",))
    for name in ("eval.json", "eval.md", "eval-language.png", ".pack.json.part-12345"):
        (out / name).write_text("x")
    generate_pico_pack(pico_llama, out, axes=("language",))
    assert not (out / "eval.json").exists()


def test_a_subfolder_in_a_pack_is_foreign(pico_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    shutil.copytree(pico_pack, out)
    (out / "extra").mkdir()
    (out / "extra" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(out)
    result = run("solve", "-m", "m.gguf", "-a", "language", "-o", str(out))
    assert "the cvgen pack there holds extra, which cvgen did not write" in one_line_error(result)
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["generate", "solve"])
def test_force_says_what_it_deletes(command: str) -> None:
    text = " ".join(run(command, "--help").output.split())
    assert "--force Replace the cvgen pack at --out even when it holds files cvgen did not" in text
    assert "they are DELETED with the old pack" in text


# item 2: the store never lives inside the pack


@pytest.mark.parametrize(
    ("out_name", "store_name", "relation"),
    [
        ("pack", "pack/store", "is inside"),
        ("pack", "pack", "is"),
        ("store/pack", "store", "holds the pack folder"),
    ],
)
def test_a_store_inside_or_around_the_pack_is_refused(
    pico_llama: Path,
    tmp_path: Path,
    no_model_load: None,
    out_name: str,
    store_name: str,
    relation: str,
) -> None:
    out, store = tmp_path / out_name, tmp_path / store_name
    arguments = ["-m", str(pico_llama), "-a", "language", "-n", "4", "-o", str(out)]
    line = one_line_error(run("generate", *arguments, "--cache-dir", str(store)))
    assert line == (
        f"Error: the state store --cache-dir {store} {relation} --out {out}; the pack folder is "
        "replaced on every run, so keep the store outside it"
    )
    assert list(tmp_path.iterdir()) == []
    solve = one_line_error(run("solve", *arguments, "--store", str(store)))
    assert f"the state store --store {store} {relation} --out {out}" in solve


def test_a_store_inside_an_existing_pack_is_refused_and_the_pack_kept(
    pico_pack: Path, tmp_path: Path, no_model_load: None
) -> None:
    out = tmp_path / "pack"
    shutil.copytree(pico_pack, out)
    before = snapshot(out)
    result = run(
        "generate", "-m", "x", "-a", "language", "-o", str(out), "--cache-dir", str(out / "s")
    )
    assert f"the state store --cache-dir {out / 's'} is inside --out {out}" in one_line_error(
        result
    )
    assert snapshot(out) == before


# item 3: every input checked before the model loads


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--samples", "1"],
            "--samples: 1 must be at least 2 (it is per class): with one sample a class has no "
            "spread, and the Fisher ratio is infinite",
        ),
        (["--seed", "-1"], "--seed: -1 must be a whole number from 0 to 9223372036854775807"),
        (
            ["--seed", str(2**63)],
            "--seed: 9223372036854775808 must be a whole number from 0 to 9223372036854775807",
        ),
    ],
)
@pytest.mark.parametrize("command", ["generate", "collect", "solve"])
def test_bad_settings_are_refused_by_every_command(
    pico_llama: Path,
    tmp_path: Path,
    no_model_load: None,
    command: str,
    args: list[str],
    message: str,
) -> None:
    arguments = [command, "-m", str(pico_llama), "-a", "language", *args]
    if command != "collect":
        arguments += ["-o", str(tmp_path / "pack")]
    assert one_line_error(run(*arguments)) == f"Error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_two_samples_per_class_is_the_minimum_that_works(pico_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    result = run(
        "generate", "-m", str(pico_llama), "-a", "language", "-n", "2", "--tau", "0", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    ratios = json.loads((out / "pack.json").read_text())["axes"]["language"]["fisher_ratio"]
    assert ratios and all(0 <= value < float("inf") for value in ratios.values())


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("name", {"name": "a" * 300}),
        ("classes", {"classes": ["calm", "w" * 250]}),
    ],
)
def test_an_axis_whose_file_names_are_too_long_is_refused(
    pico_llama: Path, tmp_path: Path, no_model_load: None, field: str, overrides: dict[str, object]
) -> None:
    axis = tmp_path / "long.json"
    raw: dict[str, object] = {"classes": ["calm", "wild"], "data": [["who is calm", "who is wild"]]}
    axis.write_text(json.dumps({**raw, **overrides}))
    before = snapshot(tmp_path)
    line = one_line_error(
        run("generate", "-m", str(pico_llama), "-a", str(axis), "-o", str(tmp_path / "p"))
    )
    assert line.startswith(f"Error: {axis}: field '{field}' (")
    assert "bytes long; file names may have at most 239 here" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "p").exists()
    store = tmp_path / "store"
    collect = run("collect", "-m", str(pico_llama), "-a", str(axis), "--store", str(store))
    assert one_line_error(collect) == line
    assert snapshot(tmp_path) == before


def test_out_under_a_regular_file_is_refused(
    pico_llama: Path, tmp_path: Path, no_model_load: None
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder\n")
    out = blocker / "pack"
    line = one_line_error(run("generate", "-m", str(pico_llama), "-a", "language", "-o", str(out)))
    assert line == f"Error: --out {out}: {blocker} is a file, not a folder"
    assert snapshot(tmp_path) == {"file.txt": b"not a folder\n"}


def test_out_under_proc_is_refused(pico_llama: Path, no_model_load: None) -> None:
    out = Path("/proc/cvgen-no-such-folder/pack")
    line = one_line_error(run("generate", "-m", str(pico_llama), "-a", "language", "-o", str(out)))
    assert line.startswith(f"Error: --out {out}: cannot create files in /proc (")


def test_out_on_a_read_only_file_system_is_refused(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: None
) -> None:
    """The tests run as root, which chmod cannot stop, so the file system's answer to the
    probe (EROFS) is played by os.open for the probe file alone."""
    real_open = os.open

    def read_only(path: object, flags: int, mode: int = 0o777) -> int:
        if Path(str(path)).name.startswith(".cvgen-write-probe-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr("cvgen.common.preflight.os.open", read_only)
    (tmp_path / "keep.txt").write_text("kept\n")
    out = tmp_path / "pack"
    line = one_line_error(run("generate", "-m", str(pico_llama), "-a", "language", "-o", str(out)))
    assert line == f"Error: --out {out}: cannot create files in {tmp_path} (Read-only file system)"
    assert snapshot(tmp_path) == {"keep.txt": b"kept\n"}
    store = tmp_path / "store"
    collect = one_line_error(
        run("collect", "-m", str(pico_llama), "-a", "language", "--store", str(store))
    )
    assert collect == (
        f"Error: --store {store}: cannot create files in {tmp_path} (Read-only file system)"
    )
    assert snapshot(tmp_path) == {"keep.txt": b"kept\n"}


def test_out_that_is_a_mount_point_is_refused(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_model_load: None
) -> None:
    out = tmp_path / "mounted"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(
        "cvgen.common.preflight.os.path.ismount",
        lambda path: Path(path) == out or real_ismount(path),
    )
    line = one_line_error(run("generate", "-m", str(pico_llama), "-a", "language", "-o", str(out)))
    assert line == (
        f"Error: --out {out}: is a mount point, which cannot be replaced by a rename; write the "
        "pack into a folder inside it"
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_eval_threads_below_one_is_refused(pico_pack: Path, tmp_path: Path, threads: str) -> None:
    before = snapshot(pico_pack)
    line = one_line_error(run("eval", str(pico_pack), "--threads", threads))
    assert line == f"Error: --threads: {threads} must be at least 1 (leave it out for the default)"
    assert snapshot(pico_pack) == before


def test_eval_seed_is_checked_like_generates(pico_pack: Path) -> None:
    before = snapshot(pico_pack)
    line = one_line_error(run("eval", str(pico_pack), "--seed", "-1"))
    assert line == "Error: --seed: -1 must be a whole number from 0 to 9223372036854775807"
    assert snapshot(pico_pack) == before


# item 4: bounded resources


def _one_pair_axis(folder: Path) -> Path:
    axis = folder / "tiny.json"
    axis.write_text(json.dumps({"classes": ["calm", "wild"], "data": [["is calm", "is wild"]]}))
    return axis


def test_more_samples_than_distinct_triples_warns_and_a_full_disk_refuses(
    pico_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    no_model_load: None,
) -> None:
    prompts = tmp_path / "one.txt"
    prompts.write_text("Write a short poem.\n")
    axis = _one_pair_axis(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        "cvgen.common.preflight.shutil.disk_usage", lambda path: usage(10**6, 0, 10**6)
    )
    store = tmp_path / "store"
    before = snapshot(tmp_path)
    samples = 2900  # the shipped stems are 2808: with one prompt and one pair, 2808 triples
    arguments = ["generate", "-m", str(pico_llama), "-a", str(axis), "-n", str(samples)]
    arguments += ["--prompts", str(prompts), "-o", str(tmp_path / "p"), "--cache-dir", str(store)]
    with caplog.at_level(logging.WARNING, logger="cvgen"):
        result = run(*arguments, "-q")
    warning = (
        "--samples 2900 exceeds the 2808 distinct (stem, pair, prompt) triples of axis 'tiny' "
        "(2808 stems x 1 prompt x 1 pair): triples will repeat; add writing prompts (--prompts) "
        "or pairs for more distinct samples"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [warning]
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"cvgen: {warning}"
    line = result.stderr.splitlines()[1]
    assert len(result.stderr.splitlines()) == 2
    blocks, width, arrays = 5, 32, 3  # blocks 0..4 of the pico model's 6, hidden size 32
    needed = arrays * (blocks * samples * width * 4 + samples * 33 + 4096)
    assert line == (
        f"Error: the state store {store}: {arrays} arrays of {blocks} blocks x {samples} rows x "
        f"{width} floats x 4 bytes needs {needed} bytes ({needed / 1e6:.1f} MB) but {tmp_path} "
        "has 1000000 bytes (1.0 MB) free; free some space, use another store folder, or lower "
        "--samples"
    )
    assert snapshot(tmp_path) == before and not store.exists()


def test_a_prompt_longer_than_the_context_is_refused_by_file_and_line(
    pico_llama: Path, tmp_path: Path, no_model_load: None
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a short poem.\n\n" + "Describe the sea at night. " * 200 + "\n")
    before = snapshot(tmp_path)
    result = run(
        "generate",
        "-m",
        str(pico_llama),
        "-a",
        "language",
        "-n",
        "8",
        "--prompts",
        str(prompts),
        "-o",
        str(tmp_path / "p"),
    )
    line = one_line_error(result)
    assert line.startswith(f"Error: {prompts} line 3: this writing prompt makes a text of ")
    assert line.endswith(
        f"tokens (with the persona and the chat template), more than the 512 tokens of "
        f"{pico_llama}'s context; shorten it or remove it"
    )
    assert snapshot(tmp_path) == before
