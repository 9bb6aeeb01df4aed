"""Collecting a run's block states: the content-keyed store arrays of every list of texts, and
the model run over their pending rows (loading the weights only when a row is pending)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cvgen.common.preflight import check_free_space
from cvgen.extract.collect import CollectionSettings, WorkItem, run_collection
from cvgen.extract.decoder_blocks import config_dimensions, find_decoder_blocks
from cvgen.extract.loading import (
    device_for_local_rank,
    gpus_for_process,
    input_device,
    load_causal_lm,
    resolve_device,
    resolve_dtype,
)
from cvgen.extract.model_source import ModelSource
from cvgen.extract.row_reuse import reuse_stored_rows
from cvgen.extract.shard_spec import ShardSpec
from cvgen.extract.store import StateArray, store_bytes_needed
from cvgen.extract.store_keys import ArrayFamily, content_key
from cvgen.generate.engines import LLAMA_CPP, collect_with_llama_cpp
from cvgen.generate.prepare import PreparedRun, pad_id, prepare_run, tokenize_pending
from cvgen.generate.settings import GenerateSettings

log = logging.getLogger("cvgen")


def array_keys(
    rendered: Mapping[str, Sequence[str]],
    *,
    identity: str,
    dtype_name: str,
    stored_blocks: Sequence[int],
    quantization: str,
    shard: ShardSpec | None = None,
) -> dict[str, str]:
    """The store key of every list of texts (a shard's keys also name the shard)."""
    return {
        name: content_key(
            model_identity=identity,
            dtype=dtype_name,
            blocks=stored_blocks,
            texts=texts,
            quantization=quantization,
            shard=str(shard) if shard is not None and shard.count > 1 else None,
        )
        for name, texts in rendered.items()
    }


def _check_store_space(
    root: Path,
    keys: Mapping[str, str],
    rendered: Mapping[str, Sequence[str]],
    stored_blocks: list[int],
    width: int,
) -> None:
    """Refuse (`check_free_space`) a store whose disk cannot hold the arrays still missing."""
    needed = sum(
        store_bytes_needed(root, keys[name], n=len(texts), blocks=stored_blocks, width=width)
        for name, texts in rendered.items()
    )
    rows = max(len(texts) for texts in rendered.values())
    check_free_space(
        root,
        needed,
        what=f"{len(rendered)} arrays of {len(stored_blocks)} blocks x {rows} rows x {width} "
        "floats x 4 bytes",
    )


def open_arrays(
    rendered: dict[str, list[str]],
    *,
    root: Path,
    identity: str,
    dtype_name: str,
    stored_blocks: list[int],
    width: int,
    quantization: str = "none",
    shard: ShardSpec | None = None,
) -> dict[str, StateArray]:
    """Open (or create) the store array of every list of texts, keyed by content, and fill
    their pending rows with the states of identical texts already done in the store (any
    array of the same model identity, dtype, quantisation, blocks and width)."""
    keys = array_keys(
        rendered,
        identity=identity,
        dtype_name=dtype_name,
        stored_blocks=stored_blocks,
        quantization=quantization,
        shard=shard,
    )
    family = ArrayFamily(
        model_identity=identity,
        dtype=dtype_name,
        quantization=quantization,
        blocks=tuple(stored_blocks),
        width=width,
    )
    _check_store_space(root, keys, rendered, stored_blocks, width)
    arrays = {
        name: StateArray.open(
            root,
            keys[name],
            n=len(texts),
            blocks=stored_blocks,
            width=width,
            description={
                "model": identity,
                "dtype": dtype_name,
                "quantization": quantization,
                "array": name,
                "blocks": stored_blocks,
                **({"shard": str(shard)} if shard is not None else {}),
            },
            texts=texts,
            family=family,
        )
        for name, texts in rendered.items()
    }
    copied = reuse_stored_rows(list(arrays.values()))
    if copied:
        log.info("copied the states of %d prompts from stored rows of the same text", copied)
    return arrays


def _load_model(
    settings: GenerateSettings,
    source: ModelSource,
    local_process: tuple[int, int] | None,
    timings: dict[str, float],
) -> tuple[Any, Any, Any]:
    """Load the weights for `settings` (recording the seconds in `timings["load_model"]`):
    (model, the device its inputs go to, its decoder blocks)."""
    device = device_for_local_rank(
        resolve_device(settings.device), local_process[0] if local_process else None
    )
    dtype = resolve_dtype(settings.dtype, device)
    where = "a device map" if settings.device_map == "auto" else str(device)
    log.info("loading %s (%s on %s)", source.spec, str(dtype).removeprefix("torch."), where)
    clock = time.perf_counter()
    model = load_causal_lm(
        source,
        dtype=dtype,
        device=device,
        trust_remote_code=settings.trust_remote_code,
        device_map=settings.device_map,
        load_in=settings.load_in,
        gpus=gpus_for_process(local_process) if settings.device_map == "auto" else None,
    )
    device = input_device(model, device)
    timings["load_model"] = time.perf_counter() - clock
    blocks = find_decoder_blocks(
        model, config_dimensions(model.config, source)[0], path=settings.decoder_blocks
    )
    return model, device, blocks


def _collect_with_transformers(
    run: PreparedRun,
    items: Sequence[WorkItem],
    write: Callable[[int, list[int], np.ndarray], None],
    advance: Callable[[int], None],
    local_process: tuple[int, int] | None,
    timings: dict[str, float],
) -> None:
    """Load the weights with transformers and run every item (`run_collection`)."""
    model, device, blocks = _load_model(run.settings, run.source, local_process, timings)
    run_collection(
        model,
        blocks,
        run.stored_blocks,
        items,
        settings=CollectionSettings(
            pad_id=pad_id(run.tokenizer), device=device, batch_tokens=run.settings.batch_tokens
        ),
        write=write,
        progress=advance,
    )


def collect_pending(
    run: PreparedRun,
    arrays: dict[str, StateArray],
    tokens: Mapping[str, Sequence[Sequence[int]]],
    timings: dict[str, float],
    *,
    show_progress: bool,
    local_process: tuple[int, int] | None = None,
) -> int:
    """Run the model over every pending row of every array (`tokens[name][row]` holds the
    row's token ids); return the number of prompts run. Records the seconds spent in
    `timings["load_model"]` and `timings["collect"]`. `show_progress` draws the progress bar.
    `local_process` is (LOCAL_RANK, LOCAL_WORLD_SIZE) under torchrun: it picks this process's
    GPU, or its share of the node's GPUs with --device-map auto."""
    items = [
        WorkItem(target=index, row=int(row), token_ids=tokens[name][int(row)])
        for index, (name, array) in enumerate(arrays.items())
        for row in array.pending_rows()
    ]
    stored = sum(array.n for array in arrays.values()) - len(items)
    log.info("reused %d stored prompts, running %d new ones", stored, len(items))
    if not items:
        return 0
    targets = list(arrays.values())
    prompts_per_sample = len(arrays)  # the baseline plus two per axis
    with tqdm(total=len(items), unit="prompt", desc="collecting", disable=not show_progress) as bar:
        started = time.perf_counter()

        def advance(count: int) -> None:
            bar.update(count)
            rate = bar.n / prompts_per_sample / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{rate:.2f} samples/s", refresh=False)

        def write(target: int, rows: list[int], states: Any) -> None:
            targets[target].write_rows(rows, states)

        if run.engine == LLAMA_CPP:
            collect_with_llama_cpp(
                run.source,
                run.settings,
                run.stored_blocks,
                items,
                write=write,
                progress=advance,
                timings=timings,
            )
        else:
            _collect_with_transformers(run, items, write, advance, local_process, timings)
    timings["collect"] = time.perf_counter() - started - timings.get("load_model", 0.0)
    return len(items)


def collect_run(
    settings: GenerateSettings, store_root: Path, show_progress: bool
) -> tuple[PreparedRun, dict[str, StateArray], int, dict[str, float]]:
    """Prepare the run, open its store arrays and collect what they miss: (run, arrays,
    prompts collected, timings)."""
    clock = time.perf_counter()
    resolve_device(settings.device)  # fail fast on an unavailable device
    run = prepare_run(settings)
    arrays = open_arrays(
        run.rendered,
        root=store_root,
        identity=run.identity,
        dtype_name=run.dtype_name(),
        stored_blocks=run.stored_blocks,
        width=run.n_embd,
        quantization=settings.load_in,
    )
    tokens = tokenize_pending(run, run.rendered, arrays)
    timings = {"prepare": time.perf_counter() - clock}
    collected = collect_pending(run, arrays, tokens, timings, show_progress=show_progress)
    return run, arrays, collected, timings
