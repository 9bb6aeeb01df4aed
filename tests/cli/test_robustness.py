"""Bad input fails fast and cleanly; files and packs behave as a demanding user expects."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cvgen.cli import main
from cvgen.common.files import DataError
from cvgen.data.shipped import load_axis, load_writing_prompts
from cvgen.extract.loading import resolve_device
from cvgen.extract.model_source import ModelError, resolve_model_source
from cvgen.generate.pipeline import generate_pack
from cvgen.generate.settings import GenerateSettings, SettingsError
from cvgen.pack.errors import PackError
from cvgen.vectors.gguf_file import write_control_vector


def _settings(model: Path, **overrides: object) -> GenerateSettings:
    values: dict[str, object] = dict(model=str(model), axes=("language",), samples=8, tau=0.0)
    values.update(overrides)
    return GenerateSettings(**values)  # type: ignore[arg-type]


def test_vector_files_are_world_readable_under_the_usual_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_control_vector(
            tmp_path / "v.gguf", {1: np.ones(4, dtype=np.float32)}, model_hint="llama"
        )
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "v.gguf").stat().st_mode) == 0o644


def test_clashing_class_names_fail_before_any_model_work(pico_llama: Path, tmp_path: Path) -> None:
    axis = tmp_path / "clash.json"
    axis.write_text(json.dumps({"classes": ["x:y", "x y"], "data": [["who is a", "who is b"]]}))
    store = tmp_path / "store"
    with pytest.raises(PackError, match="give clashing file names"):
        generate_pack(_settings(pico_llama, axes=(str(axis),)), tmp_path / "p", store_root=store)
    assert not store.exists()  # nothing was collected


def test_a_foreign_out_folder_fails_before_any_model_work(pico_llama: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    store = tmp_path / "store"
    with pytest.raises(PackError, match="exists and is not a cvgen pack"):
        generate_pack(_settings(pico_llama), foreign, store_root=store)
    assert not store.exists()


def test_out_dot_inside_an_existing_pack_replaces_it(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack = tmp_path / "pack"
    generate_pack(_settings(pico_llama), pack, show_progress=False)
    monkeypatch.chdir(pack)
    result = generate_pack(_settings(pico_llama, seed=9), Path("."), show_progress=False)
    assert result.out == pack
    assert json.loads((pack / "pack.json").read_text())["settings"]["seed"] == 9
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_leftover_staging_of_a_dead_run_is_removed(pico_llama: Path, tmp_path: Path) -> None:
    dead = tmp_path / ".pack.part-999999999"
    dead.mkdir()
    (dead / "half.gguf").write_bytes(b"GGUF")
    generate_pack(_settings(pico_llama), tmp_path / "pack", show_progress=False)
    assert not dead.exists()


def test_tau_and_device_are_checked_up_front() -> None:
    with pytest.raises(SettingsError, match="--tau: -1.0 must be a finite number >= 0"):
        GenerateSettings(model="m.gguf", axes=("language",), tau=-1.0)
    with pytest.raises(SettingsError, match="--tau: nan"):
        GenerateSettings(model="m.gguf", axes=("language",), tau=float("nan"))
    assert GenerateSettings(model="m.gguf", axes=("language",)).eigen_candidates == 0
    assert GenerateSettings(model="m.gguf", axes=("language",), eigen_candidates=8).eigen_candidates
    if not torch.cuda.is_available():
        with pytest.raises(
            ModelError, match="--device: 'cuda' asked for, but this torch sees no CUDA device"
        ):
            resolve_device("cuda")
    with pytest.raises(ModelError, match="unknown device 'warp9'"):
        resolve_device("warp9")


def test_axis_name_comes_from_a_safe_file_stem_and_periods_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "my axis.json"
    path.write_text(json.dumps({"classes": ["a", "b"], "data": [["who is calm.", "who is wild"]]}))
    axis = load_axis(str(path))
    assert axis.name == "my_axis"
    assert axis.pairs == (("who is calm", "who is wild"),)


def test_bare_hub_ids_are_hub_ids() -> None:
    assert resolve_model_source("gpt2").kind == "hub"


def test_an_unreachable_dataset_is_a_one_line_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="someone/no-such-dataset: cannot load prompts"):
        load_writing_prompts("someone/no-such-dataset")
    odd = tmp_path / "p.tsv"
    odd.write_text("a\tb\n")
    with pytest.raises(DataError, match="unsupported prompt file type '.tsv'"):
        load_writing_prompts(str(odd))


def test_commands_refuses_the_same_axis_twice_but_lets_set_override_a_preset(
    pico_llama: Path, tmp_path: Path
) -> None:
    pack = tmp_path / "pack"
    generate_pack(_settings(pico_llama), pack, show_progress=False)
    manifest = json.loads((pack / "pack.json").read_text())
    manifest["presets"] = {"plain": {"language": -0.5}}
    (pack / "pack.json").write_text(json.dumps(manifest))
    runner = CliRunner()
    twice = runner.invoke(
        main, ["commands", str(pack), "--set", "language=0.5", "--set", "language=-1"]
    )
    assert twice.exit_code == 2 and "axis 'language' is given twice" in twice.output
    override = runner.invoke(
        main, ["commands", str(pack), "--preset", "plain", "--set", "language=0.3"]
    )
    assert override.exit_code == 0, override.output
    assert (
        ":0.3" in override.stdout
        and manifest["axes"]["language"]["files"]["positive"] in override.stdout
    )


def test_manifest_records_the_absolute_model_path(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pico_llama.parent)
    result = generate_pack(_settings(Path(pico_llama.name)), tmp_path / "pack", show_progress=False)
    assert result.manifest.to_json()["model"]["source"] == str(pico_llama)
    assert result.manifest.to_json()["model"]["spec"] == pico_llama.name


def test_a_full_disk_while_writing_the_pack_names_it_and_keeps_the_old_pack(
    pico_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from conftest import generate_pico_pack

    import cvgen.vectors.control_vector

    pack = tmp_path / "pack"
    generate_pico_pack(pico_llama, pack, axes=("language",))
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    calls: list[Path] = []

    def full(path: Path, *args: object, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_control_vector(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cvgen.vectors.control_vector, "write_control_vector", full)
    arguments = ["generate", "--model", str(pico_llama), "--samples", "12", "--tau", "0"]
    arguments += ["-a", "language", "-o", str(pack), "-q", "--cache-dir", str(tmp_path / "store")]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith(
        f"Error: --out {pack}: disk full writing {calls[1].name}: needs about "
    ), result.output
    needed = int(result.output.split("needs about ")[1].split()[0])
    assert needed > sum(len(data) for data in before.values()) // 2
    assert " bytes free there; free some space or write elsewhere" in result.output
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack", "store"]
