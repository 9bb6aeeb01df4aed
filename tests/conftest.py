"""Shared fixtures: isolated caches, and pico random models built once per test session.

The pico models are real transformers architectures (Llama and Qwen2) with random weights and
a byte-level BPE tokenizer trained here on the shipped prompts, saved as local folders, so the
default suite never touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from shared_models import RealTransformers

from cvgen.data.shipped import data_root

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PICO_LAYERS = 6
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module, loaded once and registered before it runs (a script's
    dataclasses look their own module up)."""
    key = f"cvgen_script_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# the axes whose texts train the pico tokenizer: the eight shipped when the golden packs were
# written (tests/golden), in the order glob gave them there; an axis added later must not change
# the pico models (a new axis in the corpus changes the tokenizer, so every golden's bytes)
TOKENIZER_AXES = (
    "character_focus", "compassion", "empathy", "honesty",
    "humility", "language", "optimism", "storytelling",
)  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every cache at the test's tmp dir and forbid hub access."""
    cache = tmp_path / "cvgen-cache"
    monkeypatch.setenv("CVGEN_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return cache


def _train_tokenizer(template: str | None) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    root = data_root()
    corpus = (root / "writing_prompts.txt").read_text().splitlines()
    corpus += (root / "prompt_stems.json").read_text().splitlines()
    for name in TOKENIZER_AXES:
        # the axis texts as the golden packs' tokenizers saw them: the first eight axes, without
        # the `evaluation` field (cvgen eval's statistics), which the files gained later
        raw = json.loads((root / "axes" / f"{name}.json").read_text())
        raw.pop("evaluation", None)
        corpus += json.dumps(raw, indent=2, ensure_ascii=False).splitlines()
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    if template is not None:
        fast.chat_template = template
    return fast


def build_pico_model(
    folder: Path, family: str, *, template: str | None = CHATML_TEMPLATE, seed: int = 0
) -> Path:
    """Save a random pico model of `family` ("llama" or "qwen2") with its tokenizer in `folder`."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = _train_tokenizer(template)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,  # type: ignore[arg-type]
        num_hidden_layers=PICO_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger random weights so blocks change the state visibly
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


@pytest.fixture(scope="session")
def pico_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pico_model(tmp_path_factory.mktemp("pico-llama"), "llama")


@pytest.fixture(scope="session")
def pico_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pico_model(
        tmp_path_factory.mktemp("pico-qwen2"), "qwen2", template=NO_SYSTEM_TEMPLATE, seed=1
    )


@pytest.fixture(scope="session")
def pico_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pico Llama whose tokenizer has no chat template (the documented fallback)."""
    return build_pico_model(tmp_path_factory.mktemp("pico-plain"), "llama", template=None, seed=2)


def real_model_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF: $CVGEN_REAL_MODEL (scripts/test.sh sets it to what
    scripts/fetch_model.sh printed), else the default cache location, if the file is there."""
    import os

    default = Path.home() / ".cache" / "cvgen" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    path = Path(os.environ.get("CVGEN_REAL_MODEL") or default)
    return path if path.is_file() else None


def craft_gguf(
    path: Path,
    tensors: Sequence[tuple[str, np.ndarray]],
    *,
    architecture: str | None = "controlvector",
    model_hint: str | None = "tiny-model",
) -> Path:
    """Write a GGUF file directly with GGUFWriter, bypassing cvgen's validation (for files
    that llama.cpp refuses)."""
    from gguf import GGUFValueType, GGUFWriter

    writer = GGUFWriter(path, architecture or "placeholder")
    if architecture is None:
        del writer.kv_data[0]["general.architecture"]
    if model_hint is not None:
        # add_key_value, not add_string: add_string silently drops an empty string.
        writer.add_key_value("controlvector.model_hint", model_hint, GGUFValueType.STRING)
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def require_real_model() -> Path:
    """The real model, or a failure (CI: CVGEN_REQUIRE_REAL_MODEL=1) or a skip."""
    import os

    path = real_model_path()
    if path is None:
        if os.environ.get("CVGEN_REQUIRE_REAL_MODEL") == "1":
            pytest.fail("the real model is required here: run scripts/fetch_model.sh")
        pytest.skip("real model not cached; run scripts/fetch_model.sh")
    return path


def second_model_path() -> Path | None:
    """The second architecture, Gemma 3 270M Q4_K_M (a base model, no chat template):
    $CVGEN_SECOND_MODEL (scripts/test.sh sets it to what scripts/fetch_second_model.sh
    printed), else the default cache location, if the file is there."""
    import os

    default = Path.home() / ".cache" / "cvgen" / "models" / "gemma-3-270m-q4_k_m.gguf"
    path = Path(os.environ.get("CVGEN_SECOND_MODEL") or default)
    return path if path.is_file() else None


def require_second_model() -> Path:
    """The second model, or a failure (CI: CVGEN_REQUIRE_REAL_MODEL=1) or a skip."""
    import os

    path = second_model_path()
    if path is None:
        if os.environ.get("CVGEN_REQUIRE_REAL_MODEL") == "1":
            pytest.fail("the second model is required here: run scripts/fetch_second_model.sh")
        pytest.skip("second model not cached; run scripts/fetch_second_model.sh")
    return path


def folder_snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file below `folder`: take one before and one
    after a command to prove that it changed or removed nothing there."""
    import hashlib

    return {
        str(entry.relative_to(folder)): hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(folder.rglob("*"))
        if entry.is_file()
    }


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state store for every slow test on the real model: a pack drawn with the same seed
    and fewer samples (or fewer axes) reuses the stored rows of the same text, so the real
    model's prompts are collected once per session."""
    return tmp_path_factory.mktemp("real-store")


