#!/usr/bin/env python
"""The llama.cpp engine's benchmark: collection speed, memory and the limit, side by side.

    python scripts/bench_engine.py --model M.gguf --samples 16 --threads 2
    python scripts/bench.py --only engine ...   # the same sections, from the main benchmark

On the prompts of a real run (`bench.build_workload`: chat-formatted when the GGUF has a chat
template, plain when it has none), one process measures:

  collection  the llama.cpp engine (`run_engine_collection`, into the state store) against the
              transformers engine (`run_collection` on the dequantised GGUF, float32, CPU) and
              against llama.cpp's own `llama-cvector-generator` given the same negative and
              positive texts (one prompt per decode). The generator's seconds per prompt are
              the difference of two runs (all pairs, one pair) over the prompts between them,
              so that its model load and its own solve cancel out.
  limit       the plain decode (`capture=False`) of the same decodes, and llama-batched-bench's
              prompt-processing speed on decodes of the same shape: the capture overhead.
  memory      peak RSS (VmHWM) of engine collection in a child process at two sample counts.

Every route runs with the same explicit thread count. On a shared machine the wall-clock
figures follow the load: the load average is printed with them, and CPU seconds are given
beside the wall seconds of the engine's two routes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from cvgen.engine.collect import check_steerable, plan_decodes, run_engine_collection  # noqa: E402
from cvgen.engine.context import ContextSettings, LlamaContext, shared_prefix_length  # noqa: E402
from cvgen.engine.model import EngineTokenizer, LlamaModel, open_model  # noqa: E402
from cvgen.extract.chat import tokenize_texts  # noqa: E402
from cvgen.extract.collect import WorkItem  # noqa: E402
from cvgen.extract.store import StateArray  # noqa: E402
from cvgen.generate.engines import SEQUENCES_PER_DECODE  # noqa: E402
from cvgen.llamacpp.binaries import shared_bin_dir  # noqa: E402

DEFAULT_THREADS = 2
LOAD_WARNING = 1.5  # 1-minute load average above which the figures are marked contended
TARGETS = {
    "over_transformers": 1.5,
    "over_cvector_generator": 5.0,
    "capture_overhead": 0.10,
    "rss_headroom_mib": 512.0,
}


# --- the workload --------------------------------------------------------------------------


@dataclass
class EngineWorkload:
    """A run's prompts (baseline, negative, positive per sample), as each engine tokenises
    them: `engine_ids` by llama.cpp's tokenizer, `hf_ids` by transformers'."""

    model: Path
    samples: int
    texts: list[str]
    engine_ids: list[list[int]]
    hf_ids: list[list[int]]
    stored_blocks: list[int]
    n_layer: int
    width: int
    pad_id: int

    @property
    def prompts(self) -> int:
        return len(self.texts)

    def first_samples(self, samples: int) -> EngineWorkload:
        """The workload of the first `samples` samples (three prompts each)."""
        end = 3 * samples
        return replace(
            self,
            samples=samples,
            texts=self.texts[:end],
            engine_ids=self.engine_ids[:end],
            hf_ids=self.hf_ids[:end],
        )

    def token_agreement(self) -> float:
        """The share of prompts both tokenizers turn into the same ids."""
        same = sum(a == b for a, b in zip(self.engine_ids, self.hf_ids, strict=True))
        return same / max(1, self.prompts)


def build_engine_workload(model: Path, *, samples: int, axis: str, seed: int = 0) -> EngineWorkload:
    """The texts of `bench.build_workload`, tokenised by both engines."""
    import bench_workload as bench  # scripts/bench_workload.py: the prompts of a real run

    work = bench.build_workload(str(model), samples=samples, axis=axis, seed=seed)
    with open_model(model, vocab_only=True) as vocabulary:
        engine_ids = tokenize_texts(EngineTokenizer(vocabulary), work.texts)
    return EngineWorkload(
        model=model,
        samples=samples,
        texts=work.texts,
        engine_ids=engine_ids,
        hf_ids=work.token_ids,
        stored_blocks=work.stored_blocks,
        n_layer=work.n_layer,
        width=work.width,
        pad_id=work.pad_id,
    )


def context_settings(
    token_lists: Sequence[Sequence[int]], *, batch_tokens: int, threads: int, capture: bool
) -> ContextSettings:
    """The context a real run makes (`collect_with_llama_cpp`) for these prompts."""
    longest = max(len(ids) for ids in token_lists)
    return ContextSettings(
        n_batch=max(batch_tokens, longest),
        n_seq=min(SEQUENCES_PER_DECODE, len(token_lists)),
        threads=threads,
        capture=capture,
    )


def decoded_tokens(token_lists: Sequence[Sequence[int]], decodes: Sequence[Sequence[int]]) -> int:
    """Tokens the engine computes for `decodes`: each decode's shared prefix once, plus the
    rest of every prompt."""
    total = 0
    for decode in decodes:
        prompts = [token_lists[index] for index in decode]
        skip = shared_prefix_length(prompts)
        total += skip + sum(len(prompt) - skip for prompt in prompts)
    return total


# --- clocks --------------------------------------------------------------------------------


def clocked(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_of(repeats: int, work: Callable[[], object]) -> tuple[float, float]:
    """The fastest (wall, CPU) of `repeats` runs of `work` (the least disturbed by others)."""
    return min((clocked(work) for _ in range(repeats)), key=lambda pair: pair[0])


# --- the llama.cpp engine and its limit ----------------------------------------------------


def engine_collect(
    context: LlamaContext, work: EngineWorkload, store: Path, key: str
) -> StateArray:
    """The engine's collection of the workload into a fresh store array."""
    array = StateArray.open(store, key, n=work.prompts, blocks=work.stored_blocks, width=work.width)
    items = [WorkItem(0, row, ids) for row, ids in enumerate(work.engine_ids)]
    run_engine_collection(
        context,
        work.stored_blocks,
        items,
        write=lambda target, rows, states: array.write_rows(rows, states),
    )
    return array


