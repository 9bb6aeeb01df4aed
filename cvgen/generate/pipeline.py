"""`generate_pack`: the one function that composes the stages into a pack.

    data -> sampler -> prompts -> collect (model, store) -> solve -> vectors -> pack

The stages never call each other; this module passes plain data between them.
"""

from __future__ import annotations

import logging
import time
from array import array as int_array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cvgen import __version__
from cvgen.common.errors import CvgenError
from cvgen.common.preflight import check_free_space, check_run_folders
from cvgen.data.shipped import (
    Axis,
    DataError,
    Stems,
    load_axis,
    load_stems,
    load_writing_prompts,
    prompt_location,
)
from cvgen.extract.chat import (
    PLAIN_FORMAT,
    check_system_turn,
    prompt_format,
    render_text,
    tokenize_texts,
)
from cvgen.extract.collect import CollectionSettings, WorkItem, run_collection
from cvgen.extract.decoder_blocks import (
    config_dimensions,
    context_length,
    describe_config,
    find_decoder_blocks,
)
from cvgen.extract.loading import (
    device_for_local_rank,
    gpus_for_process,
    input_device,
    load_causal_lm,
    load_config,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from cvgen.extract.model_source import ModelSource, resolve_model_source
from cvgen.extract.row_reuse import reuse_stored_rows
from cvgen.extract.sampler import (
    SamplePlan,
    axis_texts,
    baseline_text,
    draw_samples,
    max_distinct_triples,
)
from cvgen.extract.shard_descriptions import (
    ExpectedRun,
    ShardDescription,
    plan_digest,
    read_shard_descriptions,
    select_shards,
)
from cvgen.extract.shard_merge import MergedStates, open_shard_arrays
from cvgen.extract.shard_spec import ShardSpec
from cvgen.extract.store import BlockStates, StateArray, default_store_root, store_bytes_needed
from cvgen.extract.store_keys import ArrayFamily, content_key
from cvgen.generate.settings import GenerateSettings, select_blocks
from cvgen.llamacpp.binaries import llama_cpp_record
from cvgen.llamacpp.commands import CommandError, build_command, default_model_path
from cvgen.pack.page import PAGE_NAME, render_page
from cvgen.pack.writer import (
    PACK_FORMAT,
    PACK_FORMAT_VERSION,
    ROLES,
    SAMPLES_NAME,
    carried_presets,
    check_pack_target,
    render_pack_readme,
    vector_file_names,
    write_pack,
)
from cvgen.solve.blocks import solve_blocks
from cvgen.solve.direction import BlockDirection, SolverOptions

log = logging.getLogger("cvgen")

BASELINE = "baseline"


class GenerateError(CvgenError, RuntimeError):
    """The run cannot produce a pack (e.g. no block of an axis passed the solver)."""


@dataclass
class PackResult:
    """What `generate_pack` made: the pack folder, its manifest and run figures."""

    out: Path
    manifest: dict[str, Any]
    collected_prompts: int
    reused_prompts: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Inputs:
    """The loaded text data and the drawn samples of a run."""

    stems: Stems
    axes: list[Axis]
    prompts: tuple[str, ...]
    plan: SamplePlan


def _load_inputs(settings: GenerateSettings) -> _Inputs:
    stems = load_stems()
    axes = [load_axis(name) for name in settings.axes]
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise GenerateError(f"--axis: two axes share a name: {', '.join(names)}")
    prompts = load_writing_prompts(
        settings.prompts, split=settings.prompts_split, column=settings.prompts_column
    )
    _warn_repeated_triples(settings.samples, stems, len(prompts), axes)
    plan = draw_samples(
        settings.samples, stems=stems, n_prompts=len(prompts), axes=axes, seed=settings.seed
    )
    return _Inputs(stems, axes, prompts, plan)


def _warn_repeated_triples(samples: int, stems: Stems, n_prompts: int, axes: list[Axis]) -> None:
    """One warning when `samples` exceeds the distinct (stem, pair, prompt) triples of the
    axis that has the fewest: beyond them the sampler repeats triples."""
    axis = min(axes, key=lambda each: max_distinct_triples(stems, n_prompts, each))
    distinct = max_distinct_triples(stems, n_prompts, axis)
    if samples > distinct:
        log.warning(
            "--samples %d exceeds the %d distinct (stem, pair, prompt) triples of axis '%s' "
            "(%s x %s x %s): triples will repeat; add writing prompts (--prompts) or pairs "
            "for more distinct samples",
            samples,
            distinct,
            axis.name,
            _count(len(stems), "stem"),
            _count(n_prompts, "prompt"),
            _count(len(axis.pairs), "pair"),
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _system_texts(inputs: _Inputs) -> dict[str, list[str]]:
    """System texts of every array: "baseline", then "<axis>/negative", "<axis>/positive"."""
    rows = range(len(inputs.plan))
    texts = {BASELINE: [baseline_text(inputs.plan, inputs.stems, row) for row in rows]}
    for axis in inputs.axes:
        pairs = [axis_texts(inputs.plan, inputs.stems, axis, row) for row in rows]
        texts[f"{axis.name}/negative"] = [negative for negative, _ in pairs]
        texts[f"{axis.name}/positive"] = [positive for _, positive in pairs]
    return texts


def _samples_rows(inputs: _Inputs) -> list[dict[str, Any]]:
    rows = []
    for row in range(len(inputs.plan)):
        prompt_index = int(inputs.plan.prompt_index[row])
        rows.append(
            {
                "sample": row,
                "stem_index": int(inputs.plan.stem_index[row]),
                "stem": inputs.stems.stem(int(inputs.plan.stem_index[row])),
                "prompt_index": prompt_index,
                "prompt": inputs.prompts[prompt_index],
                "pairs": {
                    axis.name: int(inputs.plan.pair_index[axis.name][row]) for axis in inputs.axes
                },
            }
        )
    return rows


def _collect(
    settings: GenerateSettings,
    source: ModelSource,
    arrays: dict[str, StateArray],
    tokens: Mapping[str, Sequence[Sequence[int]]],
    stored_blocks: Sequence[int],
    pad_id: int,
    show_progress: bool,
    timings: dict[str, float],
    local_process: tuple[int, int] | None = None,
) -> int:
    """Run the model over every pending row of every array; return the number of prompts run.
    Records the seconds spent in `timings["load_model"]` and `timings["collect"]`.
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
    targets = list(arrays.values())
    prompts_per_sample = len(arrays)  # the baseline plus two per axis
    started = time.perf_counter()
    with tqdm(total=len(items), unit="prompt", desc="collecting", disable=not show_progress) as bar:

        def advance(count: int) -> None:
            bar.update(count)
            rate = bar.n / prompts_per_sample / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{rate:.2f} samples/s", refresh=False)

        run_collection(
            model,
            blocks,
            stored_blocks,
            items,
            settings=CollectionSettings(
                pad_id=pad_id, device=device, batch_tokens=settings.batch_tokens
            ),
            write=lambda target, rows, states: targets[target].write_rows(rows, states),
            progress=advance,
        )
    timings["collect"] = time.perf_counter() - started
    return len(items)


def _solve_axis(
    settings: GenerateSettings,
    axis: Axis,
    arrays: Mapping[str, BlockStates],
    stored_blocks: Sequence[int],
) -> dict[int, BlockDirection]:
    """Solve every steerable block of one axis: block -> direction (blocks with none left out).

    The first stored block is only the reference h_(k-1) of the first steerable one."""
    solved = solve_blocks(
        arrays[f"{axis.name}/negative"],
        arrays[f"{axis.name}/positive"],
        arrays[BASELINE],
        stored_blocks[1:],
        features=settings.features,
        method=settings.method,
        options=SolverOptions(tau=settings.tau, eigen_candidates=settings.eigen_candidates),
    )
    if not solved:
        raise GenerateError(
            f"axis '{axis.name}': no block passed the {settings.method} solver "
            f"(tau={settings.tau}); add samples or lower --tau"
        )
    return solved


def _file_metadata(
    settings: GenerateSettings, axis: Axis, role: str, model_name: str
) -> dict[str, Any]:
    class_name = {"debias": "debias", "negative": axis.classes[0], "positive": axis.classes[1]}[
        role
    ]
    return {
        "cvgen.version": __version__,
        "cvgen.axis": axis.name,
        "cvgen.class": class_name,
        "cvgen.role": role,
        "cvgen.method": settings.method,
        "cvgen.features": settings.features,
        "cvgen.samples_per_class": settings.samples,
        "cvgen.seed": settings.seed,
        "cvgen.model_name": model_name,
        "cvgen.suggested_scale": 1.0,
    }


def _render_all(inputs: _Inputs, tokenizer: Any, *, system_turn: bool) -> dict[str, list[str]]:
    """The chat-formatted prompt string of every row of every array."""
    return {
        name: [
            render_text(
                tokenizer,
                text,
                inputs.prompts[int(inputs.plan.prompt_index[row])],
                system_turn=system_turn,
            )
            for row, text in enumerate(texts)
        ]
        for name, texts in _system_texts(inputs).items()
    }


def _array_keys(
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


def _open_arrays(
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
    keys = _array_keys(
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


def _solve_into_manifest(
    settings: GenerateSettings,
    inputs: _Inputs,
    arrays: Mapping[str, BlockStates],
    stored_blocks: list[int],
    manifest: dict[str, Any],
    model_name: str,
) -> tuple[dict[str, dict[str, dict[int, np.ndarray]]], dict[str, dict[str, dict[str, Any]]]]:
    """Solve every axis; return the vectors and file metadata per axis and role, and record
    each axis's blocks and Fisher ratios in the manifest."""
    vectors: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    metadata: dict[str, dict[str, dict[str, Any]]] = {}
    for axis in inputs.axes:
        solved = _solve_axis(settings, axis, arrays, stored_blocks)
        vectors[axis.name] = {
            role: {block: getattr(direction, role) for block, direction in solved.items()}
            for role in ROLES
        }
        metadata[axis.name] = {
            role: _file_metadata(settings, axis, role, model_name) for role in ROLES
        }
        manifest["axes"][axis.name]["layers"] = sorted(solved)
        manifest["axes"][axis.name]["fisher_ratio"] = {
            str(block): round(direction.fisher_ratio, 4) for block, direction in solved.items()
        }
    return vectors, metadata


@dataclass
class _Run:
    """Everything a run knows before any weights are loaded: inputs, model facts, the
    manifest draft and the chat-formatted text of every row of every array."""

    settings: GenerateSettings
    inputs: _Inputs
    source: ModelSource
    n_embd: int
    stored_blocks: list[int]
    identity: str
    manifest: dict[str, Any]
    tokenizer: Any
    rendered: dict[str, list[str]]

    def dtype_name(self) -> str:
        device = resolve_device(self.settings.device)
        return str(resolve_dtype(self.settings.dtype, device)).removeprefix("torch.")


def _prepare(settings: GenerateSettings) -> _Run:
    inputs = _load_inputs(settings)
    source = resolve_model_source(settings.model)
    config = load_config(source, trust_remote_code=settings.trust_remote_code)
    n_layer, n_embd = config_dimensions(config, source)
    layers = select_blocks(n_layer, settings.skip_first, settings.skip_last)
    identity = source.identity(config)
    # built before any model work, so that bad class names fail fast
    manifest = _manifest(settings, source, config, n_layer, n_embd, layers, inputs, identity)
    tokenizer = load_tokenizer(source, trust_remote_code=settings.trust_remote_code)
    manifest["prompt_format"] = prompt_format(tokenizer)
    if manifest["prompt_format"] == PLAIN_FORMAT:
        log.warning(
            "%s has no chat template: its prompts are given as plain text, not chat turns "
            "(recorded as prompt_format: plain in pack.json)",
            source.spec,
        )
    if settings.system_message:
        check_system_turn(tokenizer, source.spec)
    _check_context(settings, inputs, tokenizer, context_length(config), source.spec)
    rendered = _render_all(inputs, tokenizer, system_turn=settings.system_message)
    return _Run(
        settings=settings,
        inputs=inputs,
        source=source,
        n_embd=n_embd,
        stored_blocks=[layers[0] - 1, *layers],
        identity=identity,
        manifest=manifest,
        tokenizer=tokenizer,
        rendered=rendered,
    )


def _longest_system_text(inputs: _Inputs) -> str:
    """The longest system text any row can have: the longest stem with the longest
    continuation of any axis (a persona is `"{stem} {continuation}."`)."""
    stem = f"{max(inputs.stems.pre, key=len)} {max(inputs.stems.post, key=len)}"
    sides = [side for axis in inputs.axes for pair in axis.pairs for side in pair]
    return f"{stem} {max(sides, key=len)}."


def _check_context(
    settings: GenerateSettings,
    inputs: _Inputs,
    tokenizer: Any,
    context: int | None,
    model: str,
) -> None:
    """Refuse, naming the prompts file and line, a drawn writing prompt whose longest text
    (the longest persona, the chat template) has more tokens than the model's context.

    Only a text of more UTF-8 bytes than the context can have more tokens than it (a token
    covers at least one byte, a special token many; the plain fallback adds one BOS), so only
    the drawn prompts that long are rendered once and tokenized."""
    if context is None:
        return
    persona = _longest_system_text(inputs)
    frame = render_text(tokenizer, persona, "", system_turn=settings.system_message)
    overhead = len(frame.encode("utf-8")) + 1
    for index in np.unique(inputs.plan.prompt_index).tolist():
        prompt = inputs.prompts[index]
        if len(prompt.encode("utf-8")) + overhead <= context:
            continue  # too few bytes to make more tokens than the context
        text = render_text(tokenizer, persona, prompt, system_turn=settings.system_message)
        count = len(tokenize_texts(tokenizer, [text])[0])
        if count > context:
            where = prompt_location(settings.prompts, prompt, index)
            raise DataError(
                f"{where}: this writing prompt makes a text of {count} tokens (with the persona "
                f"and the chat template), more than the {context} tokens of {model}'s context; "
                "shorten it or remove it"
            )


TOKENIZE_CHUNK = 1024  # texts tokenized at once: bounds the tokenizer's transient memory


def _tokenize_pending(
    run: _Run, rendered: Mapping[str, list[str]], arrays: Mapping[str, StateArray]
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


def _write_solved_pack(
    run: _Run, arrays: Mapping[str, BlockStates], out: Path, *, force: bool
) -> None:
    """Solve every axis from `arrays` and write the pack at `out` (keeping the presets of a
    pack already there whose axes are all in this one; `force` as in `check_pack_target`)."""
    run.manifest["presets"] = carried_presets(out, run.manifest["axes"])
    vectors, metadata = _solve_into_manifest(
        run.settings, run.inputs, arrays, run.stored_blocks, run.manifest, run.source.name
    )
    example = example_command(run.manifest, out)
    readme = render_pack_readme(run.manifest, example)
    page = render_page(
        run.manifest,
        model_path=default_model_path(run.manifest),
        vector_dir=str(out),
        pack_label=str(out),
    )
    write_pack(
        out,
        run.manifest,
        vectors,
        metadata,
        _samples_rows(run.inputs),
        readme,
        {PAGE_NAME: page},
        force=force,
    )


def _collect_run(
    settings: GenerateSettings, store_root: Path, show_progress: bool
) -> tuple[_Run, dict[str, StateArray], int, dict[str, float]]:
    """Prepare the run, open its store arrays and collect what they miss: (run, arrays,
    prompts collected, timings)."""
    clock = time.perf_counter()
    resolve_device(settings.device)  # fail fast on an unavailable device
    run = _prepare(settings)
    arrays = _open_arrays(
        run.rendered,
        root=store_root,
        identity=run.identity,
        dtype_name=run.dtype_name(),
        stored_blocks=run.stored_blocks,
        width=run.n_embd,
        quantization=settings.load_in,
    )
    tokens = _tokenize_pending(run, run.rendered, arrays)
    timings = {"prepare": time.perf_counter() - clock}
    collected = _collect(
        settings,
        run.source,
        arrays,
        tokens,
        run.stored_blocks,
        _pad_id(run.tokenizer),
        show_progress,
        timings,
    )
    return run, arrays, collected, timings


def generate_pack(
    settings: GenerateSettings,
    out: Path,
    *,
    store_root: Path | None = None,
    show_progress: bool = True,
    force: bool = False,
) -> PackResult:
    """Make a pack at `out` for `settings` on this machine: sample, collect (reusing stored
    states), solve, write the GGUF files, `pack.json`, `samples.jsonl`, the pack's README.md and `index.html`
    (the command-line page). The same as `collect_shard` for shard 0/1 followed by `solve_pack`.

    Before any model work, `out` must be absent, empty or a cvgen pack holding only cvgen's
    files (with `force`, any cvgen pack: its other files are deleted with it), and the folders
    must pass `check_run_folders`."""
    out = check_pack_target(out, force=force)
    root = store_root or default_store_root()
    check_run_folders(out=out, store=root, store_option="--cache-dir")
    run, arrays, collected, timings = _collect_run(settings, root, show_progress)
    clock = time.perf_counter()
    _write_solved_pack(run, arrays, out, force=force)
    timings["solve_and_write"] = time.perf_counter() - clock
    total = sum(len(texts) for texts in run.rendered.values())
    return PackResult(
        out=out,
        manifest=run.manifest,
        collected_prompts=collected,
        reused_prompts=total - collected,
        timings=timings,
    )


@dataclass
class CollectedStates:
    """A run's stored states, complete: one array per list of texts ("baseline",
    "<axis>/negative", "<axis>/positive"), each (stored blocks, samples, width)."""

    arrays: dict[str, StateArray]
    stored_blocks: list[int]
    axes: list[Axis]
    n_layer: int
    collected_prompts: int
    timings: dict[str, float] = field(default_factory=dict)


def collected_states(
    settings: GenerateSettings, *, store_root: Path | None = None, show_progress: bool = True
) -> CollectedStates:
    """Collect whatever of the run `settings` is missing from the store (loading the weights
    only then), and return its arrays opened, with the stored blocks (the block before the
    first kept one, then every kept block) and the axes. Solves and writes nothing: for
    callers that solve the states their own way (e.g. a comparison of methods)."""
    root = store_root or default_store_root()
    check_run_folders(out=None, store=root, store_option="--cache-dir")
    run, arrays, collected, timings = _collect_run(settings, root, show_progress)
    return CollectedStates(
        arrays=arrays,
        stored_blocks=list(run.stored_blocks),
        axes=list(run.inputs.axes),
        n_layer=int(run.manifest["model"]["n_layer"]),
        collected_prompts=collected,
        timings=timings,
    )


@dataclass
class ShardResult:
    """What `collect_shard` did: the shard, its description file and run figures."""

    shard: ShardSpec
    description: Path
    samples: range
    collected_prompts: int
    reused_prompts: int
    timings: dict[str, float] = field(default_factory=dict)


def collect_shard(
    settings: GenerateSettings,
    shard: ShardSpec,
    *,
    store_root: Path | None = None,
    show_progress: bool = True,
    local_process: tuple[int, int] | None = None,
) -> ShardResult:
    """Collect shard `shard` of the run `settings` into the store: the states of sample rows
    `shard.rows(samples)` of every array, plus `<store>/shards/<key>.json` describing them.
    A re-run reuses and resumes it like `generate_pack`. `local_process` is torchrun's
    (LOCAL_RANK, LOCAL_WORLD_SIZE), which picks this process's GPU(s)."""
    clock = time.perf_counter()
    resolve_device(settings.device)
    root = store_root or default_store_root()
    check_run_folders(out=None, store=root, store_option="--store")
    run = _prepare(settings)
    rows = shard.rows(len(run.inputs.plan))
    subset = {name: [texts[row] for row in rows] for name, texts in run.rendered.items()}
    dtype_name = run.dtype_name()
    arrays = (
        _open_arrays(
            subset,
            root=root,
            identity=run.identity,
            dtype_name=dtype_name,
            stored_blocks=run.stored_blocks,
            width=run.n_embd,
            quantization=settings.load_in,
            shard=shard,
        )
        if len(rows)
        else {}
    )
    description = ShardDescription(
        spec=shard,
        samples=tuple(rows),
        plan_samples=len(run.inputs.plan),
        plan_digest=plan_digest(run.rendered),
        model_identity=run.identity,
        model_name=run.source.name,
        dtype=dtype_name,
        quantization=settings.load_in,
        blocks=tuple(run.stored_blocks),
        width=run.n_embd,
        arrays={name: array.key for name, array in arrays.items()},
        settings=settings.to_dict(),
    ).write(root)
    tokens = _tokenize_pending(run, subset, arrays)
    timings = {"prepare": time.perf_counter() - clock}
    collected = _collect(
        settings,
        run.source,
        arrays,
        tokens,
        run.stored_blocks,
        _pad_id(run.tokenizer),
        show_progress,
        timings,
        local_process=local_process,
    )
    total = sum(len(texts) for texts in subset.values()) if len(rows) else 0
    return ShardResult(shard, description, rows, collected, total - collected, timings)


def solve_pack(
    settings: GenerateSettings,
    out: Path,
    *,
    store_root: Path | None = None,
    force: bool = False,
) -> PackResult:
    """Write the pack of `settings` at `out` from shards collected by `collect_shard`
    (any processes or machines, any split) into the store `store_root`. Needs no weights.

    Refuses, with a one-line `ShardError`, a set of shards that misses or repeats a sample,
    holds an incomplete shard, or was collected with another model, dtype, quantisation,
    blocks or prompt texts. With --dtype auto any one dtype of the shards is accepted."""
    clock = time.perf_counter()
    out = check_pack_target(out, force=force)
    root = store_root or default_store_root()
    check_run_folders(out=out, store=root, store_option="--store", store_written=False)
    run = _prepare(settings)
    expected = ExpectedRun(
        model_identity=run.identity,
        model_name=run.source.name,
        dtype=None if settings.dtype == "auto" else settings.dtype,
        quantization=settings.load_in,
        blocks=tuple(run.stored_blocks),
        plan_digest=plan_digest(run.rendered),
        plan_samples=len(run.inputs.plan),
        settings=settings.to_dict(),
    )
    shards = select_shards(read_shard_descriptions(root), expected, root=root)
    merged = {
        name: MergedStates(n=len(run.inputs.plan), width=run.n_embd, parts=[])
        for name in run.rendered
    }
    for shard in shards:
        subset = {
            name: [texts[row] for row in shard.samples] for name, texts in run.rendered.items()
        }
        keys = (
            _array_keys(
                subset,
                identity=run.identity,
                dtype_name=shard.dtype,
                stored_blocks=run.stored_blocks,
                quantization=settings.load_in,
                shard=shard.spec,
            )
            if shard.samples
            else {}
        )
        for name, array in open_shard_arrays(shard, keys, root=root).items():
            merged[name].parts.append((shard.samples, array))
    run.manifest["shards"] = [str(shard.spec) for shard in shards]
    timings = {"prepare": time.perf_counter() - clock}
    clock = time.perf_counter()
    _write_solved_pack(run, merged, out, force=force)
    timings["solve_and_write"] = time.perf_counter() - clock
    total = sum(len(texts) for texts in run.rendered.values())
    return PackResult(
        out=out, manifest=run.manifest, collected_prompts=0, reused_prompts=total, timings=timings
    )


def example_command(manifest: dict[str, Any], out: Path) -> str:
    """A llama-server command loading the first axis's positive pole at +0.5. When the pack's
    path holds a character that the current FILE:SCALE syntax cannot carry (':' or ','), the
    example uses the legacy two-argument syntax instead."""
    first_axis = next(iter(manifest["axes"]))
    arguments: dict[str, Any] = dict(
        target="llama-server", model_path=default_model_path(manifest), vector_dir=str(out)
    )
    try:
        return build_command(manifest, [(first_axis, 0.5)], **arguments)
    except CommandError:
        legacy = build_command(manifest, [(first_axis, 0.5)], legacy_syntax=True, **arguments)
        return (
            f"# legacy llama.cpp syntax: the path {out} holds ':' or ',', which the current\n"
            "# FILE:SCALE syntax cannot carry; move the pack or use cvgen commands --vector-dir\n"
            f"{legacy}"
        )


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _manifest(
    settings: GenerateSettings,
    source: ModelSource,
    config: Any,
    n_layer: int,
    n_embd: int,
    layers: list[int],
    inputs: _Inputs,
    identity: str,
) -> dict[str, Any]:
    return {
        "format": PACK_FORMAT,
        "format_version": PACK_FORMAT_VERSION,
        "cvgen_version": __version__,
        "model": {
            "name": source.name,
            "slug": source.slug,
            "source": source.location,
            "spec": settings.model,
            "kind": source.kind,
            "identity": identity,
            "hint": describe_config(config)["architecture"],
            "n_layer": n_layer,
            "n_embd": n_embd,
            **describe_config(config),
        },
        "llama_cpp": llama_cpp_record(),
        "settings": settings.to_dict(),
        "settings_digest": settings.digest(),
        "layers": layers,
        "layer_convention": "direction.k = output of block k (0-based); block 0 is never written",
        "axes": {
            axis.name: {
                "classes": list(axis.classes),
                "description": axis.description,
                "pairs": len(axis.pairs),
                "source": axis.source,
                "files": vector_file_names(
                    source.slug, axis.name, axis.classes, source=axis.source
                ),
                "suggested_scale": {"negative": 1.0, "positive": 1.0, "calibrated": False},
            }
            for axis in inputs.axes
        },
        "samples": {
            "file": SAMPLES_NAME,
            "count": len(inputs.plan),
            "prompts": len(inputs.prompts),
            "stems": len(inputs.stems),
        },
        "presets": {},
    }
