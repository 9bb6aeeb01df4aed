"""How exactly a baked model (`cvgen bake`) equals the model run with the same control vectors.

For the pack's selection (default: language=1 on the demo pack's SmolLM2), it bakes the model,
then:
- runs `llama-completion` at temperature 0 on 12 prompts with the baked file, with the
  original file and the `--control-vector-scaled` flags of `cvgen commands`, and with the
  original file unsteered, and counts equal texts;
- scores the shipped neutral replies (eval/neutral.json) through llama.cpp's library
  (cvgen.eval's engine backend) and prints the mean per-token KL(control vectors || baked);
- as a yardstick, the same two figures for the control vectors against themselves scaled by
  1 + 2^-20 (a change of about one float32 ulp in most elements): how much a rounding-level
  change of the same sum moves this model anyway.
`--f32` does all of this on a float32 copy of the model as well (every tensor dequantised with
gguf-py), where no activation is quantised between blocks.

    python scripts/bake_exactness.py [--pack demo-pack] [--set language=1] [--threads 2] [--f32]
"""

from __future__ import annotations

import argparse
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFReader

from cvgen.data.eval_data import load_neutral_texts
from cvgen.eval.backend import Scored, Steering
from cvgen.eval.engine_backend import EngineBackend
from cvgen.eval.measurement import kl_against
from cvgen.llamacpp.binaries import find_binary
from cvgen.pack.steering import PackSteering
from cvgen.weights.gguf_copy import rewrite_gguf

PROMPTS = (
    "Describe the sea at night.",
    "Tell me about your morning.",
    "What is a good way to learn to cook?",
    "Write a few lines about an old bridge.",
    "How does a bicycle stay upright?",
    "Describe a city street after rain.",
    "What should I pack for a weekend in the hills?",
    "Tell me a short story about a lost key.",
    "Why do leaves change colour in autumn?",
    "Describe the inside of a library.",
    "What makes a good friend?",
    "Explain how bread rises.",
)
MODEL = Path.home() / ".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf"


def completion(model: Path, flags: list[str], prompt: str, tokens: int, threads: int) -> str:
    run = subprocess.run(
        [str(find_binary("llama-completion")), "-m", str(model), "-p", prompt, "-n", str(tokens),
         "--temp", "0", "-t", str(threads), "-no-cnv", "--no-warmup", "-s", "0", *flags],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return run.stdout


def scores(model: Path, steering: Steering, threads: int) -> list[Scored]:
    """The shipped neutral replies scored, with their distributions, on `model`."""
    backend = EngineBackend(model, threads=threads, n_seq=8)
    try:
        texts = load_neutral_texts()
        items = [(backend.prompt_ids(t.request), backend.continuation_ids(t.reply)) for t in texts]
        with backend.session(steering) as session:
            return session.score(items, distributions=True)
    finally:
        backend.close()


def report(label: str, model: Path, baked: Path, pack: Path, args: argparse.Namespace) -> None:
    steering = PackSteering(pack)
    selection = steering.parse_assignments(tuple(args.set), None)
    files: list[tuple[Path, float]] = []
    for axis, text in selection:
        record = steering.manifest.axes[axis].files
        files.append((pack / record.of("debias"), 1.0))
        if float(text) != 0:
            files.append((pack / record.of("positive" if float(text) > 0 else "negative"),
                          abs(float(text))))  # fmt: skip
    flags = ["--control-vector-scaled", ",".join(f"{p}:{s:g}" for p, s in files)]
    nudged = ["--control-vector-scaled", ",".join(f"{p}:{s * (1 + 2**-20):.9g}" for p, s in files)]
    equal = nudged_equal = differs = 0
    for prompt in PROMPTS:
        steered = completion(model, flags, prompt, args.tokens, args.threads)
        equal += completion(baked, [], prompt, args.tokens, args.threads) == steered
        nudged_equal += completion(model, nudged, prompt, args.tokens, args.threads) == steered
        differs += completion(model, [], prompt, args.tokens, args.threads) != steered
    cv = Steering("vectors", tuple(files))
    nudge = Steering("nudged", tuple((p, s * (1 + 2**-20)) for p, s in files))
    steered_scores = scores(model, cv, args.threads)
    kl_nudged = float(kl_against(steered_scores, scores(model, nudge, args.threads)).mean())
    kl_baked = float(
        kl_against(steered_scores, scores(baked, Steering("none"), args.threads)).mean()
    )
    n = len(PROMPTS)
    print(f"{label}: llama-completion, temperature 0, {args.tokens} tokens, {n} prompts:")
    print(f"  baked text == control-vector text: {equal}/{n}")
    print(f"  vectors x (1 + 2^-20) text == control-vector text: {nudged_equal}/{n}")
    print(f"  unsteered text != control-vector text: {differs}/{n}")
    print(f"  mean KL per token on neutral text, vectors || baked: {kl_baked:.3g} nats")
    print(f"  mean KL per token, vectors || vectors x (1 + 2^-20): {kl_nudged:.3g} nats")


def bake(model: Path, out: Path, pack: Path, assignments: list[str]) -> None:
    args = [sys.executable, "-m", "cvgen.cli", "bake", str(pack), "--model", str(model), "--out",
            str(out)] + [f"--set={a}" for a in assignments]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    print(f"bake {model.name}: {time.perf_counter() - started:.1f} s ({shlex.join(args[3:])})")


def float32_copy(model: Path, out: Path) -> None:
    names = [tensor.name for tensor in GGUFReader(model).tensors]
    rewrite_gguf(
        model,
        out,
        fields={},
        edits={name: lambda v: v for name in names},
        store_as={name: GGMLQuantizationType.F32 for name in names},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", type=Path, default=Path("demo-pack"))
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--f32", action="store_true")
    args = parser.parse_args()
    args.set = args.set or ["language=1"]
    with tempfile.TemporaryDirectory() as folder:
        baked = Path(folder) / "baked.gguf"
        bake(args.model, baked, args.pack, args.set)
        report(args.model.name, args.model, baked, args.pack, args)
        if args.f32:
            copy = Path(folder) / "f32.gguf"
            float32_copy(args.model, copy)
            baked32 = Path(folder) / "baked-f32.gguf"
            bake(copy, baked32, args.pack, args.set)
            report("float32 copy", copy, baked32, args.pack, args)
    print(
        f"peak RSS of this script: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
