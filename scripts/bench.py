#!/usr/bin/env python
"""cvgen's benchmark: collection, memory, pack and solver, measured in ONE run.

    python scripts/bench.py                      # the real SmolLM2-135M GGUF, about 6 min on 2 cores
    python scripts/bench.py --smoke --model DIR  # seconds, on a pico model (the tests run this)

Collection runs the same prompts three ways and prints tokens/s (prompt tokens per second) for each:

  (a) the reference approach: batch size 1, the full model with output_hidden_states=True, logits
      computed, every state kept as a Python list of tensors;
  (b) cvgen's collector (`cvgen.extract.collect.run_collection`, writing to the memory-mapped store);
  (c) the practical limit: a bare batched forward of the base model truncated after the last needed
      block, nothing captured.

Memory runs cvgen's collector in two child processes at sample counts 8x apart and reports each
child's peak RSS. Pack times an 8-axis pack (shared baseline, one model load) against eight
single-axis runs done reference-style (each loading the model, batch 1). Solver times cvgen's
approximate cross-covariance solver (--eigen-candidates 16: ARPACK, both ends of the spectrum)
against the exact default (every eigenvector, a full eigh when 2n > d), on synthetic data with a
planted axis. Figures are printed as a table; `--json PATH` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvgen.data.shipped import shipped_axis_names
from cvgen.extract.collect import CollectionSettings, plan_batches
from cvgen.extract.decoder_blocks import find_decoder_blocks
from cvgen.extract.loading import (
    load_config,
    resolve_device,
    resolve_dtype,
)
from cvgen.extract.model_source import resolve_model_source
from cvgen.extract.prefix_cache import prepare_prefix
from cvgen.generate.pipeline import generate_pack
from cvgen.generate.settings import GenerateSettings
from cvgen.solve.direction import SolverOptions
from cvgen.solve.methods import solve_cross_covariance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workload import (  # noqa: E402  (scripts/bench_workload.py, shared with bench_engine)
    DEFAULT_MODEL,
    Workload,
    build_workload,
    collect_cvgen,
    load_model,
    synchronize,
    timed,
)

MEMORY_FACTOR = 8


# --- setup ---------------------------------------------------------------------------------


def block_parameters(blocks: torch.nn.ModuleList, upto: int) -> int:
    """Parameters of blocks 0..upto (weights that every token multiplies)."""
    return sum(p.numel() for block in blocks[: upto + 1] for p in block.parameters())


def attention_width(model: torch.nn.Module) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads * int(head_dim)


def forward_flops(
    params: int, attn_width: int, layers: int, spans: Sequence[tuple[int, int]]
) -> float:
    """FLOPs of running tokens start..end-1 of each (start, end) span through `layers` blocks:
    2 * params per token, plus 4 * attn_width * (keys attended) per token and block for the
    scores and the weighted sum."""
    tokens = sum(end - start for start, end in spans)
    keys = sum((end * (end + 1) - start * (start + 1)) // 2 for start, end in spans)
    return 2.0 * params * tokens + 4.0 * attn_width * layers * keys


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Token positions a batched forward computes: each batch padded to its longest prompt."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def matmul_peak(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int) -> float:
    """Best GFLOP/s of a (m, k) @ (k, n) matmul over a few repeats: the machine's peak for
    matrices shaped like the model's."""
    left = torch.randn(m, k, device=device, dtype=dtype)
    right = torch.randn(k, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        timing: dict[str, float] = {}
        with timed(device, timing, "t"):
            for _ in range(5):
                torch.mm(left, right)
        best = min(best, timing["t"] / 5)
    return 2.0 * m * k * n / best / 1e9


# --- the three collection routes -----------------------------------------------------------


@torch.inference_mode()
def collect_reference(
    model: torch.nn.Module, token_ids: Sequence[Sequence[int]], device: torch.device
) -> list[list[torch.Tensor]]:
    """(a) One prompt at a time through the whole model, logits computed, every hidden state
    kept: returns per prompt the list [embeddings, block 0, ..., last block (final-normed)] of
    last-token states as tensors."""
    kept: list[list[torch.Tensor]] = []
    for ids in token_ids:
        output = model(
            input_ids=torch.tensor([list(ids)], device=device), output_hidden_states=True
        )
        assert output.logits is not None
        kept.append([hidden[0, -1].float().cpu() for hidden in output.hidden_states])
    return kept


def reference_states(kept: list[list[torch.Tensor]], blocks: Sequence[int]) -> np.ndarray:
    """(len(blocks), n, d) float32 from the reference's lists: block k's output is hidden
    state k + 1 (valid for every block but the last, whose state the model normalises)."""
    return np.stack([np.stack([row[k + 1].numpy() for row in kept]) for k in blocks])


@contextmanager
def truncated(blocks: torch.nn.ModuleList, last: int) -> Iterator[None]:
    """Remove the blocks after `last` for the duration (the model loops over its list)."""
    removed = list(blocks[last + 1 :])
    del blocks[last + 1 :]
    try:
        yield
    finally:
        blocks.extend(removed)


@torch.inference_mode()
def bare_forward(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    work: Workload,
    *,
    device: torch.device,
    batch_tokens: int,
    max_padding: float,
) -> None:
    """(c) The base model, truncated after the last needed block, over the same length-bucketed
    batches, with nothing captured."""
    base = getattr(model, "base_model", model)
    lengths = [len(ids) for ids in work.token_ids]
    with truncated(blocks, max(work.stored_blocks)):
        for batch in plan_batches(lengths, batch_tokens=batch_tokens, max_padding=max_padding):
            longest = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), longest), work.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, index in enumerate(batch):
                ids[row, : lengths[index]] = torch.tensor(work.token_ids[index])
                mask[row, : lengths[index]] = 1
            base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    synchronize(device)


