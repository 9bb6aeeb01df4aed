"""llama.cpp's own control-vector maker, `llama-cvector-generator`, run as an anchor to compare
cvgen's vectors with (scripts/compare_methods.py).

What the pinned tool (0c1e570, tools/cvector-generator/) does, read from its source:

- `--positive-file` and `--negative-file` hold ONE PROMPT PER LINE; empty lines are skipped
  and each line goes through `string_process_escapes` (`\\n`, `\\r`, `\\t`, `\\\\`, `\\'`,
  `\\"`, `\\xHH`), so a multi-line prompt is written with its newlines escaped. Line i of one
  file is paired with line i of the other; the counts must match. It applies NO chat template:
  a line is the full text, tokenised with the vocabulary's own BOS (`llama_vocab_get_add_bos`)
  and special tokens parsed. The shorter of a pair is padded with the token of " ".
- For each pair it runs both prompts and keeps, at every block's output (`l_out-il`) and every
  position, positive minus negative; rows that are all zero (the shared prefix) are dropped.
  The last block is not kept (llama.cpp computes only the last position there).
- `--method mean`: per block, the mean of those rows; `--method pca` (the default): the top
  eigenvector of their uncentred second moment by power iteration (`--pca-iter`, a multiple of
  `--pca-batch`), started from a random vector seeded with the time, so ITS SIGN IS ARBITRARY
  per block (the source's own TODO: "The output vector is randomly inverted").
- Either way each block's vector is scaled to unit norm (the mean's exactly; the PCA's within a
  few percent: 0.977..1.013 measured on SmolLM2-135M) and written as `direction.(il+1)` for
  block il = 0..n_layer-2: one block late in cvgen's terms (block k's vector is added to block
  k+1's output). `controlvector.model_hint` is `general.architecture`. One file per run; it is
  applied as the positive pole at +scale and the negative pole at -scale, with no debias file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvgen.llamacpp.binaries import LlamaCppError, error_lines, find_binary, run_bounded
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.format import ControlVectorError

BINARY = "llama-cvector-generator"
METHODS = ("mean", "pca")
DEFAULT_PCA_BATCH = 100  # the tool's defaults (common.h: n_pca_batch, n_pca_iterations)
DEFAULT_PCA_ITERATIONS = 1000
DEFAULT_CONTEXT = 2048
DEFAULT_TIMEOUT = 3600.0
NORM_TOLERANCE = {"mean": 1e-3, "pca": 0.05}  # how far from 1 a block's norm may be


def escape_prompt_line(text: str) -> str:
    """`text` as one line of a prompt file: what `string_process_escapes` turns back into it
    (backslashes first, then the line breaks)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def unescape_prompt_line(line: str) -> str:
    """What the tool reads from `line` (a port of llama.cpp's `string_process_escapes`)."""
    simple = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\"}
    out: list[str] = []
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and index + 1 < len(line):
            index += 1
            code = line[index]
            if code in simple:
                out.append(simple[code])
            elif code == "x" and index + 2 < len(line) and _is_hex(line[index + 1 : index + 3]):
                out.append(chr(int(line[index + 1 : index + 3], 16)))
                index += 2
            else:
                out.append("\\" + code)
        else:
            out.append(char)
        index += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def generator_prompt(text: str, *, bos_text: str | None) -> str:
    """A rendered prompt as the tool should read it. `bos_text`: the BOS token's text when the
    tool adds BOS itself (the vocabulary's add_bos); a rendered chat template that already
    starts with it loses it here, so the tool does not see two BOS tokens."""
    if bos_text and text.startswith(bos_text):
        return text[len(bos_text) :]
    return text


def write_prompt_files(
    folder: Path,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    stem: str = "prompts",
    bos_text: str | None = None,
) -> tuple[Path, Path]:
    """Write `positive` and `negative` (paired by index) as the tool's two prompt files, one
    escaped prompt a line; returns (positive file, negative file). A prompt that would be an
    empty line is refused: the tool would skip it and pair the following lines wrongly."""
    if len(positive) != len(negative):
        raise LlamaCppError(
            f"{BINARY}: {len(positive)} positive and {len(negative)} negative prompts "
            "(they are paired line by line)"
        )
    if not positive:
        raise LlamaCppError(f"{BINARY}: no prompt pairs to write")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for side, texts in (("positive", positive), ("negative", negative)):
        lines = []
        for index, text in enumerate(texts):
            line = escape_prompt_line(generator_prompt(text, bos_text=bos_text))
            if not line:
                raise LlamaCppError(f"{BINARY}: {side} prompt {index} is empty")
            lines.append(line)
        path = folder / f"{stem}.{side}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def generator_arguments(
    binary: Path,
    model: Path,
    positive_file: Path,
    negative_file: Path,
    output: Path,
    *,
    method: str,
    threads: int,
    pca_batch: int = DEFAULT_PCA_BATCH,
    pca_iterations: int = DEFAULT_PCA_ITERATIONS,
    context: int = DEFAULT_CONTEXT,
) -> list[str]:
    """The tool's command line. The context and both batch sizes are `context`, so a prompt is
    one decode (the tool keeps a block's output only when it holds every token of the prompt);
    CPU only, no warm-up (the tool turns it off itself)."""
    if method not in METHODS:
        raise LlamaCppError(f"{BINARY}: method '{method}' is not one of {', '.join(METHODS)}")
    if threads < 1 or context < 1:
        raise LlamaCppError(f"{BINARY}: threads {threads} and context {context} must be >= 1")
    arguments = [
        str(binary),
        "-m",
        str(model),
        "--positive-file",
        str(positive_file),
        "--negative-file",
        str(negative_file),
        "-o",
        str(output),
        "--method",
        method,
        "-t",
        str(threads),
        "-c",
        str(context),
        "-b",
        str(context),
        "-ub",
        str(context),
        "-ngl",
        "0",
    ]
    if method == "pca":
        if pca_batch < 1 or pca_iterations < pca_batch or pca_iterations % pca_batch:
            raise LlamaCppError(
                f"{BINARY}: --pca-iter {pca_iterations} must be a positive multiple of "
                f"--pca-batch {pca_batch} (the tool refuses it otherwise)"
            )
        arguments += ["--pca-batch", str(pca_batch), "--pca-iter", str(pca_iterations)]
    return arguments


