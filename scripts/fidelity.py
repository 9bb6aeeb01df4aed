#!/usr/bin/env python
"""How closely the llama.cpp engine agrees with the transformers engine on one GGUF.

    python scripts/fidelity.py --model M.gguf --axis language --samples 64 --threads 2

Both engines collect the same prompts of a real run (`bench.build_workload`), fed the same
token ids (llama.cpp's; the share of prompts on which the two tokenizers agree is printed):
the llama.cpp engine on the quantised file as llama.cpp computes it, the transformers engine on
the dequantised float32 model, on the CPU. Then, per block:

  state cosine      cos(h_llama, h_hf) of each prompt's last-token block output (min, median);
  direction cosine  the axis's direction solved from each engine's states with
                    `cvgen.solve.blocks.solve_blocks`, as `cvgen generate` solves it (its
                    default method, features and tau), and the cosine between the two
                    (signed: both are oriented negative -> positive);
  Fisher ratio      of each engine's direction, to show how separable each found the axis.

The eval's propensity slope is not measured here (a `cvgen eval` per engine's pack is the
way; see docs/engine.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import bench_engine  # noqa: E402

from cvgen.data.shipped import load_axis  # noqa: E402
from cvgen.engine.context import LlamaContext  # noqa: E402
from cvgen.engine.model import open_model  # noqa: E402
from cvgen.generate.settings import GenerateSettings  # noqa: E402
from cvgen.solve.blocks import solve_blocks  # noqa: E402
from cvgen.solve.direction import BlockDirection, SolverOptions  # noqa: E402
from cvgen.solve.methods import axis_method  # noqa: E402

# --- the two collections -------------------------------------------------------------------


def engine_states(
    work: bench_engine.EngineWorkload, *, threads: int, batch_tokens: int
) -> np.ndarray:
    """(blocks, prompts, d) states of the llama.cpp engine, as a real run collects them."""
    ids = work.engine_ids
    settings = bench_engine.context_settings(
        ids, batch_tokens=batch_tokens, threads=threads, capture=True
    )
    with (
        tempfile.TemporaryDirectory(prefix="cvgen-fidelity-") as folder,
        open_model(work.model) as model,
        LlamaContext(model, settings) as context,
    ):
        array = bench_engine.engine_collect(context, work, Path(folder), "engine")
        return np.stack([np.array(array.block(block)) for block in work.stored_blocks])


def transformers_states(work: bench_engine.EngineWorkload, *, batch_tokens: int) -> np.ndarray:
    """(blocks, prompts, d) states of cvgen's transformers collection (float32, CPU) of the
    same token ids."""
    import bench_workload as bench
    import torch

    from cvgen.extract.collect import CollectionSettings
    from cvgen.extract.decoder_blocks import find_decoder_blocks

    device = torch.device("cpu")
    model = bench.load_model(str(work.model), device, torch.float32)
    blocks = find_decoder_blocks(model, work.n_layer)
    same_tokens = bench.Workload(
        work.texts, work.engine_ids, work.stored_blocks, work.n_layer, work.width, work.pad_id
    )
    with tempfile.TemporaryDirectory(prefix="cvgen-fidelity-hf-") as folder:
        states = bench.collect_cvgen(
            model,
            blocks,
            same_tokens,
            device=device,
            batch_tokens=batch_tokens,
            store=Path(folder),
            reuse_prefix=True,
            max_padding=CollectionSettings.max_padding,
        )
        return np.array(states)


# --- the comparisons (pure) ----------------------------------------------------------------


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair of (n, d) arrays, in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.einsum("ij,ij->i", a64, b64) / np.where(norms > 0, norms, 1.0)


def state_agreement(
    first: np.ndarray, second: np.ndarray, blocks: Sequence[int]
) -> dict[int, dict[str, float]]:
    """Per block: min and median over prompts of the state cosine, and the median norm ratio
    |first| / |second|. Arrays are (len(blocks), n, d)."""
    table = {}
    for position, block in enumerate(blocks):
        cosines = row_cosines(first[position], second[position])
        ratio = np.linalg.norm(first[position], axis=1) / np.linalg.norm(second[position], axis=1)
        table[block] = {
            "min": float(cosines.min()),
            "median": float(np.median(cosines)),
            "norm_ratio": float(np.median(ratio)),
        }
    return table


def solve_axis(
    states: np.ndarray, blocks: Sequence[int], settings: GenerateSettings
) -> dict[int, BlockDirection]:
    """The axis's directions from (blocks, 3n, d) states whose prompts run baseline,
    negative, positive per sample; block blocks[0] is only the reference of the first."""
    per_role: list[Mapping[int, np.ndarray]] = [
        {block: states[position, offset::3] for position, block in enumerate(blocks)}
        for offset in (1, 2, 0)
    ]
    negative, positive, baseline = per_role
    return solve_blocks(
        negative,
        positive,
        baseline,
        list(blocks[1:]),
        features=settings.features,
        method=axis_method(settings.method, None),  # main() resolved the axis's own
        options=SolverOptions(tau=settings.tau, eigen_candidates=settings.eigen_candidates),
    )


def direction_agreement(
    first: Mapping[int, BlockDirection], second: Mapping[int, BlockDirection]
) -> dict[int, dict[str, float | None]]:
    """Per block solved by either: the signed cosine of the two unit directions (None where
    one engine found none) and each one's Fisher ratio."""
    table: dict[int, dict[str, float | None]] = {}
    for block in sorted(set(first) | set(second)):
        a, b = first.get(block), second.get(block)
        cosine = None
        if a is not None and b is not None:
            cosine = float(a.direction.astype(np.float64) @ b.direction.astype(np.float64))
        table[block] = {
            "cosine": cosine,
            "fisher_first": None if a is None else float(a.fisher_ratio),
            "fisher_second": None if b is None else float(b.fisher_ratio),
        }
    return table