def collection_section(
    model: torch.nn.Module, work: Workload, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    blocks = find_decoder_blocks(model, work.n_layer)
    stop = max(work.stored_blocks)
    tokens = sum(len(ids) for ids in work.token_ids)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cvgen-bench-") as folder:
        # warm-up: one small batch each way, so that no route pays first-call costs
        warm = Workload(work.texts[:2], work.token_ids[:2], *_facts(work))

        def run_cvgen(workload: Workload, *, reuse_prefix: bool) -> Any:
            return collect_cvgen(
                model,
                blocks,
                workload,
                device=device,
                batch_tokens=args.batch_tokens,
                store=Path(folder),
                reuse_prefix=reuse_prefix,
                max_padding=args.max_padding,
            )

        run_cvgen(warm, reuse_prefix=True)
        with timed(device, seconds, "reference"):
            kept = collect_reference(model, work.token_ids, device)
        with timed(device, seconds, "cvgen"):
            ours = run_cvgen(work, reuse_prefix=True)
        with timed(device, seconds, "cvgen_no_prefix"):
            plain = run_cvgen(work, reuse_prefix=False)
    with timed(device, seconds, "bare"):
        bare_forward(
            model,
            blocks,
            work,
            device=device,
            batch_tokens=args.batch_tokens,
            max_padding=args.max_padding,
        )
    # agreement of the states, on every block but the last stored (always < the model's last)
    compared = [k for k in work.stored_blocks if k < work.n_layer - 1]
    reference = reference_states(kept, compared)
    positions = [work.stored_blocks.index(k) for k in compared]
    scale = float(np.abs(reference).max())
    agreement = {
        "cvgen_vs_reference": float(np.abs(ours[positions] - reference).max() / scale),
        "no_prefix_vs_reference": float(np.abs(plain[positions] - reference).max() / scale),
    }
    prefix = _prefix_length(model, blocks, work, device)
    params = block_parameters(blocks, stop)
    width = attention_width(model)
    full_spans = [(0, len(ids)) for ids in work.token_ids]
    prefix_spans = [(0, prefix)] + [(prefix, len(ids)) for ids in work.token_ids]
    lengths = [len(ids) for ids in work.token_ids]
    suffixes = [length - prefix for length in lengths]
    plan = {"batch_tokens": args.batch_tokens, "max_padding": args.max_padding}
    computed = {
        "reference": sum(lengths),
        "cvgen": prefix + padded_tokens(suffixes, plan_batches(suffixes, **plan)),
        "cvgen_no_prefix": padded_tokens(lengths, plan_batches(lengths, **plan)),
        "bare": padded_tokens(lengths, plan_batches(lengths, **plan)),
    }
    head = model.get_output_embeddings()
    head_params = 0 if head is None else head.weight.numel()
    all_params = block_parameters(blocks, work.n_layer - 1) + head_params
    flops = {
        "reference": forward_flops(all_params, width, work.n_layer, full_spans),
        "bare": forward_flops(params, width, stop + 1, full_spans),
        "cvgen": forward_flops(params, width, stop + 1, prefix_spans if prefix else full_spans),
        "cvgen_no_prefix": forward_flops(params, width, stop + 1, full_spans),
    }
    rates = {name: tokens / value for name, value in seconds.items()}
    return {
        "prompts": len(work.token_ids),
        "prompt_tokens": tokens,
        "shared_prefix_tokens": prefix,
        "seconds": seconds,
        "computed_tokens": computed,
        "tokens_per_s": rates,
        "samples_per_s": {name: len(work.token_ids) / 3 / value for name, value in seconds.items()},
        "ratio_b_over_a": rates["cvgen"] / rates["reference"],
        "ratio_b_no_prefix_over_a": rates["cvgen_no_prefix"] / rates["reference"],
        "capture_overhead": (rates["bare"] - rates["cvgen"]) / rates["bare"],
        "capture_overhead_no_prefix": (rates["bare"] - rates["cvgen_no_prefix"]) / rates["bare"],
        "gflops": {name: flops[name] / seconds[name] / 1e9 for name in flops},
        "max_relative_state_difference": agreement,
    }


def _facts(work: Workload) -> tuple[list[int], int, int, int]:
    return work.stored_blocks, work.n_layer, work.width, work.pad_id


def _prefix_length(
    model: torch.nn.Module, blocks: torch.nn.ModuleList, work: Workload, device: torch.device
) -> int:
    """The shared prefix that the collector reuses (0 when it does not)."""
    prefix = prepare_prefix(
        model, blocks, work.stored_blocks, work.token_ids, pad_id=work.pad_id, device=device
    )
    return 0 if prefix is None else len(prefix.token_ids)


# --- memory --------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _vm_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_child(args: argparse.Namespace) -> None:
    """Run in a child process: load the model, collect `args.samples` samples into a store at
    `args.store`, print peak RSS figures as JSON."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    work = build_workload(args.model, samples=args.samples, axis=args.axis)
    model = load_model(args.model, device, dtype)
    blocks = find_decoder_blocks(model, work.n_layer)
    loaded_peak = _vm_hwm_kib()
    resettable = _reset_peak_rss()
    started = time.perf_counter()
    collect_cvgen(
        model,
        blocks,
        work,
        device=device,
        batch_tokens=args.batch_tokens,
        store=Path(args.store),
        reuse_prefix=True,
        max_padding=args.max_padding,
    )
    seconds = time.perf_counter() - started
    store_bytes = sum(path.stat().st_size for path in Path(args.store).glob("*.npy"))
    print(
        json.dumps(
            {
                "samples": args.samples,
                "prompts": len(work.token_ids),
                "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_after_load_mib": None if loaded_peak is None else loaded_peak / 1024,
                "collection_peak_mib": (_vm_hwm_kib() or 0) / 1024 if resettable else None,
                "store_mib": store_bytes / 2**20,
                "collect_seconds": seconds,
            }
        )
    )


def memory_section(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for samples in (args.memory_samples, args.memory_samples * MEMORY_FACTOR):
        with tempfile.TemporaryDirectory(prefix="cvgen-bench-store-") as store:
            command = [
                sys.executable,
                __file__,
                "--memory-child",
                "--model",
                args.model,
                "--samples",
                str(samples),
                "--axis",
                args.axis,
                "--store",
                store,
                "--device",
                args.device,
                "--dtype",
                args.dtype,
                "--batch-tokens",
                str(args.memory_batch_tokens),
                "--max-padding",
                str(args.max_padding),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"memory child failed:\n{done.stderr[-2000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = results
    growth = large["max_rss_mib"] / small["max_rss_mib"] - 1
    section: dict[str, Any] = {"runs": results, "max_rss_growth": growth}
    if small["collection_peak_mib"] and large["collection_peak_mib"]:
        section["collection_peak_growth"] = (
            large["collection_peak_mib"] / small["collection_peak_mib"] - 1
        )
    return section


# --- pack ----------------------------------------------------------------------------------


def pack_section(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """An 8-axis pack (one model load, shared baseline) vs eight reference-style runs."""
    axes = shipped_axis_names()[:8]
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cvgen-bench-pack-") as folder:
        settings = GenerateSettings(
            model=args.model,
            axes=tuple(axes),
            samples=args.pack_samples,
            device=args.device,
            dtype=args.dtype,
            batch_tokens=args.batch_tokens,
            tau=0.0,
        )
        with timed(device, seconds, "pack"):
            generate_pack(
                settings, Path(folder) / "pack", store_root=Path(folder) / "s", show_progress=False
            )
    per_axis = []
    with timed(device, seconds, "reference_runs"):
        for axis in axes:
            start = time.perf_counter()
            work = build_workload(args.model, samples=args.pack_samples, axis=axis)
            model = load_model(args.model, device, dtype)
            kept = collect_reference(model, work.token_ids, device)
            solve_reference_style(kept, work)
            del model
            per_axis.append(time.perf_counter() - start)
    return {
        "axes": len(axes),
        "samples_per_class": args.pack_samples,
        "seconds": seconds,
        "reference_run_seconds": per_axis,
        "ratio": seconds["reference_runs"] / seconds["pack"],
    }


def solve_reference_style(kept: list[list[torch.Tensor]], work: Workload) -> None:
    """Per block: deltas, differences from the baseline, and the full-eigh solver."""
    states = reference_states(kept, work.stored_blocks)
    for position in range(1, states.shape[0]):
        delta = states[position] - states[position - 1]
        base, negative, positive = delta[0::3], delta[1::3], delta[2::3]
        eigh_cross_covariance(negative - base, positive - base, SolverOptions(tau=0.0))


# --- solver --------------------------------------------------------------------------------


def eigh_cross_covariance(a: np.ndarray, b: np.ndarray, options: SolverOptions) -> Any:
    """cvgen's cross-covariance method, exact: every eigenvector of M scored (a full eigh
    when 2n > d), whatever `options.eigen_candidates` says."""
    return solve_cross_covariance(a, b, SolverOptions(tau=options.tau, eigen_candidates=0))


def planted_data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired differences A, B (n, d) with a planted unit axis u: the negative class moves
    along -u, the positive along +u, both with a shared random shift and isotropic noise."""
    rng = np.random.default_rng(seed)
    axis = rng.standard_normal(d)
    axis /= np.linalg.norm(axis)
    shared = rng.standard_normal((n, d)) * 0.5
    strength = 3.0 * (1 + 0.2 * rng.standard_normal((n, 1)))
    a = shared + rng.standard_normal((n, d)) - strength * axis
    b = shared + rng.standard_normal((n, d)) + strength * axis
    return a.astype(np.float32), b.astype(np.float32), axis