def plain_decodes(context: LlamaContext, token_lists: Sequence[Sequence[int]]) -> None:
    """The same decodes as the collection, with nothing captured."""
    decodes = plan_decodes(token_lists, n_batch=context.n_batch, n_seq=context.settings.n_seq)
    for decode in decodes:
        context.run([token_lists[index] for index in decode])


def engine_section(
    model: LlamaModel, work: EngineWorkload, *, threads: int, batch_tokens: int, repeats: int
) -> dict[str, Any]:
    """Seconds (wall and CPU) of the engine's collection and of the plain decode of the same
    decodes, best of `repeats`, after an untimed steerability probe and warm-up."""
    ids = work.engine_ids
    capture = context_settings(ids, batch_tokens=batch_tokens, threads=threads, capture=True)
    plain = context_settings(ids, batch_tokens=batch_tokens, threads=threads, capture=False)
    decodes = plan_decodes(ids, n_batch=capture.n_batch, n_seq=capture.n_seq)
    with (
        tempfile.TemporaryDirectory(prefix="cvgen-bench-engine-") as folder,
        LlamaContext(model, capture) as capturing,
        LlamaContext(model, plain) as bare,
    ):
        check_steerable(capturing, work.stored_blocks, ids[0])
        bare.run(ids[:2])
        counter = iter(range(1000))
        collect_seconds = best_of(
            repeats,
            lambda: engine_collect(capturing, work, Path(folder), f"bench-{next(counter)}"),
        )
        plain_seconds = best_of(repeats, lambda: plain_decodes(bare, ids))
    tokens = decoded_tokens(ids, decodes)
    return {
        "decodes": len(decodes),
        "largest_decode": max(len(decode) for decode in decodes),
        "n_batch": capture.n_batch,
        "prompt_tokens": sum(len(prompt) for prompt in ids),
        "decoded_tokens": tokens,
        "collect": {"wall_s": collect_seconds[0], "cpu_s": collect_seconds[1]},
        "plain": {"wall_s": plain_seconds[0], "cpu_s": plain_seconds[1]},
    }


