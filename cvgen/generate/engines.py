"""Which engine runs a run's model, and the llama.cpp engine's side of preparing and collecting.

`transformers` loads any model (a .gguf is dequantised to float); `llama.cpp` runs a .gguf as
llama.cpp runs it, through the `cvgen[llama]` binding (`cvgen.engine`). `--engine auto` takes
llama.cpp for a .gguf when the binding is installed, unless a transformers-only option is set.
The choice is recorded in the pack (`pack.json` `engine`), and it keys the stored states: the
llama.cpp engine's are stored under the dtype "llama.cpp".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.engine.binding import BINDING_VERSION, LLAMA_CPP_COMMIT, binding_available
from cvgen.engine.collect import check_steerable, run_engine_collection
from cvgen.engine.context import ContextSettings, LlamaContext
from cvgen.engine.model import EngineTokenizer, open_model
from cvgen.extract.collect import WorkItem
from cvgen.extract.model_source import ModelSource
from cvgen.generate.settings import GenerateSettings, SettingsError

log = logging.getLogger("cvgen")

LLAMA_CPP = "llama.cpp"
TRANSFORMERS = "transformers"
ENGINE_DTYPE = "llama.cpp"  # the dtype name of the llama.cpp engine's states in the store
SEQUENCES_PER_DECODE = 128
# tokens of one engine decode at most: llama.cpp's compute buffer and KV cache grow with it
# (peak RSS of a SmolLM2 run measured 457 MiB at 1024, 649 MiB at 4096; docs/performance.md)
ENGINE_DECODE_TOKENS = 1024


def _transformers_only(settings: GenerateSettings) -> list[str]:
    """The transformers-only options `settings` sets, as flags with their values."""
    chosen = []
    for flag, value, default in (
        ("--dtype", settings.dtype, "auto"),
        ("--device-map", settings.device_map, "none"),
        ("--load-in", settings.load_in, "none"),
        ("--decoder-blocks", settings.decoder_blocks, None),
        ("--trust-remote-code", settings.trust_remote_code, False),
    ):
        if value != default:
            chosen.append(f"{flag} {value}" if not isinstance(value, bool) else flag)
    if settings.device not in ("auto", "cpu"):
        chosen.append(f"--device {settings.device}")
    return chosen


def resolve_engine(settings: GenerateSettings, source: ModelSource) -> str:
    """The engine of a run: `settings.engine`, with auto resolved (see the module docstring).
    Raises `SettingsError` for a combination that cannot run."""
    transformers_options = _transformers_only(settings)
    automatic = settings.engine == "auto"
    if automatic and source.kind == "gguf" and not transformers_options and not binding_available():
        log.warning(
            "the cvgen[llama] binding is not installed: %s is dequantised and run by "
            "transformers (pip install 'cvgen[llama]' runs it in llama.cpp itself)",
            source.location,
        )
    if settings.engine == TRANSFORMERS or (
        automatic and (source.kind != "gguf" or transformers_options or not binding_available())
    ):
        if settings.gpu_layers:
            raise SettingsError(
                f"--gpu-layers {settings.gpu_layers} is an option of the llama.cpp engine; the "
                "transformers engine places the model with --device and --device-map"
            )
        return TRANSFORMERS
    if source.kind != "gguf":
        raise SettingsError(
            f"--engine llama.cpp: --model {settings.model} is not a .gguf file; the llama.cpp "
            "engine runs GGUF models (use --engine transformers)"
        )
    if transformers_options:
        raise SettingsError(
            f"--engine llama.cpp: {', '.join(transformers_options)} are options of the "
            "transformers engine; the llama.cpp engine runs the file's own weights (use "
            "--gpu-layers to offload)"
        )
    return LLAMA_CPP


def model_file(source: ModelSource) -> Path:
    """The .gguf file of a gguf source."""
    return Path(source.location)


def open_tokenizer(source: ModelSource) -> EngineTokenizer:
    """llama.cpp's tokenizer of the model (its vocabulary only: no weights are read)."""
    return EngineTokenizer(open_model(model_file(source), vocab_only=True))


def engine_record(engine: str, settings: GenerateSettings) -> dict[str, Any]:
    """What pack.json records of the engine that collected the states."""
    if engine == LLAMA_CPP:
        return {
            "name": LLAMA_CPP,
            "binding": f"llama-cpp-python {BINDING_VERSION}",
            "llama_cpp_commit": LLAMA_CPP_COMMIT,
            "gpu_layers": settings.gpu_layers,
        }
    from importlib.metadata import version

    return {"name": TRANSFORMERS, "transformers": version("transformers")}


def collect_with_llama_cpp(
    source: ModelSource,
    settings: GenerateSettings,
    wanted: Sequence[int],
    items: Sequence[WorkItem],
    *,
    write: Callable[[int, list[int], np.ndarray], None],
    progress: Callable[[int], None],
    timings: dict[str, float],
) -> None:
    """Load the model in llama.cpp, prove its blocks can be read and steered
    (`check_steerable`, on the first item's prompt), then collect every item. The seconds
    go to `timings["load_model"]`."""
    clock = time.perf_counter()
    path = model_file(source)
    log.info("loading %s in llama.cpp (%d blocks offloaded)", path, settings.gpu_layers)
    longest = max(len(item.token_ids) for item in items)
    sequences = min(SEQUENCES_PER_DECODE, len(items))
    context_settings = ContextSettings(
        n_batch=max(min(settings.batch_tokens, ENGINE_DECODE_TOKENS), longest),
        n_seq=sequences,
        threads=settings.threads or None,
        n_outputs=sequences,  # one output a prompt: its last token
    )
    with (
        open_model(path, gpu_layers=settings.gpu_layers) as model,
        LlamaContext(model, context_settings) as context,
    ):
        check_steerable(context, wanted, items[0].token_ids)
        timings["load_model"] = time.perf_counter() - clock
        run_engine_collection(context, wanted, items, write=write, progress=progress)
