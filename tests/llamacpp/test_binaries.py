"""The llama.cpp layer without llama.cpp: binary lookup, log checks, model-GGUF headers, the
pack/model mismatch checks and the side-by-side layout (fake binaries and crafted files)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import CHATML_TEMPLATE, PICO_LAYERS

from cvgen.cli import main
from cvgen.extract.chat import render_chat_prompt, template_of_model_file
from cvgen.llamacpp.binaries import (
    LLAMA_CPP_COMMIT,
    LlamaCppError,
    LlamaServer,
    applied_range,
    binary_version,
    check_applied,
    complete,
    error_lines,
    find_binary,
)
from cvgen.llamacpp.compare import (
    AxisOutputs,
    PackModelMismatch,
    check_pack_fits_model,
    format_side_by_side,
    measured_note,
)
from cvgen.vectors.format import ControlVectorError
from cvgen.vectors.gguf_file import write_control_vector
from cvgen.vectors.model_header import read_model_file_info

LOG_APPLIED = """0.00.076.822 D load: control token:      7 '<gh_stars>' is not marked as EOG
0.00.324.239 D set_adapter_cvec: il_start = 5, il_end = 20
0.00.400.000 I sampler seed: 0
"""
LOG_REFUSED = """0.00.076.822 D load: control token:      3 '<repo_name>' is not marked as EOG
0.00.200.100 E common_control_vector_load_one: invalid/unparsable direction tensor layer index in /x.gguf
0.00.200.200 I this error line is not one: E in the middle
"""


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def fake_binary(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def model_gguf(path: Path, *, n_embd: int, n_layer: int, template: str | None = None) -> Path:
    """A llama.cpp model header (no weights): enough for every check that reads one."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_name("Pico Test Model")
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_token_list(["<unk>", "<|im_start|>", "<|im_end|>", "hello"])
    writer.add_token_scores([0.0] * 4)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------ finding the binaries


def test_find_binary_prefers_the_variable_then_the_cache_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_environment: Path
) -> None:
    on_path = fake_binary(tmp_path / "path-bin", "llama-completion", "exit 0\n")
    cached = fake_binary(
        isolated_environment / "llama.cpp" / LLAMA_CPP_COMMIT[:7] / "bin", "llama-completion", ""
    )
    chosen = fake_binary(tmp_path / "chosen", "llama-completion", "exit 0\n")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CVGEN_LLAMA_CPP", raising=False)
    assert find_binary("llama-completion") == cached
    cached.unlink()
    assert find_binary("llama-completion") == on_path
    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(chosen.parent))
    assert find_binary("llama-completion") == chosen
    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(chosen))  # the binary itself names its folder
    assert find_binary("llama-completion") == chosen