# --- the transformers engine ---------------------------------------------------------------


def transformers_section(work: EngineWorkload, *, batch_tokens: int) -> dict[str, Any]:
    """Seconds of cvgen's transformers collection (float32, CPU, prefix reuse) after a warm-up
    on two prompts; the model's load is timed apart."""
    import bench_workload as bench
    import torch

    from cvgen.extract.collect import CollectionSettings
    from cvgen.extract.decoder_blocks import find_decoder_blocks

    device, dtype = torch.device("cpu"), torch.float32
    started = time.perf_counter()
    model = bench.load_model(str(work.model), device, dtype)
    load_seconds = time.perf_counter() - started
    blocks = find_decoder_blocks(model, work.n_layer)
    facts = (work.stored_blocks, work.n_layer, work.width, work.pad_id)
    full = bench.Workload(work.texts, work.hf_ids, *facts)
    warm = bench.Workload(work.texts[:2], work.hf_ids[:2], *facts)
    with tempfile.TemporaryDirectory(prefix="cvgen-bench-hf-") as folder:

        def collect(workload: Any) -> Any:
            return bench.collect_cvgen(
                model,
                blocks,
                workload,
                device=device,
                batch_tokens=batch_tokens,
                store=Path(folder),
                reuse_prefix=True,
                max_padding=CollectionSettings.max_padding,
            )

        collect(warm)
        states: list[np.ndarray] = []
        wall, cpu = clocked(lambda: states.append(collect(full)))
    return {
        "load_s": load_seconds,
        "collect": {"wall_s": wall, "cpu_s": cpu},
        "prompt_tokens": sum(len(ids) for ids in work.hf_ids),
        "torch_threads": torch.get_num_threads(),
    }


# --- llama.cpp's own tools -----------------------------------------------------------------


def escape_prompt_line(text: str) -> str:
    """`text` as one line of a cvector-generator prompt file (it unescapes each line with
    common's string_process_escapes: backslash, newline, tab and CR are written escaped)."""
    replaced = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return replaced.replace("\t", "\\t")