@dataclass(frozen=True)
class GeneratorRun:
    """One finished run: the vector it wrote, its command line, log and seconds."""

    vector: ControlVector
    path: Path
    arguments: list[str]
    log: str
    seconds: float


def run_generator(
    model: Path,
    positive: Sequence[str],
    negative: Sequence[str],
    folder: Path,
    *,
    method: str,
    n_layer: int,
    n_embd: int,
    threads: int = 1,
    stem: str = "cvector",
    bos_text: str | None = None,
    binary: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    pca_batch: int = DEFAULT_PCA_BATCH,
    pca_iterations: int = DEFAULT_PCA_ITERATIONS,
    context: int = DEFAULT_CONTEXT,
) -> GeneratorRun:
    """Write the prompt files into `folder`, run the tool (at most `timeout` seconds) and read
    its file back with cvgen's reader; LlamaCppError when it fails, times out, or writes
    anything but `direction.1..direction.(n_layer-1)` of width `n_embd`."""
    binary = binary or find_binary(BINARY)
    positive_file, negative_file = write_prompt_files(
        folder, positive, negative, stem=stem, bos_text=bos_text
    )
    output = folder / f"{stem}.{method}.gguf"
    output.unlink(missing_ok=True)
    arguments = generator_arguments(
        binary,
        model,
        positive_file,
        negative_file,
        output,
        method=method,
        threads=threads,
        pca_batch=pca_batch,
        pca_iterations=pca_iterations,
        context=context,
    )
    started = time.perf_counter()
    done = run_bounded(arguments, timeout=timeout, what=f"{binary.name} --method {method}")
    seconds = time.perf_counter() - started
    log = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    (folder / f"{stem}.{method}.log").write_text(log, encoding="utf-8")
    if done.returncode != 0 or not output.is_file():
        tail = " | ".join((error_lines(log) or log.strip().splitlines())[-3:])
        raise LlamaCppError(
            f"{binary.name} --method {method} exited with {done.returncode}"
            f"{'' if output.is_file() else ' and wrote no file'}: {tail}"
        )
    try:
        vector = ControlVector.from_gguf(output)
    except ControlVectorError as exc:
        raise LlamaCppError(f"{binary.name} --method {method}: {exc}") from None
    check_generator_vector(
        vector, n_layer=n_layer, n_embd=n_embd, what=str(output), tolerance=NORM_TOLERANCE[method]
    )
    return GeneratorRun(vector, output, arguments, log, seconds)


def check_generator_vector(
    vector: ControlVector, *, n_layer: int, n_embd: int, what: str, tolerance: float = 1e-3
) -> None:
    """The tool's file as its source says it is: blocks 1..n_layer-1, width n_embd, every
    block of unit norm (within `tolerance`)."""
    expected = tuple(range(1, n_layer))
    if vector.blocks != expected:
        raise LlamaCppError(
            f"{what}: blocks {_span(vector.blocks)}, expected {_span(expected)} "
            f"(direction.(il+1) for il = 0..{n_layer - 2})"
        )
    if vector.n_embd != n_embd:
        raise LlamaCppError(f"{what}: width {vector.n_embd}, the model's n_embd is {n_embd}")
    norms = block_norms(vector.directions)
    off = {block: norm for block, norm in norms.items() if abs(norm - 1.0) > tolerance}
    if off:
        block, norm = next(iter(off.items()))
        raise LlamaCppError(
            f"{what}: {len(off)} blocks are not of unit norm (block {block}: {norm:.4g})"
        )


def block_norms(directions: Mapping[int, np.ndarray]) -> dict[int, float]:
    """block -> the Euclidean norm of its vector."""
    return {
        block: float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))
        for block, vector in sorted(directions.items())
    }


def align_signs(
    vector: Mapping[int, np.ndarray], reference: Mapping[int, np.ndarray]
) -> tuple[dict[int, np.ndarray], list[int]]:
    """Flip each block of `vector` whose dot product with `reference`'s same block is negative
    (e.g. the PCA file against the mean file: the fix the tool's TODO links to, orienting the
    eigenvector toward the positive prompts). Returns (vectors, the flipped blocks). A block
    `reference` lacks is kept as it is."""
    out: dict[int, np.ndarray] = {}
    flipped: list[int] = []
    for block, direction in sorted(vector.items()):
        value = np.asarray(direction, dtype=np.float32)
        other = reference.get(block)
        if other is not None and float(np.dot(value, np.asarray(other, np.float32))) < 0:
            value = -value
            flipped.append(block)
        out[block] = value
    return out, flipped


def _span(blocks: Sequence[int]) -> str:
    return f"{blocks[0]}..{blocks[-1]} ({len(blocks)})" if blocks else "none"
