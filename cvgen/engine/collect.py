"""Collection through llama.cpp: every prompt's block outputs at its last token, many prompts a
decode, and a proof that the model's graph can be steered before any state is kept.

`plan_decodes` sorts the prompts by their tokens, so that prompts sharing a prefix (the chat
template's system turn, a persona's stem) sit together, and cuts the order into decodes of at
most `n_seq` prompts whose shared prefix plus their remaining tokens fit in `n_batch`.

`check_steerable` runs one short prompt with and without a probe vector on every wanted block
and requires each block's `l_out-N` to have been read and to have moved by the vector. An
architecture whose graph names no output for a block, or that ignores control vectors (at the
pinned commit: plamo2, hy-v4, gemma4-assistant and the BERT family), is refused in one
line naming the architecture and the blocks, before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cvgen.engine.binding import EngineError
from cvgen.engine.capture import MissingBlocks
from cvgen.engine.context import LlamaContext, shared_prefix_length
from cvgen.extract.collect import WorkItem

PROBE_TOLERANCE = 0.05  # of the probe's norm: batch arithmetic moves a state by ~1e-3 of it


def plan_decodes(
    token_lists: Sequence[Sequence[int]], *, n_batch: int, n_seq: int
) -> list[list[int]]:
    """Group prompt indices into decodes (see the module docstring). A prompt longer than
    `n_batch` raises `EngineError`."""
    order = sorted(range(len(token_lists)), key=lambda index: tuple(token_lists[index]))
    decodes: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if len(token_lists[index]) > n_batch:
            raise EngineError(
                f"a prompt of {len(token_lists[index])} tokens exceeds the engine's decode of "
                f"{n_batch} tokens; raise --batch-tokens"
            )
        trial = [*current, index]
        if current and (len(trial) > n_seq or _decode_tokens(token_lists, trial) > n_batch):
            decodes.append(current)
            trial = [index]
        current = trial
    if current:
        decodes.append(current)
    return decodes


def _decode_tokens(token_lists: Sequence[Sequence[int]], indices: Sequence[int]) -> int:
    """Cells a decode of `indices` takes: the shared prefix once plus every prompt's rest."""
    prompts = [token_lists[index] for index in indices]
    skip = shared_prefix_length(prompts)
    return skip + sum(len(prompt) - skip for prompt in prompts)


def run_engine_collection(
    context: LlamaContext,
    wanted: Sequence[int],
    items: Sequence[WorkItem],
    *,
    write: Callable[[int, list[int], np.ndarray], None],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run every item in planned decodes; after each decode call `write(target, rows,
    states)` once per target with states (len(wanted), len(rows), n_embd), and
    `progress(count)` with the decode's number of items (as `cvgen.extract.collect`)."""
    token_lists = [item.token_ids for item in items]
    decodes = plan_decodes(token_lists, n_batch=context.n_batch, n_seq=context.settings.n_seq)
    for decode in decodes:
        chosen = [items[index] for index in decode]
        states = context.run([item.token_ids for item in chosen], wanted=wanted)
        assert states is not None
        for target in sorted({item.target for item in chosen}):
            columns = [col for col, item in enumerate(chosen) if item.target == target]
            write(target, [chosen[col].row for col in columns], states[:, columns])
        if progress is not None:
            progress(len(chosen))


def check_steerable(context: LlamaContext, wanted: Sequence[int], probe: Sequence[int]) -> None:
    """Refuse (`EngineError`) a model whose graph does not give every wanted block's output,
    or whose blocks do not take a control vector; `probe` is any short prompt's token ids.

    Three probes: a vector on the first steerable block alone, then on the last alone, must
    each move that block's output by the vector (nothing before it is steered); vectors on
    every block at once must move every block's output."""
    model = context.model
    try:
        before = context.run([probe], wanted=wanted)
    except MissingBlocks as missing:
        raise EngineError(
            f"{model.info.path}: architecture {model.architecture!r}: llama.cpp's graph names "
            f"no output (l_out-N) for blocks {_ranges(missing.blocks)}; the llama.cpp engine "
            "cannot collect it (try --engine transformers)"
        ) from None
    assert before is not None
    steerable = [block for block in wanted if block >= 1]
    vectors = _probe_vectors(before, wanted, steerable)
    ignored: list[int] = []
    for block in sorted({steerable[0], steerable[-1]}):
        moved = _probe(context, wanted, probe, {block: vectors[block]}) - before
        error = moved[list(wanted).index(block), 0] - vectors[block]
        if np.linalg.norm(error) > PROBE_TOLERANCE * np.linalg.norm(vectors[block]):
            ignored.append(block)
    if not ignored:
        moved = _probe(context, wanted, probe, vectors) - before
        ignored = [
            block
            for block in steerable
            if np.linalg.norm(moved[list(wanted).index(block), 0])
            < 0.5 * np.linalg.norm(vectors[block])
        ]
    if ignored:
        raise EngineError(
            f"{model.info.path}: architecture {model.architecture!r} ignores control vectors "
            f"on blocks {_ranges(ignored)} (llama.cpp adds none there); a pack for it would "
            "not steer"
        )


def _probe(
    context: LlamaContext,
    wanted: Sequence[int],
    probe: Sequence[int],
    vectors: dict[int, np.ndarray],
) -> np.ndarray:
    """The states of `probe` with `vectors` set (cleared again afterwards)."""
    context.set_vectors(vectors)
    try:
        states = context.run([probe], wanted=wanted)
    finally:
        context.set_vectors(None)
    assert states is not None
    return states


def _probe_vectors(
    states: np.ndarray, wanted: Sequence[int], blocks: Sequence[int]
) -> dict[int, np.ndarray]:
    """A random vector per block, at a tenth of that block's state norm (norms vary 300-fold
    across blocks in some models)."""
    generator = np.random.default_rng(0)
    vectors = {}
    for block in blocks:
        state = states[list(wanted).index(block), 0]
        vector = generator.standard_normal(state.size).astype(np.float32)
        vectors[block] = vector * (
            0.1 * float(np.linalg.norm(state)) / float(np.linalg.norm(vector))
        )
    return vectors


def _ranges(blocks: Sequence[int]) -> str:
    """ "3-5, 9" for [3, 4, 5, 9]."""
    parts: list[str] = []
    ordered = sorted(set(blocks))
    start = previous = None
    for block in [*ordered, None]:
        if block is not None and previous is not None and block == previous + 1:
            previous = block
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = block
    return ", ".join(parts)