def cvector_generator_run(
    binary: Path, model: Path, pairs: Sequence[tuple[str, str]], *, threads: int, folder: Path
) -> float:
    """Wall seconds of one `llama-cvector-generator` run on (negative, positive) text pairs,
    with the mean method (its cheapest solve)."""
    negative, positive = folder / "negative.txt", folder / "positive.txt"
    negative.write_text("".join(escape_prompt_line(n) + "\n" for n, _ in pairs))
    positive.write_text("".join(escape_prompt_line(p) + "\n" for _, p in pairs))
    command = [
        str(binary),
        "-m",
        str(model),
        "-t",
        str(threads),
        "--positive-file",
        str(positive),
        "--negative-file",
        str(negative),
        "--method",
        "mean",
        "-o",
        str(folder / "out.gguf"),
    ]
    started, cpu = time.perf_counter(), children_cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{binary.name} failed (rc {done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, children_cpu_seconds() - cpu


def children_cpu_seconds() -> float:
    """User and system CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sample_pairs(work: EngineWorkload) -> list[tuple[str, str]]:
    """(negative, positive) texts of every sample (texts run baseline, negative, positive)."""
    return [(work.texts[row + 1], work.texts[row + 2]) for row in range(0, work.prompts, 3)]


def cvector_generator_section(work: EngineWorkload, *, threads: int, bin_dir: Path) -> dict:
    """Seconds per prompt of llama-cvector-generator: (all pairs - one pair) over the prompts
    between them, which cancels its model load and solve."""
    binary = bin_dir / "llama-cvector-generator"
    pairs = sample_pairs(work)
    with tempfile.TemporaryDirectory(prefix="cvgen-bench-cvector-") as folder:
        one = cvector_generator_run(
            binary, work.model, pairs[:1], threads=threads, folder=Path(folder)
        )
        every = cvector_generator_run(
            binary, work.model, pairs, threads=threads, folder=Path(folder)
        )
    extra_prompts = max(1, 2 * (len(pairs) - 1))
    return {
        "pairs": len(pairs),
        "one_pair_s": one[0],
        "all_pairs_s": every[0],
        "seconds_per_prompt": (every[0] - one[0]) / extra_prompts,
        "cpu_seconds_per_prompt": (every[1] - one[1]) / extra_prompts,
    }


def batched_bench_section(
    engine: dict[str, Any], work: EngineWorkload, *, threads: int, bin_dir: Path
) -> dict[str, Any]:
    """llama-batched-bench's prompt processing (no generation) on decodes shaped like the
    engine's largest: that many sequences of the mean prompt length, one unified KV cache."""
    length = round(engine["prompt_tokens"] / work.prompts)
    sequences = engine["largest_decode"]
    size = max(engine["n_batch"], length * sequences)
    command = [
        str(bin_dir / "llama-batched-bench"),
        "-m",
        str(work.model),
        "-t",
        str(threads),
        "-c",
        str(size),
        "-b",
        str(size),
        "-ub",
        str(size),
        "-npp",
        str(length),
        "-ntg",
        "0",
        "-npl",
        str(sequences),
        "-kvu",
        "--output-format",
        "jsonl",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"llama-batched-bench failed (rc {done.returncode}):\n{done.stderr[-2000:]}"
        )
    # its JSON row holds a bare nan for the generation speed when -ntg is 0: read one field
    speeds = re.findall(r'"speed_pp": ([0-9.]+)', done.stdout + done.stderr)
    if not speeds:
        raise RuntimeError("llama-batched-bench printed no result row")
    return {"pp": length, "pl": sequences, "tokens_per_s": float(speeds[-1])}


# --- memory --------------------------------------------------------------------------------


def vm_hwm_mib() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def rss_child(job: Path) -> dict[str, Any]:
    """In a child process: open the model, probe it, collect the job's prompts into a store,
    and report the peak RSS before loading and at the end."""
    spec = json.loads(job.read_text())
    before = vm_hwm_mib()
    ids = spec["token_ids"]
    settings = context_settings(
        ids, batch_tokens=spec["batch_tokens"], threads=spec["threads"], capture=True
    )
    work = EngineWorkload(
        Path(spec["model"]), 0, [""] * len(ids), ids, ids, spec["blocks"], 0, spec["width"], 0
    )
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="cvgen-bench-rss-") as folder,
        open_model(Path(spec["model"])) as model,
        LlamaContext(model, settings) as context,
    ):
        check_steerable(context, work.stored_blocks, ids[0])
        engine_collect(context, work, Path(folder), "rss")
    return {
        "prompts": len(ids),
        "start_mib": before,
        "peak_mib": vm_hwm_mib(),
        "seconds": time.perf_counter() - started,
    }


