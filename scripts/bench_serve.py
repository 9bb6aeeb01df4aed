#!/usr/bin/env python3
"""How fast `cvgen serve` answers, against `llama-server` with the vectors as flags.

    python scripts/bench_serve.py PACK --model M.gguf [--threads 2] [--tokens 32]

It starts `cvgen serve PACK` on 127.0.0.1 and measures, at temperature 0:
- sequential: requests whose settings alternate (each axis at +1 and -1 within its safe
  scale, and no steering), one at a time: tokens/s and the median latency;
- load: 64 requests from 8 concurrent clients with settings drawn at random: tokens/s, and
  the server's RSS before and after;
- llama-server: the same sequential requests at ONE setting on a `llama-server` started with
  that setting's flags (it cannot change them per request), tokens/s, and its start time,
  which is what each change of setting costs a llama-server user today.
It prints each figure and the ratios. Run it on a quiet machine: llama.cpp slows down 10-40x
when its threads outnumber the free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cvgen.llamacpp.binaries import LlamaServer, free_port  # noqa: E402
from cvgen.llamacpp.commands import vector_arguments  # noqa: E402
from cvgen.pack.manifest import load_manifest  # noqa: E402

PROMPTS = (
    "Describe a harbour town in two sentences.",
    "Tell me about your favourite season.",
    "Explain how a bicycle stays upright.",
    "Write a short note to a neighbour about a lost cat.",
)


def settings_of(pack: Path) -> list[dict[str, float]]:
    """No steering, then each axis at +1 and -1 (within its safe scale)."""
    manifest = load_manifest(pack)
    out: list[dict[str, float]] = [{}]
    for name, axis in manifest.axes.items():
        safe = axis.safe_scale
        out.append({name: min(1.0, safe.positive) if safe else 1.0})
        out.append({name: -min(1.0, safe.negative) if safe else -1.0})
    return out


def post(url: str, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        answer: dict[str, Any] = json.loads(reply.read())
        return answer


def chat_body(prompt: str, tokens: int, vectors: dict[str, float] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": tokens,
    }
    if vectors is not None:
        body["control_vectors"] = vectors
    return body


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(url: str, bodies: list[dict[str, Any]], clients: int) -> tuple[float, int, list[float]]:
    """(seconds, completion tokens, latencies) of `bodies` sent by `clients` at once."""

    def one(body: dict[str, Any]) -> tuple[int, float]:
        start = time.monotonic()
        reply = post(url, body)
        return int(reply["usage"]["completion_tokens"]), time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, bodies))
    return time.monotonic() - start, sum(r[0] for r in results), [r[1] for r in results]


def start_serve(pack: Path, model: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "cvgen.cli", "serve", str(pack), "--model", str(model),
        "--port", str(port), "--threads", str(threads), "--ctx-size", "2048",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except (urllib.error.URLError, OSError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit("bench_serve: cvgen serve did not start") from None
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pack", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16, help="sequential requests")
    args = parser.parse_args()
    settings = settings_of(args.pack)
    sequential = [
        chat_body(PROMPTS[i % len(PROMPTS)], args.tokens, settings[i % len(settings)])
        for i in range(args.requests)
    ]
    rng = random.Random(15)
    load = [chat_body(rng.choice(PROMPTS), args.tokens, rng.choice(settings)) for _ in range(64)]
    process, url = start_serve(args.pack, args.model, args.threads)
    try:
        chat = f"{url}/v1/chat/completions"
        timed(chat, sequential[:2], 1)  # warm-up
        seconds, tokens, latencies = timed(chat, sequential, 1)
        serve_rate = tokens / seconds
        print(f"cvgen serve, sequential, settings alternating: {args.requests} requests, "
              f"{tokens} tokens in {seconds:.1f} s = {serve_rate:.1f} tokens/s, "
              f"median latency {statistics.median(latencies):.2f} s")  # fmt: skip
        before = rss_mib(process.pid)
        seconds, tokens, latencies = timed(chat, load, 8)
        after = rss_mib(process.pid)
        print(f"cvgen serve, load: 64 requests from 8 clients, random settings: {tokens} tokens "
              f"in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s; RSS {before:.0f} MiB "
              f"before, {after:.0f} MiB after ({after - before:+.0f} MiB)")  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=30)
    manifest = load_manifest(args.pack).to_json()
    fixed = next((s for s in settings if s), {})
    vectors = vector_arguments(manifest, list(fixed.items()), vector_dir=str(args.pack))
    start = time.monotonic()
    with LlamaServer(args.model, vectors=vectors, threads=args.threads) as server:
        startup = time.monotonic() - start
        bodies = [{**chat_body(b["messages"][0]["content"], args.tokens, None),
                   "cache_prompt": False} for b in sequential]  # fmt: skip
        url = f"{server.url}/v1/chat/completions"
        timed(url, bodies[:2], 1)
        seconds, tokens, _ = timed(url, bodies, 1)
    reference_rate = tokens / seconds
    print(f"llama-server, sequential, one fixed setting {fixed}: {tokens} tokens in "
          f"{seconds:.1f} s = {reference_rate:.1f} tokens/s; its start with the vectors took "
          f"{startup:.1f} s (the cost of each change of setting without cvgen serve)")  # fmt: skip
    print(f"ratio: cvgen serve / llama-server sequential tokens/s = "
          f"{serve_rate / reference_rate:.2f} (threads {args.threads}, cores {os.cpu_count()})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