def test_a_missing_binary_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CVGEN_LLAMA_CPP", raising=False)
    with pytest.raises(LlamaCppError, match=r"llama-server was not found.*build_llama_cpp\.sh"):
        find_binary("llama-server")
    # a variable that names an empty folder is an error, not a silent fall-back
    fake_binary(tmp_path / "elsewhere", "llama-server", "exit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(tmp_path / "empty"))
    with pytest.raises(LlamaCppError, match=r"CVGEN_LLAMA_CPP=.*empty: no executable"):
        find_binary("llama-server")


def test_binary_version_reads_the_commit(tmp_path: Path) -> None:
    current = fake_binary(
        tmp_path / "a", "llama-completion", "echo 'version: 0.5.0-dev (build 0, commit 0c1e570)'\n"
    )
    older = fake_binary(tmp_path / "b", "llama-completion", "echo 'version: 4589 (abc1234)' >&2\n")
    silent = fake_binary(tmp_path / "c", "llama-completion", "echo hello\n")
    assert binary_version(current) == "0c1e570"
    assert binary_version(older) == "abc1234"
    assert binary_version(silent) is None


# ------------------------------------------------------------------ reading llama.cpp's log


def test_log_checks_find_the_applied_range_and_only_error_level_lines() -> None:
    assert applied_range(LOG_APPLIED) == (5, 20)
    assert applied_range(LOG_REFUSED) is None
    assert error_lines(LOG_APPLIED) == []
    assert error_lines(LOG_REFUSED) == [LOG_REFUSED.splitlines()[1]]
    assert check_applied(LOG_APPLIED, what="x") == (5, 20)
    with pytest.raises(LlamaCppError, match="logged an error: .*layer index"):
        check_applied(LOG_APPLIED + LOG_REFUSED, what="x")
    with pytest.raises(LlamaCppError, match="did not apply"):
        check_applied("0.1.2.3 I all good\n", what="x")


def test_complete_refuses_a_run_that_silently_dropped_the_vectors(tmp_path: Path) -> None:
    """The fake behaves like llama.cpp 0c1e570: exit 0 and an error line for a bad file."""
    script = (
        'for a in "$@"; do case "$a" in *bad.gguf*) echo "0.0.1.0 E bad file $a" >&2;; '
        '*good.gguf*) echo "0.0.1.0 D set_adapter_cvec: il_start = 1, il_end = 5" >&2;; esac; done\n'
        "echo ' generated text'\n"
    )
    binary = fake_binary(tmp_path, "llama-completion", script)
    model = tmp_path / "m.gguf"
    plain = complete(model, "hi", binary=binary)
    assert plain.text == " generated text\n" and plain.applied is None
    steered = complete(model, "hi", vectors=["--control-vector", "good.gguf"], binary=binary)
    assert steered.applied == (1, 5)
    assert "--temp" in steered.arguments and "0" in steered.arguments
    with pytest.raises(LlamaCppError, match="logged an error: 0.0.1.0 E bad file bad.gguf"):
        complete(model, "hi", vectors=["--control-vector", "bad.gguf"], binary=binary)
    failing = fake_binary(tmp_path / "f", "llama-completion", "echo 'boom' >&2\nexit 3\n")
    with pytest.raises(LlamaCppError, match="exited with 3: boom"):
        complete(model, "hi", binary=failing)


def test_a_server_that_fails_to_start_is_reported_with_its_log(tmp_path: Path) -> None:
    binary = fake_binary(
        tmp_path, "llama-server", "echo 'error: failed to load model /nowhere.gguf'\nexit 1\n"
    )
    server = LlamaServer(tmp_path / "nowhere.gguf", binary=binary, log_path=tmp_path / "s.log")
    with pytest.raises(LlamaCppError, match="exited with 1 while starting") as caught:
        server.start()
    assert "failed to load model /nowhere.gguf" in str(caught.value)
    assert server.process is None or server.process.poll() is not None


def test_a_server_s_own_log_goes_with_a_clean_stop_and_stays_after_a_failure(
    tmp_path: Path,
) -> None:
    """A log LlamaServer made itself (no log_path) is removed when the server stops cleanly,
    and kept when an error names it."""
    # a stand-in llama-server: answers /health on the port it is given
    serving = fake_binary(
        tmp_path / "ok",
        "llama-server",
        f'exec {sys.executable} -c "import sys, http.server as h; '
        "p = int(sys.argv[sys.argv.index('--port') + 1]); "
        "R = type('R', (h.BaseHTTPRequestHandler,), {'do_GET': lambda s: (s.send_response(200), "
        "s.end_headers()), 'log_message': lambda s, *a: None}); "
        'h.HTTPServer((\'127.0.0.1\', p), R).serve_forever()" "$@"\n',
    )
    server = LlamaServer(tmp_path / "model.gguf", binary=serving).start()
    log = server.log_path
    assert log.is_file()
    server.stop()
    assert not log.exists()
    failing = fake_binary(tmp_path / "bad", "llama-server", "echo 'error: no model'\nexit 1\n")
    server = LlamaServer(tmp_path / "model.gguf", binary=failing)
    with pytest.raises(LlamaCppError, match=str(server.log_path)):
        server.start()
    server.stop()
    assert "error: no model" in server.log_path.read_text()
    server.log_path.unlink()


# ------------------------------------------------------------------ model GGUF headers


def test_model_header_gives_width_depth_template_and_tokens(tmp_path: Path) -> None:
    path = model_gguf(tmp_path / "m.gguf", n_embd=48, n_layer=7, template=CHATML_TEMPLATE)
    info = read_model_file_info(path)
    assert (info.architecture, info.n_embd, info.n_layer) == ("llama", 48, 7)
    assert info.name == "Pico Test Model"
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert render_chat_prompt(template_of_model_file(info), "Tell me.") == (
        "<|im_start|>user\nTell me.<|im_end|>\n<|im_start|>assistant\n"
    )
    bare = read_model_file_info(model_gguf(tmp_path / "b.gguf", n_embd=8, n_layer=2))
    assert bare.chat_template is None
    assert render_chat_prompt(template_of_model_file(bare), "Tell me.") == "Tell me.\n"


def test_model_header_errors_name_the_file(tmp_path: Path) -> None:
    good = model_gguf(tmp_path / "m.gguf", n_embd=48, n_layer=7).read_bytes()
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(good[:60])
    with pytest.raises(
        ControlVectorError,
        match=r"cut\.gguf: truncated or damaged: its GGUF header does not fit in its 60 bytes",
    ):
        read_model_file_info(truncated)
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ControlVectorError, match=r"notes\.gguf: not a GGUF file"):
        read_model_file_info(text)
    vector = tmp_path / "v.gguf"
    write_control_vector(vector, {1: np.ones(8, dtype=np.float32)}, model_hint="llama")
    with pytest.raises(ControlVectorError, match="control-vector file, not a model"):
        read_model_file_info(vector)