# --- the run -------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    states, directions = results["states"], results["directions"]
    lines = [
        f"fidelity  model={results['model']}  axis={results['axis']}  samples={results['samples']}"
        f"  threads={results['threads']}",
        f"tokenizers agree on {results['token_agreement']:.0%} of {results['prompts']} prompts "
        "(both engines were fed llama.cpp's ids)",
        f"settings: method {results['method']}, features {results['features']}, tau "
        f"{results['tau']}",
        "",
        f"{'block':>6}{'state cos min':>15}{'median':>9}{'|llama|/|hf|':>14}"
        f"{'direction cos':>15}{'fisher llama':>14}{'fisher hf':>11}",
    ]
    for block, row in states.items():
        direction = directions.get(block, {})
        cosine = direction.get("cosine")
        fisher = [direction.get("fisher_first"), direction.get("fisher_second")]
        lines.append(
            f"{block:>6}{row['min']:>15.5f}{row['median']:>9.5f}{row['norm_ratio']:>14.4f}"
            + (f"{cosine:>15.4f}" if cosine is not None else f"{'-':>15}")
            + "".join(
                f"{value:>14.2f}" if value is not None else f"{'-':>14}" for value in fisher[:1]
            )
            + "".join(
                f"{value:>11.2f}" if value is not None else f"{'-':>11}" for value in fisher[1:]
            )
        )
    cosines = [row["cosine"] for row in directions.values() if row["cosine"] is not None]
    state_min = min(row["min"] for row in states.values())
    lines += [
        "",
        f"state cosine: min {state_min:.5f} over every block and prompt",
        f"direction cosine: min {min(cosines):.4f}, median {float(np.median(cosines)):.4f} over "
        f"{len(cosines)} blocks solved by both",
        f"seconds: llama.cpp {results['seconds']['llama_cpp']:.0f}, transformers "
        f"{results['seconds']['transformers']:.0f} (with its load); load average "
        f"{results['load_average'][0]:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import bench_workload as bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(bench.DEFAULT_MODEL))
    parser.add_argument("--axis", default="language")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=bench_engine.DEFAULT_THREADS)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    arguments = list(sys.argv[1:] if argv is None else argv)
    bench_engine.pin_threads(args.threads, arguments, script=__file__)
    settings = GenerateSettings(model=args.model, axes=(args.axis,), samples=args.samples)
    # the axis's own solver, as `cvgen generate --method auto` picks it
    settings = replace(settings, method=axis_method(settings.method, load_axis(args.axis).method))
    work = bench_engine.build_engine_workload(
        Path(args.model), samples=args.samples, axis=args.axis
    )
    seconds = {}
    started = time.perf_counter()
    from_llama = engine_states(work, threads=args.threads, batch_tokens=args.batch_tokens)
    seconds["llama_cpp"] = time.perf_counter() - started
    started = time.perf_counter()
    from_hf = transformers_states(work, batch_tokens=args.batch_tokens)
    seconds["transformers"] = time.perf_counter() - started
    blocks = work.stored_blocks
    results = {
        "model": args.model,
        "axis": args.axis,
        "samples": args.samples,
        "threads": args.threads,
        "prompts": work.prompts,
        "token_agreement": work.token_agreement(),
        "method": settings.method,
        "features": settings.features,
        "tau": settings.tau,
        "states": state_agreement(from_llama, from_hf, blocks),
        "directions": direction_agreement(
            solve_axis(from_llama, blocks, settings), solve_axis(from_hf, blocks, settings)
        ),
        "seconds": seconds,
        "load_average": list(os.getloadavg()),
    }
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