# --eigen-candidates of the approximate solver the bench times against the exact one.
APPROXIMATE_CANDIDATES = 16


def solver_section(dims: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    options = SolverOptions(eigen_candidates=APPROXIMATE_CANDIDATES)
    for d in dims:
        a, b, axis = planted_data(d, d, seed=d)
        seconds: dict[str, float] = {}
        cpu = torch.device("cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with timed(cpu, seconds, "cvgen"):
                ours = solve_cross_covariance(a, b, options)
            with timed(cpu, seconds, "eigh"):
                full = eigh_cross_covariance(a, b, options)
        row: dict[str, Any] = {"d": d, "n": d, "seconds": seconds}
        row["speedup"] = seconds["eigh"] / seconds["cvgen"]
        if ours is None or full is None:
            row["abs_cos"] = None
        else:
            row["abs_cos"] = float(abs(ours.direction.astype(np.float64) @ full.direction))
            row["abs_cos_planted"] = float(abs(ours.direction.astype(np.float64) @ axis))
        rows.append(row)
    return rows


# --- report --------------------------------------------------------------------------------


# --- eval: the engine scorer against the llama-server path ------------------------------------


def _eval_pack(args: argparse.Namespace, scratch: Path) -> Path:
    """A one-axis pack of `args.axis` for the real model: `--eval-pack` copied, else generated
    (`--eval-samples` samples, the default engine)."""
    import shutil

    if args.eval_pack:
        target = scratch / "source-pack"
        shutil.copytree(args.eval_pack, target)
        return target
    settings = GenerateSettings(model=args.model, axes=(args.axis,), samples=args.eval_samples)
    generate_pack(settings, scratch / "source-pack", store_root=scratch / "store")
    return scratch / "source-pack"


def _open_eval_backend(kind: str, args: argparse.Namespace) -> Any:
    from cvgen.eval.pack_eval import ModelChoice, open_backend
    from cvgen.eval.settings import EvalSettings

    choice = ModelChoice(model=args.model, backend=kind, threads=args.eval_threads)
    return open_backend(kind, args.model, settings=EvalSettings(), choice=choice)


def time_steered_configurations(kind: str, pack: Path, args: argparse.Namespace) -> dict:
    """Seconds per steered configuration on backend `kind` with `cvgen eval`'s defaults: the
    unsteered reference first (not timed per configuration), then `--eval-configs` sweep
    configurations of the axis (probes, KL and generations, session start included)."""
    from cvgen.eval.controls import axis_files
    from cvgen.eval.inputs import prepare_inputs
    from cvgen.eval.measurement import measure, neutral_scores
    from cvgen.eval.settings import EvalSettings
    from cvgen.pack.manifest import load_manifest

    settings = EvalSettings()
    manifest = load_manifest(pack)
    files = axis_files(pack, manifest, args.axis, controls_dir=None, seed=0)
    clock = time.perf_counter()
    backend = _open_eval_backend(kind, args)
    try:
        opened = time.perf_counter() - clock
        inputs = prepare_inputs(backend, {args.axis: manifest.axes[args.axis].classes}, settings)
        with backend.session(files.steering("axis", 0.0)) as session:
            reference = neutral_scores(session, inputs)
        scales = [scale for scale in settings.scales if scale != 0][: args.eval_configs]
        seconds = []
        for scale in scales:
            clock = time.perf_counter()
            with backend.session(files.steering("axis", scale)) as session:
                measure(
                    session,
                    inputs,
                    settings,
                    probe_pairs=inputs.probe_ids[args.axis],
                    reference=reference,
                    generate=True,
                )
            seconds.append(time.perf_counter() - clock)
    finally:
        backend.close()
    return {"open_seconds": opened, "scales": scales, "seconds": seconds}


def time_full_eval(kind: str, pack: Path, scratch: Path, args: argparse.Namespace) -> float:
    """Wall seconds of a default `cvgen eval` of a copy of `pack` on backend `kind`."""
    import shutil

    from cvgen.eval.pack_eval import ModelChoice, evaluate_pack

    target = scratch / f"eval-{kind}"
    shutil.copytree(pack, target)
    choice = ModelChoice(model=args.model, backend=kind, threads=args.eval_threads)
    clock = time.perf_counter()
    evaluate_pack(target, choice=choice, progress=False)
    return time.perf_counter() - clock


def eval_section(args: argparse.Namespace) -> dict[str, Any]:
    """The engine (`--backend llama.cpp`) against the server path (`--backend llama-server`):
    seconds per steered configuration, side by side on the same pack, probes and model, and
    (unless `--eval-no-full`) the wall time of a whole default `cvgen eval` on each."""
    with tempfile.TemporaryDirectory(prefix="cvgen-bench-eval-") as folder:
        scratch = Path(folder)
        pack = _eval_pack(args, scratch)
        result: dict[str, Any] = {"axis": args.axis, "threads": args.eval_threads}
        result["per_configuration"] = {
            kind: time_steered_configurations(kind, pack, args)
            for kind in ("llama-server", "llama.cpp")
        }
        means = {
            kind: float(np.mean(run["seconds"]))
            for kind, run in result["per_configuration"].items()
        }
        result["seconds_per_configuration"] = means
        result["ratio"] = means["llama-server"] / means["llama.cpp"]
        if not args.eval_no_full:
            result["full_eval_seconds"] = {
                kind: time_full_eval(kind, pack, scratch, args)
                for kind in ("llama-server", "llama.cpp")
            }
    return result


def render_eval(e: dict[str, Any]) -> list[str]:
    """The eval section's lines."""
    runs = e["per_configuration"]
    lines = [
        "",
        f"Eval: axis {e['axis']}, cvgen eval's defaults, threads {e['threads'] or 'default'}; "
        "seconds per steered configuration (probes + KL + generations, session start included)",
    ]
    for kind, label in (("llama-server", "llama-server, one per config"), ("llama.cpp", "engine")):
        run = runs[kind]
        each = ", ".join(
            f"{s:+g}: {t:.1f}" for s, t in zip(run["scales"], run["seconds"], strict=True)
        )
        lines.append(
            f"  {label:<30}{e['seconds_per_configuration'][kind]:>8.1f} s  ({each}; "
            f"open {run['open_seconds']:.1f} s)"
        )
    lines.append(f"  ratio {e['ratio']:.1f}x   [target >= 5x: {_target(e['ratio'] >= 5)}]")
    if "full_eval_seconds" in e:
        full = e["full_eval_seconds"]
        lines.append(
            f"  default cvgen eval of the one-axis pack: llama-server {full['llama-server']:.0f} s, "
            f"engine {full['llama.cpp']:.0f} s ({full['llama-server'] / full['llama.cpp']:.1f}x)"
        )
    return lines


def _target(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def render(results: dict[str, Any]) -> str:
    lines = [
        f"cvgen bench  model={results['model']}  device={results['device']}  "
        f"dtype={results['dtype']}  threads={results['threads']}",
    ]
    if "matmul_shape" in results:
        lines.append(
            f"matmul peak ({results['matmul_shape']}): {results['matmul_peak_gflops']:.1f} GFLOP/s"
        )
    if "collection" in results:
        c = results["collection"]
        r, s, g = c["tokens_per_s"], c["seconds"], c["gflops"]
        peak = results["matmul_peak_gflops"]
        lines += [
            "",
            f"Collection: {c['prompts']} prompts, {c['prompt_tokens']} prompt tokens, "
            f"shared prefix {c['shared_prefix_tokens']} tokens",
            f"  {'route':<40}{'seconds':>9}{'tokens/s':>11}{'samples/s':>11}{'GFLOP/s':>10}"
            f"{'computed':>10}",
        ]
        names = {
            "reference": "(a) reference, batch 1, full model",
            "cvgen": "(b) cvgen collector",
            "cvgen_no_prefix": "(b') cvgen collector, no prefix reuse",
            "bare": "(c) bare truncated batched forward",
        }
        for key, label in names.items():
            lines.append(
                f"  {label:<40}{s[key]:>9.2f}{r[key]:>11.1f}{c['samples_per_s'][key]:>11.2f}"
                f"{g[key]:>10.1f}{c['computed_tokens'][key]:>10}"
            )
        lines += [
            f"  b/a = {c['ratio_b_over_a']:.2f}x   [target >= 2x: {_target(c['ratio_b_over_a'] >= 2)}]"
            f"   (b'/a = {c['ratio_b_no_prefix_over_a']:.2f}x)",
            f"  capture overhead (c-b)/c = {c['capture_overhead']:+.1%}   [target <= 10%: "
            f"{_target(c['capture_overhead'] <= 0.10)}]   (c-b')/c = "
            f"{c['capture_overhead_no_prefix']:+.1%}",
            f"  collector GFLOP/s vs matmul peak = {g['cvgen'] / peak:.1%} "
            f"[target >= 70%: {_target(g['cvgen'] / peak >= 0.7)}]   (b': "
            f"{g['cvgen_no_prefix'] / peak:.1%}, c: {g['bare'] / peak:.1%})",
            "  max |state difference| / max |state|, vs the reference: "
            + ", ".join(
                f"{name} {value:.1e}" for name, value in c["max_relative_state_difference"].items()
            ),
        ]
    if "memory" in results:
        m = results["memory"]
        lines += [
            "",
            "Memory: cvgen's collector in a child process, "
            f"--batch-tokens {results['args']['memory_batch_tokens']}",
        ]
        for run in m["runs"]:
            collection = run["collection_peak_mib"]
            lines.append(
                f"  {run['samples']:>5} samples ({run['prompts']} prompts): peak RSS "
                f"{run['max_rss_mib']:.0f} MiB, during collection "
                + ("n/a" if collection is None else f"{collection:.0f} MiB")
                + f", store {run['store_mib']:.1f} MiB"
            )
        lines.append(
            f"  peak RSS growth at {MEMORY_FACTOR}x the samples: {m['max_rss_growth']:+.1%}   "
            f"[target within +-10%: {_target(abs(m['max_rss_growth']) <= 0.10)}]"
        )
        if "collection_peak_growth" in m:
            lines.append(
                f"  collection-phase peak growth: {m['collection_peak_growth']:+.1%}"
                " (includes the store's page cache)"
            )
    if "pack" in results:
        p = results["pack"]
        lines += [
            "",
            f"Pack: {p['axes']} axes, {p['samples_per_class']} samples per class",
            f"  cvgen 8-axis pack (one load, shared baseline): {p['seconds']['pack']:.1f} s",
            f"  eight reference-style single-axis runs:       "
            f"{p['seconds']['reference_runs']:.1f} s",
            f"  ratio {p['ratio']:.2f}x   [target >= 3x: {_target(p['ratio'] >= 3)}]",
        ]
    if "solver" in results:
        lines += [
            "",
            "Solver: cross-covariance, n = d samples, planted axis; cvgen = --eigen-candidates "
            f"{APPROXIMATE_CANDIDATES} (approximation), eigh = the exact default",
            f"  {'d':>6}{'cvgen s':>10}{'eigh s':>10}{'speedup':>10}{'|cos|':>12}{'|cos| planted':>15}",
        ]
        for row in results["solver"]:
            cos = "none" if row["abs_cos"] is None else f"{row['abs_cos']:.7f}"
            planted = row.get("abs_cos_planted")
            lines.append(
                f"  {row['d']:>6}{row['seconds']['cvgen']:>10.2f}{row['seconds']['eigh']:>10.2f}"
                f"{row['speedup']:>9.1f}x{cos:>12}"
                + (f"{planted:>15.4f}" if planted is not None else "")
            )
        last = results["solver"][-1]
        ok = last["abs_cos"] is not None and last["speedup"] >= 20 and last["abs_cos"] > 0.9999
        lines.append(f"  at d={last['d']}: [target >= 20x, |cos| > 0.9999: {_target(ok)}]")
    if "eval" in results:
        lines += render_eval(results["eval"])
    lines.append(f"\ntotal {results['total_seconds']:.0f} s")
    return "\n".join(lines)


def say(message: str) -> None:
    """Progress on stderr (the results go to stdout)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def engine_sections() -> Any:
    """scripts/bench_engine.py, the llama.cpp engine's sections (`--only engine`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_engine

    return bench_engine


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("CVGEN_REAL_MODEL") or str(DEFAULT_MODEL))
    parser.add_argument("--samples", type=int, default=16, help="samples of the collection runs")
    parser.add_argument("--axis", default="language")
    parser.add_argument("--memory-samples", type=int, default=8, help="the smaller memory count")
    parser.add_argument(
        "--memory-batch-tokens",
        type=int,
        default=512,
        help="--batch-tokens of the memory runs: small enough that both counts fill whole "
        "batches, so that the figure isolates growth with the sample count",
    )
    parser.add_argument("--pack-samples", type=int, default=4, help="samples per class, pack")
    parser.add_argument("--solver-dims", default="576,2048,4096")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument(
        "--max-padding",
        type=float,
        default=CollectionSettings.max_padding,
        help="padding bound of the collector's batches (default: CollectionSettings's)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument(
        "--only",
        default="collection,memory,pack,solver",
        help="comma-separated sections to run (also: eval, on a .gguf model: the engine "
        "against llama-server; engine, the llama.cpp engine's collection sections of "
        "scripts/bench_engine.py)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and BLAS (default: theirs); on a machine shared with other "
        "work, fewer threads than cores avoids oversubscription",
    )
    parser.add_argument("--eval-pack", type=Path, help="eval: a one-axis pack (default: make one)")
    parser.add_argument("--eval-samples", type=int, default=32, help="eval: samples of that pack")
    parser.add_argument("--eval-configs", type=int, default=2, help="eval: steered configs timed")
    parser.add_argument("--eval-threads", type=int, help="eval: llama.cpp threads (-t)")
    parser.add_argument("--eval-no-full", action="store_true", help="eval: skip the full runs")
    engine_sections().add_arguments(parser, model_default=None)  # the options of --only engine
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a pico model")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.samples, args.memory_samples, args.pack_samples = 3, 2, 2
        args.solver_dims = "48,96"
    return args


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Re-run this script with every thread-count variable set to `threads` (BLAS libraries
    read them only at load time); the children of the memory section inherit them."""
    wanted = str(threads)
    if all(os.environ.get(name) == wanted for name in THREAD_VARIABLES):
        torch.set_num_threads(threads)
        return
    os.environ.update({name: wanted for name in THREAD_VARIABLES})
    os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0
    started = time.perf_counter()
    sections = set(args.only.split(","))
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    results: dict[str, Any] = {
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if sections - {"eval"}:
        work = build_workload(args.model, samples=args.samples, axis=args.axis)
        config = load_config(resolve_model_source(args.model), trust_remote_code=False)
        text_config = getattr(config, "text_config", None) or config
        ffn = int(getattr(text_config, "intermediate_size", 4 * work.width))
        results["matmul_shape"] = f"{args.batch_tokens}x{work.width} @ {work.width}x{ffn}"
        results["matmul_peak_gflops"] = matmul_peak(
            device, dtype, args.batch_tokens, work.width, ffn
        )
    if "collection" in sections:
        say(f"collection: {len(work.token_ids)} prompts, routes (a), (b), (b'), (c)")
        model = load_model(args.model, device, dtype)
        results["collection"] = collection_section(model, work, args, device)
        del model
    if "memory" in sections:
        say("memory: two child processes")
        results["memory"] = memory_section(args)
    if "pack" in sections:
        say("pack: one 8-axis pack, then eight reference-style runs")
        results["pack"] = pack_section(args, device, dtype)
    if "solver" in sections:
        say(f"solver: d = {args.solver_dims}")
        results["solver"] = solver_section([int(d) for d in args.solver_dims.split(",")])
    if "eval" in sections:
        say("eval: the engine against llama-server, per configuration and whole runs")
        results["eval"] = eval_section(args)
    if "engine" in sections:
        say("engine: the llama.cpp engine's sections (scripts/bench_engine.py)")
        chosen = set(args.engine_sections.split(","))
        results["engine"] = engine_sections().run_sections(args, chosen)
    results["total_seconds"] = time.perf_counter() - started
    print(render(results))
    if "engine" in results:
        print("\n" + engine_sections().render(results["engine"]))
    if args.json:
        tmp = args.json.with_name(args.json.name + ".part")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        sys.exit(main())
