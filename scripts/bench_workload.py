"""The workload that scripts/bench.py and scripts/bench_engine.py share: the prompts of a real
run of one axis, rendered and tokenised as cvgen makes them, the model loaded as cvgen loads it,
and cvgen's transformers collector over them, timed on the device's clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cvgen.data.shipped import load_axis, load_stems, load_writing_prompts
from cvgen.extract.chat import render_text, tokenize_texts
from cvgen.extract.collect import CollectionSettings, WorkItem, run_collection
from cvgen.extract.decoder_blocks import config_dimensions
from cvgen.extract.loading import load_causal_lm, load_config, load_tokenizer
from cvgen.extract.model_source import resolve_model_source
from cvgen.extract.sampler import axis_texts, baseline_text, draw_samples
from cvgen.extract.store import StateArray
from cvgen.generate.settings import LayerSkip, select_blocks

DEFAULT_MODEL = Path.home() / ".cache" / "cvgen" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Workload:
    """The prompts of one axis (baseline, negative, positive per sample) and the model facts."""

    texts: list[str]
    token_ids: list[list[int]]
    stored_blocks: list[int]
    n_layer: int
    width: int
    pad_id: int


def build_workload(model_spec: str, *, samples: int, axis: str, seed: int = 0) -> Workload:
    """The rendered and tokenised prompts of `samples` samples of `axis`, as cvgen makes them."""
    source = resolve_model_source(model_spec)
    config = load_config(source, trust_remote_code=False)
    n_layer, width = config_dimensions(config, source)
    layers = select_blocks(n_layer, LayerSkip("1"), LayerSkip("1"))
    tokenizer = load_tokenizer(source, trust_remote_code=False)
    stems, prompts = load_stems(), load_writing_prompts(None)
    chosen = load_axis(axis)
    plan = draw_samples(samples, stems=stems, n_prompts=len(prompts), axes=[chosen], seed=seed)
    texts = []
    for row in range(len(plan)):
        prompt = prompts[int(plan.prompt_index[row])]
        for system in (baseline_text(plan, stems, row), *axis_texts(plan, stems, chosen, row)):
            texts.append(render_text(tokenizer, system, prompt, system_turn=False))
    pad = next(
        (
            value
            for value in (tokenizer.pad_token_id, tokenizer.eos_token_id)
            if isinstance(value, int)
        ),
        0,
    )
    return Workload(
        texts,
        tokenize_texts(tokenizer, texts),
        [layers[0] - 1, *layers],
        n_layer,
        width,
        pad,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(device: torch.device, into: dict[str, float], name: str) -> Iterator[None]:
    """Seconds of the block, after the device has finished its queued work."""
    synchronize(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    into[name] = time.perf_counter() - start


def load_model(model_spec: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    source = resolve_model_source(model_spec)
    return load_causal_lm(source, dtype=dtype, device=device, trust_remote_code=False)


# --- FLOPs ---------------------------------------------------------------------------------


def collect_cvgen(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    work: Workload,
    *,
    device: torch.device,
    batch_tokens: int,
    store: Path,
    reuse_prefix: bool,
    max_padding: float,
) -> np.ndarray:
    """(b) cvgen's collector over the workload, into a fresh memory-mapped store array;
    returns the stored states (blocks, n, d)."""
    key = f"bench-{time.time_ns()}"
    array = StateArray.open(
        store, key, n=len(work.token_ids), blocks=work.stored_blocks, width=work.width
    )
    items = [WorkItem(0, row, ids) for row, ids in enumerate(work.token_ids)]
    run_collection(
        model,
        blocks,
        work.stored_blocks,
        items,
        settings=CollectionSettings(
            pad_id=work.pad_id,
            device=device,
            batch_tokens=batch_tokens,
            reuse_prefix=reuse_prefix,
            max_padding=max_padding,
        ),
        write=lambda target, rows, states: array.write_rows(rows, states),
    )
    synchronize(device)
    return np.stack([array.block(block) for block in work.stored_blocks])