def require_binding() -> None:
    """The llama.cpp engine's binding (cvgen[llama]) with its library, or a failure
    (CI: CVGEN_REQUIRE_LLAMA_CPP=1) or a skip."""
    import os

    from cvgen.engine.binding import binding_available

    if binding_available():
        return
    if os.environ.get("CVGEN_REQUIRE_LLAMA_CPP") == "1":
        pytest.fail("the cvgen[llama] binding is required here: run scripts/setup.sh")
    pytest.skip("llama-cpp-python (cvgen[llama]) or its library is not installed")


def require_llama_cpp() -> Path:
    """The folder of the llama.cpp binaries that scripts/build_llama_cpp.sh built: from
    $CVGEN_LLAMA_CPP (scripts/test.sh sets it), else the default cache; a failure when
    CVGEN_REQUIRE_LLAMA_CPP=1 (CI), else a skip."""
    import os

    from cvgen.llamacpp.binaries import LLAMA_CPP_COMMIT

    default = (
        Path.home() / ".cache" / "cvgen" / "llama.cpp" / f"{LLAMA_CPP_COMMIT[:7]}-shared" / "bin"
    )
    folder = Path(os.environ.get("CVGEN_LLAMA_CPP") or default)
    missing = [n for n in ("llama-completion", "llama-server") if not (folder / n).is_file()]
    if missing:
        if os.environ.get("CVGEN_REQUIRE_LLAMA_CPP") == "1":
            pytest.fail(f"{folder}: {', '.join(missing)} missing: run scripts/build_llama_cpp.sh")
        pytest.skip("llama.cpp not built; run scripts/build_llama_cpp.sh")
    return folder


def generate_pico_pack(
    model: Path, out: Path, axes: tuple[str, ...] = ("language", "optimism")
) -> str:
    """Run `cvgen generate` on a pico model (12 samples, tau 0, store beside `out`); return
    its output after checking it succeeded."""
    from click.testing import CliRunner

    from cvgen.cli import main

    arguments = ["generate", "--model", str(model), "--samples", "12", "--tau", "0"]
    for axis in axes:
        arguments += ["--axis", axis]
    arguments += ["--out", str(out), "--quiet", "--cache-dir", str(out.parent / "store")]
    result = CliRunner().invoke(main, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# --- the browser (Debian's chromium through Playwright; never a downloaded one) ----------

CHROMIUM = Path(os.environ.get("CVGEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.is_file():
        return f"no browser at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CVGEN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests are required (CVGEN_REQUIRE_BROWSER=1): {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def real_transformers() -> RealTransformers:
    """The real model's transformers config, tokenizer and float32 weights, loaded once per
    session through cvgen's loaders (tests/shared_models.py says why and how)."""
    return RealTransformers(require_real_model())
