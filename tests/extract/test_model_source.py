"""Model sources: .gguf files, folders, hub-cache folders and hub ids; content identity; the
hub's offline probe; a truncated model file named by every command."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvgen.extract.loading import load_config
from cvgen.extract.model_source import ModelError, resolve_model_source


def test_hub_id_is_accepted_without_touching_the_network() -> None:
    source = resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (source.kind, source.directory, source.slug) == (
        "hub",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2-135M-Instruct",
    )


def test_gguf_and_folder_sources(tmp_path: Path, pico_llama: Path) -> None:
    gguf_file = tmp_path / "My Model:v2.Q4.gguf"
    gguf_file.write_bytes(b"GGUF" + bytes(100))
    source = resolve_model_source(str(gguf_file))
    assert (source.kind, source.gguf_file, source.directory) == (
        "gguf",
        gguf_file.name,
        str(tmp_path),
    )
    assert source.slug == "My-Model-v2.Q4"  # no ':' or space in file names
    folder = resolve_model_source(str(pico_llama))
    assert folder.kind == "folder" and folder.gguf_file is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.gguf", "GGUF file not found: missing.gguf"),
        ("not a model", "is not a .gguf file, a model folder or a hub id"),
    ],
)
def test_bad_model_specs(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_model_source(spec)


def test_folder_without_config_and_plain_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model_source(str(tmp_path))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file but not a .gguf file"):
        resolve_model_source(str(other))


def test_identity_follows_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(1000))
    source = resolve_model_source(str(path))
    before = source.identity(None)
    assert source.identity(None) == before
    path.write_bytes(bytes(999) + b"\x01")
    assert source.identity(None) != before


def header_gguf(path: Path, *, n_layer: int = 6, n_embd: int = 32) -> Path:
    """A llama model GGUF with a header transformers reads its config from, and one tensor."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_name("Pico")
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_context_length(512)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(4)
    writer.add_tensor("token_embd.weight", np.ones((4, n_embd), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def fake_hub_cache(
    cache: Path, repo: str, files: dict[str, Path], revision: str = "0123abc"
) -> Path:
    """The hub cache's layout for `repo` ("owner/name"): each file's bytes in `blobs/<sha>`,
    `snapshots/<revision>/<name>` a relative link to it, `refs/main` naming the revision.
    Returns the repository folder `models--owner--name`."""
    import hashlib
    import os

    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        data = source.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (folder / "blobs" / sha).write_bytes(data)
        os.symlink(Path("..") / ".." / "blobs" / sha, snapshot / name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return folder


def test_a_linked_gguf_keeps_its_own_name_and_loads(tmp_path: Path) -> None:
    """A link to a .gguf elsewhere (as in the hub cache, whose files are links into blobs/
    with hash names) is read through the link: its folder and its name, not the target's."""
    (tmp_path / "store").mkdir()
    real = header_gguf(tmp_path / "store" / "a1b2c3")
    links = tmp_path / "links"
    links.mkdir()
    link = links / "Pico.Q8.gguf"
    link.symlink_to(Path("..") / "store" / "a1b2c3")
    source = resolve_model_source(str(link))
    assert (source.kind, source.directory, source.gguf_file) == ("gguf", str(links), link.name)
    assert source.location == str(link) and source.name == "Pico.Q8"
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(real.read_bytes())
    assert source.identity(None) == resolve_model_source(str(copy)).identity(None)
    assert load_config(source, trust_remote_code=False).num_hidden_layers == 6


def test_hub_cache_snapshot_and_repository_folders_are_models(
    tmp_path: Path, pico_llama: Path
) -> None:
    files = {p.name: p for p in pico_llama.iterdir() if p.is_file()}
    repo = fake_hub_cache(tmp_path / "hub", "owner/pico-model", files)
    snapshot = repo / "snapshots" / "0123abc"
    for spec in (snapshot, repo):
        source = resolve_model_source(str(spec))
        assert (source.kind, source.directory, source.name) == (
            "folder",
            str(snapshot),
            "pico-model",
        )
        assert source.identity(None) == resolve_model_source(str(pico_llama)).identity(None)
    assert load_config(resolve_model_source(str(repo)), trust_remote_code=False).hidden_size == 32
    gguf_repo = fake_hub_cache(
        tmp_path / "hub", "owner/pico-GGUF", {"pico.Q8_0.gguf": header_gguf(tmp_path / "h.gguf")}
    )
    source = resolve_model_source(str(gguf_repo))
    assert (source.kind, source.gguf_file, source.name) == ("gguf", "pico.Q8_0.gguf", "pico.Q8_0")
    assert load_config(source, trust_remote_code=False).num_hidden_layers == 6


def test_a_linked_folder_is_named_as_the_link(tmp_path: Path, pico_llama: Path) -> None:
    link = tmp_path / "my-pico"
    link.symlink_to(pico_llama, target_is_directory=True)
    source = resolve_model_source(str(link))
    assert (source.kind, source.directory, source.slug) == ("folder", str(pico_llama), "my-pico")


def test_a_folder_of_several_ggufs_asks_for_one(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        header_gguf(tmp_path / name)
    with pytest.raises(
        ModelError, match=r"has no config.json but 2 .gguf files \(a.gguf, b.gguf\)"
    ):
        resolve_model_source(str(tmp_path))


def test_generate_from_a_hub_cache_snapshot(tmp_path: Path, pico_llama: Path) -> None:
    """The CLI on the hub's own download layout: exit 0, files named after the repository."""
    from click.testing import CliRunner

    from cvgen.cli import main

    files = {p.name: p for p in pico_llama.iterdir() if p.is_file()}
    repo = fake_hub_cache(tmp_path / "hub", "owner/pico-model", files)
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    out = tmp_path / "pack"
    arguments = ["generate", "-m", str(repo / "snapshots" / "0123abc"), "-a", "language"]
    arguments += ["-n", "4", "--tau", "0", "-o", str(out), "-q"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert (out / "pico-model-language__debias.gguf").is_file()
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.gguf", "b.gguf"):
        header_gguf(several / name)
    refused = CliRunner().invoke(
        main, ["generate", "-m", str(several), "-a", "language", "-o", str(out)]
    )
    assert refused.exit_code == 1
    assert (
        refused.output.count("\n") == 1 and f"folder {several} has no config.json" in refused.output
    )


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub at a closed local port (nothing listens on 127.0.0.1:9), offline mode off."""
    from huggingface_hub import constants

    import cvgen.extract.model_source

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as read when first imported
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(cvgen.extract.model_source, "_hub_offline", {})


@pytest.mark.usefixtures("unreachable_hub")
def test_a_hub_id_without_network_fails_at_once_in_one_line(tmp_path: Path) -> None:
    import time

    from click.testing import CliRunner

    from cvgen.cli import main

    out = tmp_path / "out"
    (tmp_path / "keep.txt").write_text("mine")
    started = time.perf_counter()
    result = CliRunner().invoke(
        main, ["generate", "-m", "owner/name", "-a", "language", "-n", "2", "-o", str(out)]
    )
    seconds = time.perf_counter() - started
    assert result.exit_code == 1
    assert (
        result.output == "Error: offline: cannot fetch owner/name; pass a local folder or .gguf\n"
    )
    assert seconds < 5, seconds
    assert not out.exists() and (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.usefixtures("unreachable_hub")
def test_a_cached_hub_id_loads_offline_without_asking_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cvgen.extract.loading
    import cvgen.extract.model_source

    seen: list[dict[str, object]] = []

    class Loader:
        @staticmethod
        def from_pretrained(directory: str, **kwargs: object) -> str:
            seen.append(kwargs)
            return directory

    monkeypatch.setattr(
        cvgen.extract.model_source, "_hub_cached", lambda repo_id: repo_id == "owner/name"
    )
    source = resolve_model_source("owner/name")
    assert cvgen.extract.loading._from_pretrained(Loader, source, "config", trust_remote_code=False)
    assert seen == [{"trust_remote_code": False, "local_files_only": True}]
    monkeypatch.setenv("HF_ENDPOINT", "http://localhost:9")  # probed once per endpoint
    with pytest.raises(ModelError, match="^offline: cannot fetch other/model; pass a local"):
        cvgen.extract.loading._from_pretrained(
            Loader, resolve_model_source("other/model"), "config", trust_remote_code=False
        )
    assert set(cvgen.extract.model_source._hub_offline) == {
        "http://127.0.0.1:9",
        "http://localhost:9",
    }


def test_a_truncated_model_gguf_is_named_by_every_command(tmp_path: Path, pico_llama: Path) -> None:
    """The first bytes of a model GGUF (cut in its tensor data, or in its header): every
    command that reads a model file says, in one line, which file is not whole."""
    from click.testing import CliRunner
    from conftest import generate_pico_pack

    from cvgen.cli import main

    pack = tmp_path / "pack"
    generate_pico_pack(pico_llama, pack, axes=("language",))
    vector = next(pack.glob("*__debias.gguf"))
    whole = header_gguf(tmp_path / "whole.gguf").read_bytes()
    cuts = {"tensor data": len(whole) - 100, "header": 200}
    before = {p: p.read_bytes() for p in pack.iterdir()}
    for where, size in cuts.items():
        model = tmp_path / f"cut-in-{where.replace(' ', '-')}.gguf"
        model.write_bytes(whole[:size])
        wanted = (
            f"{model}: truncated: {size} bytes, but its tensor data ends at byte {len(whole)}"
            if where == "tensor data"
            else f"{model}: truncated or damaged: its GGUF header does not fit in its {size} bytes"
        )
        runs = {
            "generate": ["generate", "-m", str(model), "-a", "language", "-o", str(tmp_path / "o")],
            "inspect": ["inspect", str(vector), "--model", str(model)],
            "commands": [
                "commands",
                str(pack),
                "--set",
                "language=0.5",
                "--model-path",
                str(model),
            ],
            "compare": ["compare", str(pack), "--model", str(model)],
            "eval": ["eval", str(pack), "--model", str(model), "--backend", "hf", "--no-store"],
        }
        for command, arguments in runs.items():
            result = CliRunner().invoke(main, arguments)
            assert result.exit_code == 1, (command, result.output)
            assert result.output.startswith(f"Error: {wanted}"), (command, result.output)
            assert result.output.count("\n") == 1 and "not a whole GGUF file" in result.output
            assert "unexpected" not in result.output
        assert model.read_bytes() == whole[:size]
    assert {p: p.read_bytes() for p in pack.iterdir()} == before
    assert not (tmp_path / "o").exists()
