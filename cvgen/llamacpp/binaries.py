"""Run the real consumer: find llama.cpp's binaries, run one-shot completions and a server,
and prove from llama.cpp's own log that a control vector was applied.

llama.cpp (0c1e570) logs a control-vector file it refuses (bad name, wrong width,
``direction.0``) as an error line, carries on WITHOUT the vector and exits 0; so does
``llama-server``. Every run here that applies vectors is made with ``-v`` and checked: the
``set_adapter_cvec`` line must be present and no error line may appear.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvgen.common.errors import CvgenError

# The llama.cpp that cvgen's files are checked against: the source vendored in the
# llama-cpp-python 0.3.36 sdist (scripts/build_llama_cpp.sh builds it).
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
LLAMA_CPP_SOURCE = "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp"
ENV_BIN_DIR = "CVGEN_LLAMA_CPP"
BUILD_HINT = (
    "build the pinned llama.cpp with `bash scripts/build_llama_cpp.sh` (from a cvgen checkout; "
    f"about 10 minutes on 2 cores), or set {ENV_BIN_DIR} to a folder holding llama.cpp's "
    "binaries, or put them on PATH"
)
_APPLIED = re.compile(r"set_adapter_cvec: il_start = (-?\d+), il_end = (-?\d+)")
# llama.cpp's log lines carry a level letter: "0.00.123.456 E message" (with -v and prefixes)
_LEVEL_ERROR = re.compile(r"^(?:\d+\.\d+\.\d+\.\d+ )?E ")
_VERSION = re.compile(r"commit ([0-9a-f]{7,40})\)|version: \d+ \(([0-9a-f]{7,40})\)")


class LlamaCppError(CvgenError, RuntimeError):
    """llama.cpp is missing, failed, or ran without the vectors it was given."""


def llama_cpp_record() -> dict[str, str]:
    """What a pack's manifest records about the llama.cpp its files are checked against."""
    return {"commit": LLAMA_CPP_COMMIT, "source": LLAMA_CPP_SOURCE}


def shared_bin_dir() -> Path:
    """The cache's bin folder of the pinned commit's shared-library build (the binaries and
    the libraries that the llama.cpp engine's binding loads)."""
    root = Path(os.environ.get("CVGEN_CACHE") or Path.home() / ".cache" / "cvgen") / "llama.cpp"
    return root / f"{LLAMA_CPP_COMMIT[:7]}-shared" / "bin"


def cache_bin_dirs() -> list[Path]:
    """The cache's llama.cpp bin folders: the pinned commit's shared build first, then its
    static build (older caches), then any other."""
    shared = shared_bin_dir()
    root = shared.parent.parent
    pinned = root / LLAMA_CPP_COMMIT[:7] / "bin"
    first = [shared, pinned]
    others = sorted(p for p in root.glob("*/bin") if p not in first) if root.is_dir() else []
    return [*first, *others]


def find_binary(name: str) -> Path:
    """Find llama.cpp's ``name`` (e.g. ``llama-completion``): in ``$CVGEN_LLAMA_CPP`` (a bin
    folder; when it is set, nothing else is searched), then the cache that
    scripts/build_llama_cpp.sh fills, then ``PATH``."""
    configured = os.environ.get(ENV_BIN_DIR)
    if configured:
        folder = Path(configured).expanduser()
        if folder.is_file():
            folder = folder.parent
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise LlamaCppError(f"{ENV_BIN_DIR}={configured}: no executable {name} there; {BUILD_HINT}")
    for folder in cache_bin_dirs():
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise LlamaCppError(f"llama.cpp's {name} was not found (cache or PATH); {BUILD_HINT}")


def binary_version(binary: Path) -> str | None:
    """The commit ``binary --version`` reports (e.g. ``0c1e570``), or None if it says none."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    match = _VERSION.search(done.stdout + done.stderr)
    return (match.group(1) or match.group(2)) if match else None


def supports_legacy_syntax(binary: Path) -> bool:
    """Whether ``binary`` takes the pre-December-2025 ``--control-vector-scaled FILE SCALE``
    (current llama.cpp takes only ``FILE:SCALE`` and exits with an argument error)."""
    probe = [str(binary), "--control-vector-scaled", "probe.gguf", "1", "--version"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=30, check=False)
    except OSError as exc:
        raise LlamaCppError(f"{binary}: cannot run: {exc.strerror}") from exc
    return done.returncode == 0


def error_lines(log: str) -> list[str]:
    """The lines llama.cpp logged at error level."""
    return [line for line in log.splitlines() if _LEVEL_ERROR.match(line.strip())]


def applied_range(log: str) -> tuple[int, int] | None:
    """The block range of the control vector llama.cpp applied, from its ``-v`` log."""
    match = _APPLIED.search(log)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_applied(log: str, *, what: str) -> tuple[int, int]:
    """Raise unless the log shows a control vector applied and no error line."""
    errors = error_lines(log)
    if errors:
        raise LlamaCppError(f"{what}: llama.cpp logged an error: {errors[0].strip()}")
    found = applied_range(log)
    if found is None:
        raise LlamaCppError(f"{what}: llama.cpp did not apply the control vectors (no cvec line)")
    return found


VectorArgs = Sequence[str]


@dataclass(frozen=True)
class Completion:
    """One llama-completion run: the generated text and llama.cpp's log."""

    text: str
    log: str
    arguments: list[str] = field(default_factory=list)

    @property
    def applied(self) -> tuple[int, int] | None:
        return applied_range(self.log)


