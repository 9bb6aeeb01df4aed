"""Memory and time of cvgen's weight edits against the issue's target, per model.

Each operation runs as its own `cvgen` process; its peak RSS comes from the kernel's rusage of
that child (os.wait4), its wall time from the clock. The target is peak RSS <= the model's
largest tensor x 4 + 256 MiB, whatever the model's size. Packs are hand-built random ones that
fit each model (tests/serve_pack.py), since memory and time do not depend on the directions.

    python scripts/bench_weights.py [--model M.gguf ...] [--ops bake,enhance,transfer]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_pack import write_serve_pack  # noqa: E402

from cvgen.vectors.model_header import read_gguf_layout  # noqa: E402

MODELS = (
    Path.home() / ".cache/cvgen/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    Path.home() / ".cache/cvgen/models/gemma-3-270m-q4_k_m.gguf",
)
MIB = 1 << 20


def measured(arguments: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit code, last output line) of one cvgen run."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "cvgen.cli", *arguments],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return time.perf_counter() - started, usage.ru_maxrss / 1024, child.returncode, last


def operations(model: Path, pack: Path, folder: Path) -> dict[str, list[str]]:
    """The command line of each operation on `model`."""
    return {
        "bake": ["bake", str(pack), "--model", str(model), "--set", "language=1",
                 "--out", str(folder / "baked.gguf")],
        "enhance": ["bake", str(pack), "--model", str(model), "--enhance", "language=1.5",
                    "--out", str(folder / "enhanced.gguf")],
        "transfer": ["transfer", "--base", str(model), "--donor", str(folder / "enhanced.gguf"),
                     "--target", str(model), "--out", str(folder / "transferred.gguf")],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append")
    parser.add_argument("--ops", default="bake,enhance,transfer")
    args = parser.parse_args()
    print("model | size MiB | largest tensor MiB | op | wall s | peak RSS MiB | target MiB | "
          "RSS / target | result")  # fmt: skip
    for model in args.model or MODELS:
        layout = read_gguf_layout(model)
        largest = max(t.nbytes for t in layout.tensors) / MIB
        target = largest * 4 + 256
        with tempfile.TemporaryDirectory(dir=Path.home() / ".cache/cvgen") as name:
            folder = Path(name)
            pack = write_serve_pack(folder / "pack", model)
            for op, arguments in operations(model, pack, folder).items():
                if op not in args.ops.split(","):
                    continue
                wall, rss, code, last = measured(arguments)
                result = "ok" if code == 0 else f"exit {code}: {last[:90]}"
                print(f"{model.name} | {model.stat().st_size / MIB:.0f} | {largest:.0f} | {op} | "
                      f"{wall:.1f} | {rss:.0f} | {target:.0f} | {rss / target:.2f} | {result}")  # fmt: skip


if __name__ == "__main__":
    main()