# ------------------------------------------------------------------ a pack and a model


@pytest.fixture(scope="module")
def pico_pack(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unit") / "pack"
    result = run(
        *("generate", "--model", str(pico_llama), "--axis", "language", "--samples", "8"),
        *("--tau", "0", "--out", str(out), "--quiet", "--cache-dir", str(out.parent / "store")),
    )
    assert result.exit_code == 0, result.output
    return out


def test_the_manifest_and_pack_readme_record_the_llama_cpp_commit(pico_pack: Path) -> None:
    manifest = json.loads((pico_pack / "pack.json").read_text())
    assert manifest["llama_cpp"]["commit"] == LLAMA_CPP_COMMIT
    assert "llama-cpp-python 0.3.36" in manifest["llama_cpp"]["source"]
    assert f"llama.cpp {LLAMA_CPP_COMMIT[:7]}" in (pico_pack / "README.md").read_text()


def test_a_pack_used_with_another_model_is_detected(pico_pack: Path, tmp_path: Path) -> None:
    manifest = json.loads((pico_pack / "pack.json").read_text())
    width = manifest["model"]["n_embd"]
    fits = model_gguf(tmp_path / "same.gguf", n_embd=width, n_layer=PICO_LAYERS)
    wider = model_gguf(tmp_path / "wide model.gguf", n_embd=width * 2, n_layer=PICO_LAYERS)
    deeper = model_gguf(tmp_path / "deep.gguf", n_embd=width, n_layer=PICO_LAYERS + 4)
    assert check_pack_fits_model(manifest, fits, pack=pico_pack).n_embd == width
    with pytest.raises(PackModelMismatch, match=f"embedding_length is {width * 2}, but pack"):
        check_pack_fits_model(manifest, wider, pack=pico_pack)
    with pytest.raises(PackModelMismatch, match=f"block_count is {PICO_LAYERS + 4}"):
        check_pack_fits_model(manifest, deeper, pack=pico_pack)

    ok = run("commands", str(pico_pack), "--set", "language=0.5", "--model-path", str(fits))
    assert ok.exit_code == 0 and str(fits) in ok.stdout
    bad = run("commands", str(pico_pack), "--set", "language=0.5", "--model-path", str(wider))
    assert bad.exit_code == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1
    assert f"n_embd {width}; llama.cpp would refuse its vectors" in bad.stderr
    # a model path that is not here (another machine's) is printed unchecked
    elsewhere = run("commands", str(pico_pack), "--set", "language=1", "--model-path", "/x/m.gguf")
    assert elsewhere.exit_code == 0 and "-m /x/m.gguf" in elsewhere.stdout

    vector = next(pico_pack.glob("*__debias.gguf"))
    good = run("inspect", str(vector), "--model", str(fits))
    assert good.exit_code == 0 and "direction" in good.stdout.lower()
    refused = run("inspect", str(vector), "--model", str(wider))
    assert refused.exit_code == 1 and "llama.cpp would refuse this file with" in refused.stderr
    assert f"{width}" in refused.stderr and f"{width * 2}" in refused.stderr


def test_compare_checks_its_input_before_running_anything(
    pico_pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CVGEN_LLAMA_CPP", str(tmp_path / "empty"))
    missing_axis = run("compare", str(pico_pack), "--axis", "nope", "--model", "x.gguf")
    assert missing_axis.exit_code == 2 and "'nope' is not in the pack" in missing_axis.stderr
    bad_scale = run("compare", str(pico_pack), "--scales", "-1,x", "--model", "x.gguf")
    assert bad_scale.exit_code != 0 and "'x'" in bad_scale.stderr
    manifest = json.loads((pico_pack / "pack.json").read_text())
    fits = model_gguf(tmp_path / "m.gguf", n_embd=manifest["model"]["n_embd"], n_layer=6)
    no_binary = run("compare", str(pico_pack), "--model", str(fits))
    assert no_binary.exit_code == 1 and "build_llama_cpp.sh" in no_binary.stderr


def test_side_by_side_keeps_columns_aligned() -> None:
    result = AxisOutputs(
        axis="language",
        classes=("simple", "ornate"),
        scales=(-1.0, 0.0, 1.0),
        texts=("A cat sat.", "", "The resplendent feline reposed upon an embroidered cushion."),
    )
    text = format_side_by_side([result], width=64)
    lines = text.splitlines()
    assert lines[0] == "== language: simple (-) vs ornate (+) =="
    assert lines[1].startswith("-1 (simple)") and "0 (debias only)" in lines[1]
    assert lines[1].rstrip().endswith("+1 (ornate)")
    column = (64 - 6) // 3
    assert lines[2] == "-+-".join(["-" * column] * 3)
    assert lines[3].startswith("A cat sat.".ljust(column) + " | " + " " * column + " | The")
    assert all(len(line) <= 64 for line in lines)


def test_side_by_side_prints_what_the_eval_measured_under_the_axis_name() -> None:
    record = {
        "measured": {
            "slope": 0.212,
            "low": 0.2,
            "high": 0.225,
            "random_slope": -0.001,
            "steers": True,
        },
        "suggested_scale": {"negative": 1.704, "positive": 1.6, "calibrated": True},
    }
    note = measured_note(record)
    assert note == (
        "measured (cvgen eval): propensity slope +0.212 [+0.200, +0.225] nats/token per unit "
        "scale, random direction -0.001: steers; suggested scales -1.7 / +1.6"
    )
    result = AxisOutputs("language", ("simple", "ornate"), (-1.7, 0.0, 1.6), ("a", "b", "c"), note)
    assert format_side_by_side([result], width=300).splitlines()[1] == note
    # a pack never evaluated has no note, and an uncalibrated suggestion is not shown
    assert measured_note({"suggested_scale": {"negative": 1.0, "calibrated": False}}) == ""
    record["suggested_scale"] = {"negative": 1.0, "positive": 1.0, "calibrated": False}
    assert measured_note(record).endswith("random direction -0.001: steers")