def complete(
    model: Path,
    prompt: str,
    *,
    vectors: VectorArgs = (),
    n_predict: int = 48,
    threads: int | None = None,
    extra: Sequence[str] = (),
    binary: Path | None = None,
    timeout: float = 600.0,
) -> Completion:
    """Greedy (temperature 0) one-shot completion of ``prompt`` with ``llama-completion``.

    ``vectors`` are llama.cpp arguments (``--control-vector ...``); when given, the log must show
    them applied and no error line, else LlamaCppError. The prompt is not echoed in ``text``.
    """
    binary = binary or find_binary("llama-completion")
    arguments = [
        str(binary),
        "-m",
        str(model),
        "-p",
        prompt,
        "-n",
        str(n_predict),
        "--temp",
        "0",
        "--seed",
        "0",
        "-no-cnv",
        "--no-display-prompt",
        "--no-warmup",
        "--simple-io",
        "--log-colors",
        "off",
        "-v",
        "-t",
        str(threads or default_threads()),
        *vectors,
        *extra,
    ]
    done = run_bounded(arguments, timeout=timeout, what=binary.name)
    log = done.stderr.decode("utf-8", "replace")
    if done.returncode != 0:
        tail = " | ".join(log.strip().splitlines()[-3:])
        raise LlamaCppError(f"{binary.name} exited with {done.returncode}: {tail}")
    text = done.stdout.decode("utf-8", "replace")
    result = Completion(text=text, log=log, arguments=arguments)
    if vectors:
        check_applied(log, what=f"{binary.name} {' '.join(vectors)}")
    return result


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """A ``llama-server`` on 127.0.0.1 and a free port, started with ``arguments`` (vectors and
    other options) and stopped by its own PID. Its log goes to ``log_path``."""

    def __init__(
        self,
        model: Path,
        *,
        vectors: VectorArgs = (),
        extra: Sequence[str] = (),
        log_path: Path | None = None,
        binary: Path | None = None,
        threads: int | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.binary = binary or find_binary("llama-server")
        self.model = model
        self.vectors = list(vectors)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        # a log of our own making is removed on a clean stop, and kept when it explains a failure
        self._own_log = log_path is None
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.arguments = [
            str(self.binary),
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-t",
            str(threads or default_threads()),
            "-c",
            "2048",
            "-np",
            "1",
            "--no-warmup",
            "--log-colors",
            "off",
            "-v",
            *self.vectors,
            *extra,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _failure(self, why: str) -> LlamaCppError:
        self._own_log = False  # the error names the log: it stays
        tail = "\n".join(self.log().strip().splitlines()[-15:])
        return LlamaCppError(f"llama-server {why}; log {self.log_path}:\n{tail}")

    def start(self) -> LlamaServer:
        with self.log_path.open("wb") as sink:
            self.process = subprocess.Popen(
                self.arguments, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise self._failure(f"exited with {self.process.returncode} while starting")
            if self._healthy():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise self._failure(f"did not answer /health within {self.start_timeout:.0f} s")
            time.sleep(0.2)
        if self.vectors:
            try:
                check_applied(self.log(), what="llama-server")
            except LlamaCppError:
                self._own_log = False
                self.stop()
                raise
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop the server by its own PID: SIGTERM, then SIGKILL after 10 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def post(self, path: str, body: dict[str, Any], *, timeout: float = 300.0) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise LlamaCppError(f"llama-server {path}: HTTP {exc.code}: {detail}") from exc

    def completion(
        self, prompt: str | Sequence[int], *, n_predict: int = 48, **options: Any
    ) -> dict[str, Any]:
        """Greedy ``/completion`` of a text or token-id prompt."""
        body = {
            "prompt": prompt if isinstance(prompt, str) else list(prompt),
            "n_predict": n_predict,
            "temperature": 0,
            "seed": 0,
            "cache_prompt": False,
            **options,
        }
        reply = self.post("/completion", body)
        if not isinstance(reply, dict):
            raise LlamaCppError(f"llama-server /completion: unexpected reply {str(reply)[:200]}")
        return reply

    def next_token_logprobs(self, tokens: Sequence[int], *, top: int = 40) -> dict[int, float]:
        """The log-probabilities of the ``top`` most likely next tokens after ``tokens``
        (softmax over the whole vocabulary, before sampling)."""
        reply = self.completion(tokens, n_predict=1, n_probs=top, post_sampling_probs=False)
        entries = reply["completion_probabilities"][0]["top_logprobs"]
        return {int(entry["id"]): float(entry["logprob"]) for entry in entries}


def run_bounded(
    arguments: Sequence[str], *, timeout: float, what: str
) -> subprocess.CompletedProcess[bytes]:
    """Run a llama.cpp tool without stdin, its output captured, for at most `timeout` seconds
    (`LlamaCppError` naming `what` when it takes longer)."""
    try:
        return subprocess.run(
            list(arguments),
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise LlamaCppError(f"{what} took longer than {timeout:.0f} s") from exc
