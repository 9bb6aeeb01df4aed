"""Preparing a run before any weights are loaded: inputs, model facts, the manifest draft and
the chat-formatted text of every row of every array; then their token ids."""

from __future__ import annotations

import logging
from array import array as int_array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvgen.extract.chat import PLAIN_FORMAT, check_system_turn, prompt_format, tokenize_texts
from cvgen.extract.decoder_blocks import config_dimensions, context_length
from cvgen.extract.loading import load_config, load_tokenizer, resolve_device, resolve_dtype
from cvgen.extract.model_source import ModelSource, resolve_model_source
from cvgen.extract.store import StateArray
from cvgen.generate.engines import (
    ENGINE_DTYPE,
    LLAMA_CPP,
    engine_record,
    open_tokenizer,
    resolve_engine,
)
from cvgen.generate.inputs import RunInputs, check_context, load_inputs, render_all
from cvgen.generate.manifest import draft_manifest
from cvgen.generate.settings import GenerateSettings, select_blocks
from cvgen.pack.records import PackManifest

log = logging.getLogger("cvgen")


@dataclass
class PreparedRun:
    """Everything a run knows before any weights are loaded: inputs, model facts, the
    manifest draft and the chat-formatted text of every row of every array."""

    settings: GenerateSettings
    inputs: RunInputs
    source: ModelSource
    n_embd: int
    stored_blocks: list[int]
    identity: str
    manifest: PackManifest
    tokenizer: Any
    rendered: dict[str, list[str]]
    engine: str = "transformers"

    def dtype_name(self) -> str:
        """The dtype the weights load in on this machine ("float32", "bfloat16", ...), or
        "llama.cpp" for the llama.cpp engine (the file's own types)."""
        if self.engine == LLAMA_CPP:
            return ENGINE_DTYPE
        device = resolve_device(self.settings.device)
        return str(resolve_dtype(self.settings.dtype, device)).removeprefix("torch.")


def prepare_run(settings: GenerateSettings) -> PreparedRun:
    """Load the run's inputs, the model's config and tokenizer (no weights), draft its
    manifest, check the prompts against the model's context and render every text."""
    inputs = load_inputs(settings)
    source = resolve_model_source(settings.model)
    engine = resolve_engine(settings, source)
    tokenizer: Any = None
    if engine == LLAMA_CPP:
        tokenizer = open_tokenizer(source)
        config: Any = tokenizer.model.config()
    else:
        config = load_config(source, trust_remote_code=settings.trust_remote_code)
    n_layer, n_embd = config_dimensions(config, source)
    layers = select_blocks(n_layer, settings.skip_first, settings.skip_last)
    identity = source.identity(config)
    # built before any model work, so that bad class names fail fast
    manifest = draft_manifest(settings, source, config, n_layer, n_embd, layers, inputs, identity)
    manifest.extra["engine"] = engine_record(engine, settings)
    if tokenizer is None:
        tokenizer = load_tokenizer(source, trust_remote_code=settings.trust_remote_code)
    manifest.prompt_format = prompt_format(tokenizer)
    if manifest.prompt_format == PLAIN_FORMAT:
        log.warning(
            "%s has no chat template: its prompts are given as plain text, not chat turns "
            "(recorded as prompt_format: plain in pack.json)",
            source.spec,
        )
    if settings.system_message:
        check_system_turn(tokenizer, source.spec)
    check_context(settings, inputs, tokenizer, context_length(config), source.spec)
    rendered = render_all(inputs, tokenizer, system_turn=settings.system_message)
    return PreparedRun(
        settings=settings,
        inputs=inputs,
        source=source,
        n_embd=n_embd,
        stored_blocks=[layers[0] - 1, *layers],
        identity=identity,
        manifest=manifest,
        tokenizer=tokenizer,
        rendered=rendered,
        engine=engine,
    )


TOKENIZE_CHUNK = 1024  # texts tokenized at once: bounds the tokenizer's transient memory


def tokenize_pending(
    run: PreparedRun, rendered: Mapping[str, list[str]], arrays: Mapping[str, StateArray]
) -> dict[str, list[Sequence[int]]]:
    """The token ids of every text of every array with pending rows, in chunks, each kept as a
    compact int32 `array` (4 bytes a token, not a Python int's 28+)."""
    tokens: dict[str, list[Sequence[int]]] = {}
    for name, state_array in arrays.items():
        texts = rendered[name] if state_array.pending_rows().size else []
        tokens[name] = [
            int_array("i", ids)
            for start in range(0, len(texts), TOKENIZE_CHUNK)
            for ids in tokenize_texts(run.tokenizer, texts[start : start + TOKENIZE_CHUNK])
        ]
    return tokens


def pad_id(tokenizer: Any) -> int:
    """The token id that pads a batch: the tokenizer's pad, else end-of-sequence, else
    unknown token, else 0."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
