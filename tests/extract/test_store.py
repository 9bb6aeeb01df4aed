"""The state store: durable writes (data fsynced before its done markers), damaged arrays
recollected, and a full disk named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from small_arrays import FAMILY, distinct_states, open_array

from cvgen.extract.store import StateArray, StoreError
from cvgen.extract.store_keys import row_digests


class _Recorder:
    """Records (operation, file name) for os.open'ed descriptors' pwrite and fsync calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self.names: dict[int, str] = {}
        real_open, real_pwrite, real_fsync = os.open, os.pwrite, os.fsync

        def recording_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
            fd = real_open(path, flags, *args)
            self.names[fd] = Path(path).name
            return fd

        def recording_pwrite(fd: int, data: bytes, offset: int) -> int:
            self.events.append(("write", self.names.get(fd, "?")))
            return real_pwrite(fd, data, offset)

        def recording_fsync(fd: int) -> None:
            self.events.append(("fsync", self.names.get(fd, "?")))
            real_fsync(fd)

        monkeypatch.setattr(os, "open", recording_open)
        monkeypatch.setattr(os, "pwrite", recording_pwrite)
        monkeypatch.setattr(os, "fsync", recording_fsync)


def test_write_rows_fsyncs_the_data_before_the_first_done_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    array = open_array(tmp_path, "k", ["a", "b", "c", "d"])
    recorder = _Recorder(monkeypatch)
    array.write_rows([1, 3], distinct_states(2, 0.0))
    events = recorder.events
    assert events.count(("write", "k.npy")) == 4  # 2 blocks x 2 rows
    first_done = events.index(("write", "k.done"))
    assert events.index(("fsync", "k.npy")) < first_done
    assert max(i for i, e in enumerate(events) if e == ("write", "k.npy")) < first_done
    assert events[-1] == ("fsync", "k.done")
    assert events.count(("write", "k.done")) == 2
    assert array.pending_rows().tolist() == [0, 2]


def test_a_new_array_fsyncs_its_files_before_the_data_file_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder(monkeypatch)
    real_replace = os.replace

    def recording_replace(source: Path, target: Path) -> None:
        recorder.events.append(("rename", Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    open_array(tmp_path, "k", ["a", "b"])
    events = recorder.events
    rename = events.index(("rename", "k.npy"))
    for name in ("k.npy.part", "k.digests", "k.json", "k.done"):
        assert events.index(("fsync", name)) < rename, name
    assert events[rename + 1] == ("fsync", tmp_path.name)  # the folder, for the rename
    meta = json.loads((tmp_path / "k.json").read_text())
    assert meta["family"] == FAMILY.to_json()
    assert (tmp_path / "k.digests").read_bytes() == row_digests(["a", "b"])


def test_a_damaged_array_is_named_and_recreated_and_a_whole_one_kept(tmp_path: Path) -> None:
    texts = ["a", "b", "c"]
    array = open_array(tmp_path, "k", texts)
    array.write_rows([0, 1, 2], np.ones((2, 3, 3), dtype=np.float32))
    assert array.damage() is None
    whole = array.data_path.read_bytes()
    array.data_path.write_bytes(whole[:-8])
    assert (
        array.damage()
        == f"{len(whole) - 8} bytes, but its header and shape [2, 3, 3] need {len(whole)}"
    )
    with pytest.raises(
        StoreError, match=rf"k\.npy: damaged \({len(whole) - 8} bytes.*or delete it"
    ):
        StateArray.open_existing(tmp_path, "k", n=3, blocks=FAMILY.blocks, width=FAMILY.width)
    array.data_path.write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert (array.damage() or "").startswith("its .npy header cannot be read")
    reopened = open_array(tmp_path, "k", texts)
    assert reopened.damage() is None and reopened.pending_rows().tolist() == [0, 1, 2]
    assert reopened.row_digests() == row_digests(texts)
    reopened.done_path.write_bytes(b"\x01")
    assert reopened.damage() == "k.done has 1 bytes for 3 rows"


def _pico_generate(model: Path, out: Path, store: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from cvgen.cli import main

    arguments = ["generate", "-m", str(model), "-a", "language", "-n", "6", "--tau", "0"]
    result = CliRunner().invoke(main, [*arguments, "-o", str(out), "--cache-dir", str(store), "-q"])
    return result.exit_code, result.output


def test_generate_recollects_only_a_truncated_store_array(tmp_path: Path, pico_llama: Path) -> None:
    """A .npy of the store cut short (a full disk, a broken copy): the next run says which
    file, re-collects that array alone, and makes the same vectors."""
    from cvgen.vectors.control_vector import ControlVector

    store, out = tmp_path / "store", tmp_path / "pack"
    code, output = _pico_generate(pico_llama, out, store)
    assert code == 0, output
    first = {p.name: ControlVector.from_gguf(p).directions for p in out.glob("*.gguf")}
    metas = {json.loads(p.read_text())["array"]: p for p in store.glob("*.json")}
    damaged = metas["baseline"].with_suffix(".npy")
    damaged.write_bytes(damaged.read_bytes()[:1000])
    others = {p: p.read_bytes() for p in store.iterdir() if p.stem != damaged.stem}
    code, output = _pico_generate(pico_llama, out, store)
    assert code == 0, output
    assert f"cvgen: {damaged}: damaged (1000 bytes, but its header and shape" in output
    assert "re-collecting this array" in output
    assert "prompts run: 6 in" in output and "reused from the store: 12" in output
    assert {p: p.read_bytes() for p in others} == others  # the other arrays are untouched
    again = {p.name: ControlVector.from_gguf(p).directions for p in out.glob("*.gguf")}
    assert again.keys() == first.keys()
    for name, directions in first.items():
        for block, vector in directions.items():
            np.testing.assert_allclose(again[name][block], vector, rtol=1e-4, atol=1e-5)


def test_a_full_disk_under_the_store_names_the_file_and_the_bytes(
    tmp_path: Path, pico_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setattr(os, "pwrite", full)
    code, output = _pico_generate(pico_llama, tmp_path / "pack", tmp_path / "store")
    assert code == 1
    lines = output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {tmp_path / 'store'}/"), output
    data_file = Path(lines[0].removeprefix("Error: ").split(": disk full")[0])
    blocks, rows, width = json.loads(data_file.with_suffix(".json").read_text())["shape"]
    assert lines[0].startswith(
        f"Error: {data_file}: disk full: the store needs {blocks * rows * width * 4} more bytes "
        f"for this array's {rows} pending rows, "
    )
    assert " bytes free there; free some space or put the store on another disk" in output
    assert "unexpected" not in output
    assert not (tmp_path / "pack").exists() and (tmp_path / "notes.txt").read_text() == "mine"