def memory_section(
    model: Path, *, axis: str, counts: Sequence[int], threads: int, batch_tokens: int
) -> dict[str, Any]:
    """Peak RSS of engine collection in a child process, once per sample count."""
    runs = []
    largest = build_engine_workload(model, samples=max(counts), axis=axis)
    for samples in counts:
        work = largest.first_samples(samples)
        with tempfile.TemporaryDirectory(prefix="cvgen-bench-rss-job-") as folder:
            job = Path(folder) / "job.json"
            job.write_text(
                json.dumps(
                    {
                        "model": str(model),
                        "token_ids": work.engine_ids,
                        "blocks": work.stored_blocks,
                        "width": work.width,
                        "threads": threads,
                        "batch_tokens": batch_tokens,
                    }
                )
            )
            command = [sys.executable, __file__, "--rss-child", str(job)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{done.stderr[-2000:]}")
        runs.append({"samples": samples, **json.loads(done.stdout.strip().splitlines()[-1])})
    size = model.stat().st_size / 2**20
    return {
        "gguf_mib": size,
        "limit_mib": size + TARGETS["rss_headroom_mib"],
        "batch_tokens": batch_tokens,
        "runs": runs,
    }


# --- figures -------------------------------------------------------------------------------


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """The benchmark's ratios from its measured seconds (pure: see the tests)."""
    prompts = results["prompts"]
    engine = results["engine"]
    collect, plain = engine["collect"], engine["plain"]
    out = {
        "engine_prompts_per_s": prompts / collect["wall_s"],
        "plain_tokens_per_s": engine["decoded_tokens"] / plain["wall_s"],
        "engine_tokens_per_s": engine["decoded_tokens"] / collect["wall_s"],
        "capture_overhead_wall": collect["wall_s"] / plain["wall_s"] - 1,
        "capture_overhead_cpu": collect["cpu_s"] / plain["cpu_s"] - 1,
    }
    if "transformers" in results:
        hf = results["transformers"]["collect"]
        out["over_transformers"] = hf["wall_s"] / collect["wall_s"]
        out["over_transformers_cpu"] = hf["cpu_s"] / collect["cpu_s"]
    if "cvector_generator" in results:
        per_prompt = results["cvector_generator"]["seconds_per_prompt"]
        out["over_cvector_generator"] = per_prompt * prompts / collect["wall_s"]
        cpu_per_prompt = results["cvector_generator"].get("cpu_seconds_per_prompt")
        if cpu_per_prompt is not None:
            out["over_cvector_generator_cpu"] = cpu_per_prompt * prompts / collect["cpu_s"]
    if "batched_bench" in results:
        out["engine_over_batched_bench"] = (
            out["engine_tokens_per_s"] / results["batched_bench"]["tokens_per_s"]
        )
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def render(results: dict[str, Any]) -> str:
    """The figures as a text report, with PASS/FAIL against each target."""
    r = results["ratios"]
    load = results["load_average"]
    samples, prompts = results["samples"], results["prompts"]
    lines = [
        f"llama.cpp engine bench  model={results['model']}  threads={results['threads']}",
        f"load average at start {load['start'][0]:.2f} {load['start'][1]:.2f} "
        f"{load['start'][2]:.2f}, at end {load['end'][0]:.2f} (the machine must be quiet: wall "
        "figures under load are contended"
        + (", and these ARE)" if max(load["start"][0], load["end"][0]) > LOAD_WARNING else ")"),
        f"workload: {samples} samples = {prompts} prompts (baseline, negative, positive), "
        f"tokenizers agree on {results['token_agreement']:.0%} of prompts",
    ]
    engine = results["engine"]
    c, p = engine["collect"], engine["plain"]
    lines += [
        "",
        f"Collection ({engine['decodes']} decodes of up to {engine['largest_decode']} prompts, "
        f"n_batch {engine['n_batch']}; {engine['prompt_tokens']} prompt tokens, "
        f"{engine['decoded_tokens']} computed with shared prefixes)",
        f"  {'route':<44}{'wall s':>9}{'CPU s':>9}{'prompts/s':>11}{'samples/s':>11}",
        _row("llama.cpp engine (capture)", c["wall_s"], c["cpu_s"], prompts),
        _row("llama.cpp plain decode (no capture)", p["wall_s"], p["cpu_s"], prompts),
    ]
    if "transformers" in results:
        hf = results["transformers"]
        lines.append(
            _row(
                "transformers engine (float32 CPU)",
                hf["collect"]["wall_s"],
                hf["collect"]["cpu_s"],
                prompts,
            )
            + f"   (load {hf['load_s']:.0f} s)"
        )
    if "cvector_generator" in results:
        cv = results["cvector_generator"]
        per = cv["seconds_per_prompt"]
        lines.append(
            f"  {'llama-cvector-generator (per prompt)':<44}{per * prompts:>9.2f}"
            + (
                f"{cv['cpu_seconds_per_prompt'] * prompts:>9.2f}"
                if "cpu_seconds_per_prompt" in cv
                else f"{'':>9}"
            )
            + f"{1 / per:>11.2f}{1 / per / 2:>11.2f}   (pairs/s; runs of {cv['pairs']} pairs "
            f"{cv['all_pairs_s']:.1f} s, 1 pair {cv['one_pair_s']:.1f} s)"
        )
    if "over_transformers" in r:
        lines.append(
            f"  engine / transformers = {r['over_transformers']:.2f}x wall "
            f"({r['over_transformers_cpu']:.2f}x CPU)   [target >= "
            f"{TARGETS['over_transformers']}x: {verdict(r['over_transformers'] >= TARGETS['over_transformers'])}]"
        )
    if "over_cvector_generator" in r:
        ratio = r["over_cvector_generator"]
        lines.append(
            f"  engine / cvector-generator per prompt = {ratio:.2f}x   [target >= "
            f"{TARGETS['over_cvector_generator']}x: {verdict(ratio >= TARGETS['over_cvector_generator'])}]"
            f"   (per sample: {ratio * 2 / 3:.2f}x; cvgen also runs the baseline)"
        )
        if "over_cvector_generator_cpu" in r:
            lines.append(
                f"  engine / cvector-generator per prompt, in CPU seconds = "
                f"{r['over_cvector_generator_cpu']:.2f}x (less sensitive to the load)"
            )
    lines += [
        "",
        "Limit",
        f"  plain decode {r['plain_tokens_per_s']:.0f} tokens/s, engine {r['engine_tokens_per_s']:.0f}"
        " tokens/s (computed tokens)",
        f"  capture overhead = {r['capture_overhead_wall']:+.1%} wall, "
        f"{r['capture_overhead_cpu']:+.1%} CPU   [target <= {TARGETS['capture_overhead']:.0%}: "
        f"{verdict(r['capture_overhead_wall'] <= TARGETS['capture_overhead'])} wall, "
        f"{verdict(r['capture_overhead_cpu'] <= TARGETS['capture_overhead'])} CPU]",
    ]
    if "batched_bench" in results:
        bb = results["batched_bench"]
        lines.append(
            f"  llama-batched-bench PP ({bb['pl']} x {bb['pp']} tokens): "
            f"{bb['tokens_per_s']:.0f} tokens/s; engine at {r['engine_over_batched_bench']:.0%} of it"
        )
    if "memory" in results:
        m = results["memory"]
        lines += [
            "",
            f"Memory (peak RSS of engine collection in a child, decodes of "
            f"{m.get('batch_tokens', '?')} tokens; GGUF {m['gguf_mib']:.0f} MiB)",
        ]
        for run in m["runs"]:
            ok = run["peak_mib"] <= m["limit_mib"]
            lines.append(
                f"  {run['samples']:>5} samples ({run['prompts']} prompts): VmHWM "
                f"{run['peak_mib']:.0f} MiB (interpreter and imports {run['start_mib']:.0f} MiB)"
                f"   [target <= GGUF + 512 = {m['limit_mib']:.0f} MiB: {verdict(ok)}]"
            )
        first, last = m["runs"][0], m["runs"][-1]
        lines.append(
            f"  growth {first['samples']} -> {last['samples']} samples: "
            f"{last['peak_mib'] / first['peak_mib'] - 1:+.1%}"
        )
    lines.append(f"\ntotal {results['total_seconds']:.0f} s")
    return "\n".join(lines)


def _row(label: str, wall: float, cpu: float, prompts: int) -> str:
    return f"  {label:<44}{wall:>9.2f}{cpu:>9.2f}{prompts / wall:>11.2f}{prompts / wall / 3:>11.2f}"


# --- the run -------------------------------------------------------------------------------


def run_sections(args: argparse.Namespace, sections: set[str]) -> dict[str, Any]:
    """Measure `sections` (collection, transformers, cvector, limit, memory) on one workload."""
    started = time.perf_counter()
    threads = args.threads or DEFAULT_THREADS
    model_path = Path(args.model)
    bin_dir = Path(os.environ.get("CVGEN_LLAMA_CPP") or shared_bin_dir())
    results: dict[str, Any] = {
        "model": str(model_path),
        "threads": threads,
        "load_average": {"start": list(os.getloadavg())},
    }
    work = build_engine_workload(model_path, samples=args.samples, axis=args.axis)
    results.update(
        samples=work.samples, prompts=work.prompts, token_agreement=work.token_agreement()
    )
    say(f"engine: {work.prompts} prompts, capture and plain decode, best of {args.repeats}")
    with open_model(model_path) as model:
        results["engine"] = engine_section(
            model, work, threads=threads, batch_tokens=args.batch_tokens, repeats=args.repeats
        )
    if "transformers" in sections:
        say("transformers: loading the dequantised GGUF")
        results["transformers"] = transformers_section(work, batch_tokens=args.batch_tokens)
    if "cvector" in sections:
        say("llama-cvector-generator: one pair, then every pair")
        results["cvector_generator"] = cvector_generator_section(
            work, threads=threads, bin_dir=bin_dir
        )
    if "limit" in sections:
        say("llama-batched-bench")
        results["batched_bench"] = batched_bench_section(
            results["engine"], work, threads=threads, bin_dir=bin_dir
        )
    if "memory" in sections:
        counts = [int(count) for count in args.rss_samples.split(",")]
        say(f"memory: child processes at {counts} samples")
        results["memory"] = memory_section(
            model_path,
            axis=args.axis,
            counts=counts,
            threads=threads,
            batch_tokens=args.rss_batch_tokens,
        )
    results["ratios"] = ratios(results)
    results["load_average"]["end"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - started
    return results


def add_arguments(parser: argparse.ArgumentParser, *, model_default: str | None) -> None:
    """The engine bench's options (shared with scripts/bench.py's hook)."""
    if model_default is not None:
        parser.add_argument("--model", default=model_default)
        parser.add_argument("--samples", type=int, default=16)
        parser.add_argument("--axis", default="language")
        parser.add_argument("--batch-tokens", type=int, default=4096)
        parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument(
        "--engine-sections",
        default="transformers,cvector,limit,memory",
        help="engine bench: comma-separated sections besides the engine's own collection",
    )
    parser.add_argument("--repeats", type=int, default=2, help="engine bench: best of N")
    parser.add_argument(
        "--rss-samples", default="8,64", help="engine bench: sample counts of the RSS runs"
    )
    parser.add_argument(
        "--rss-batch-tokens",
        type=int,
        default=1024,
        help="engine bench: tokens a decode in the RSS runs, small enough that both counts "
        "fill whole decodes (llama.cpp touches more of its compute buffer for a larger decode, "
        "so a partly filled decode would show as growth with the sample count)",
    )


def say(message: str) -> None:
    print(f"bench_engine: {message}", file=sys.stderr, flush=True)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_threads(threads: int, argv: Sequence[str], *, script: str = __file__) -> None:
    """Re-run `script` with the BLAS thread variables set to `threads` (read at load)."""
    wanted = str(threads)
    if all(os.environ.get(name) == wanted for name in THREAD_VARIABLES):
        import torch

        torch.set_num_threads(threads)
        return
    os.environ.update({name: wanted for name in THREAD_VARIABLES})
    os.execv(sys.executable, [sys.executable, script, *argv])


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--rss-child"]:
        print(json.dumps(rss_child(Path(arguments[1]))))
        return 0
    import bench_workload as bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, model_default=str(bench.DEFAULT_MODEL))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(arguments)
    pin_threads(args.threads, arguments)
    results = run_sections(args, set(args.engine_sections.split(",")))
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
