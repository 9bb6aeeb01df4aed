"""The llama.cpp engine on the real SmolLM2 GGUF: block capture in batches with a shared
prefix, direction.k on block k (against transformers' block k, and in llama.cpp itself), exact
clearing of control vectors, and the steerability probe refusing an architecture that ignores
control vectors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_binding, require_real_model
from shared_models import RealTransformers

from cvgen.engine.binding import EngineError
from cvgen.engine.collect import check_steerable
from cvgen.engine.context import ContextSettings, LlamaContext
from cvgen.engine.model import EngineTokenizer, LlamaModel, open_model

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]
THREADS = int(os.environ.get("CVGEN_TEST_THREADS", "2"))

TEXTS = [
    "Write one sentence about the sea.",
    "Describe a mountain village at dawn, in an ornate style.",
    "Tell me plainly what you had for breakfast.",
    "Explain why the sky looks blue.",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    require_binding()
    with open_model(require_real_model()) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def context(model: LlamaModel) -> Iterator[LlamaContext]:
    with LlamaContext(model, ContextSettings(n_batch=1024, n_seq=8, threads=THREADS)) as made:
        yield made


@pytest.fixture(scope="module")
def prompts(model: LlamaModel) -> list[list[int]]:
    tokenizer = EngineTokenizer(model)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}]) for t in TEXTS]
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def test_a_batch_with_a_shared_prefix_gives_each_prompt_its_own_states(
    context: LlamaContext, prompts: list[list[int]], model: LlamaModel
) -> None:
    blocks = list(range(model.n_layer))
    batched = context.run(prompts, wanted=blocks)
    alone = np.concatenate([context.run([p], wanted=blocks) for p in prompts], axis=1)
    assert batched is not None and batched.shape == (model.n_layer, len(prompts), model.n_embd)
    # the chat template's system turn is shared: decoded once, copied to every sequence
    assert cosines(batched, alone).min() > 0.999
    # and the prompts still differ: each column is its own prompt's last token
    assert cosines(batched[-2, 0], batched[-2, 1]) < 0.99


def test_direction_k_is_added_to_block_k_and_clearing_restores_bit_for_bit(
    context: LlamaContext, prompts: list[list[int]], model: LlamaModel
) -> None:
    blocks = list(range(model.n_layer))
    before = context.run(prompts[:2], wanted=blocks)
    assert before is not None
    vector = np.random.default_rng(1).standard_normal(model.n_embd).astype(np.float32) * 4
    context.set_vectors({12: vector})
    steered = context.run(prompts[:2], wanted=blocks)
    context.set_vectors(None)
    after = context.run(prompts[:2], wanted=blocks)
    assert steered is not None and after is not None
    assert np.abs(steered[11] - before[11]).max() == 0.0  # before block 12: untouched
    assert np.abs(steered[12] - before[12] - vector).max() < 1e-3  # block 12's output: + v
    assert np.abs(steered[13] - before[13]).max() > 0.1  # downstream: moved
    assert np.array_equal(after, before)


def test_engine_block_k_is_transformers_block_k(
    context: LlamaContext,
    prompts: list[list[int]],
    model: LlamaModel,
    real_transformers: RealTransformers,
) -> None:
    """The store's convention (state k = output of block k, as the transformers engine's
    hooks read it) holds for this engine: each block matches transformers' same block, not
    its neighbour."""
    import torch

    assert Path(model.info.path).resolve() == real_transformers.path
    torch.set_num_threads(THREADS)
    hf = real_transformers.model()  # the session's one float32 load (tests/shared_models.py)
    grabbed: dict[int, np.ndarray] = {}
    hooks = [
        layer.register_forward_hook(
            lambda module, args, out, k=k: grabbed.__setitem__(
                k, (out[0] if isinstance(out, tuple) else out)[0, -1].float().numpy()
            )
        )
        for k, layer in enumerate(hf.model.layers)
    ]
    engine = context.run(prompts[:1], wanted=list(range(model.n_layer)))
    assert engine is not None
    try:
        with torch.inference_mode():
            hf(input_ids=torch.tensor([prompts[0]]))
    finally:
        for hook in hooks:
            hook.remove()
    reference = np.stack([grabbed[k] for k in range(model.n_layer)])
    same = cosines(engine[:, 0], reference)
    shifted = cosines(engine[1:, 0], reference[:-1])
    assert same.min() > 0.999, same
    assert shifted.max() < same.min() - 0.005


def test_the_probe_passes_a_steerable_model(
    context: LlamaContext, prompts: list[list[int]], model: LlamaModel
) -> None:
    check_steerable(context, list(range(5, model.n_layer - 1)), prompts[0])


class IgnoringContext:
    """A real context whose control vectors never reach the graph, as in an architecture
    whose llama.cpp graph has no `build_cvec` (plamo2, hy-v4, the BERT family at 0c1e570)."""

    def __init__(self, real: LlamaContext):
        self.real = real
        self.model = real.model
        self.capture = real.capture

    def run(self, prompts: list[list[int]], *, wanted: list[int]) -> np.ndarray | None:
        return self.real.run(prompts, wanted=wanted)

    def set_vectors(self, vectors: object) -> None:
        return None


def test_the_probe_refuses_a_model_whose_graph_ignores_control_vectors(
    context: LlamaContext, prompts: list[list[int]]
) -> None:
    ignoring: Any = IgnoringContext(context)
    with pytest.raises(EngineError, match=r"'llama' ignores control vectors on blocks 4, 28"):
        check_steerable(ignoring, [4, 5, 6, 28], prompts[0])


def test_the_probe_names_the_blocks_the_graph_does_not_name(
    context: LlamaContext, prompts: list[list[int]], model: LlamaModel
) -> None:
    """A block whose output has no `l_out-N` node (renamed here) is refused by block."""
    assert context.capture is not None
    names = context.capture.names
    saved = dict(names)
    names.pop(b"l_out-7")
    try:
        with pytest.raises(EngineError, match=r"names no output \(l_out-N\) for blocks 7;"):
            check_steerable(context, [6, 7, 8], prompts[0])
    finally:
        names.clear()
        names.update(saved)
