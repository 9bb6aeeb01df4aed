"""Edited K-quant tensors stored again in their own type, through llama.cpp's `llama-quantize`.

gguf-py cannot quantise the K-quants (Q2_K .. Q6_K), so `rewrite_gguf` alone stores an edited
K-quant tensor as Q8_0. `rewrite_gguf_requantised` does better when the pinned `llama-quantize`
is found (`cvgen.llamacpp.binaries.find_binary`):

1. `rewrite_gguf` writes an intermediate file beside `out` in which each edited K-quant tensor
   is float32 (the other edited tensors are already in their own type, as gguf-py stores them).
2. `llama-quantize --allow-requantize` reads it with a `--tensor-type-file` that names EVERY
   2-D tensor, anchored (`^blk\\.3\\.attn_output\\.weight$=q4_k`), with the type it must end
   in: its own type for all but the float32 ones. In src/llama-quant.cpp (0c1e570) a tensor
   whose target type equals its current type is not quantised: its bytes are copied in slabs.
   1-D tensors (norms, the biases `cvgen bake` adds) are never quantised, so copied too. The
   file type llama-quantize writes (`general.file_type`) is set back to the source's with
   `--override-kv`; it also sets `general.quantization_version` (2) and writes the tensors in
   name order (its weights map is sorted), which llama.cpp does not mind.
3. The written file's tensor table is checked against the plan (every type and byte size);
   then it is renamed to `out`. Any failure leaves no output.

Without `llama-quantize`, or for a model whose tensor names it would not match (its option
parser lowercases names and splits the file on whitespace), the K-quant tensors are stored as
Q8_0, as `rewrite_gguf` does, and the result says so.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType, GGUFValueType

from cvgen.llamacpp.binaries import LlamaCppError, find_binary
from cvgen.vectors.model_header import TensorEntry, read_gguf_layout
from cvgen.weights.gguf_copy import Edit, NewTensor, Rewritten, WeightsError, rewrite_gguf

Q = GGMLQuantizationType
# llama-quantize quantises these from float32 without an importance matrix (with the file type
# Q4_K_M that is passed: `tensor_requires_imatrix` asks one for Q2_K only in a Q2_K_S file)
LLAMA_QUANTISED = frozenset({Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K})
_REGEX_SPECIAL = set("\\^$.|?*+()[]{}")


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's scalar and string metadata (arrays left out) and its tensor table."""

    fields: dict[str, Any]
    tensors: dict[str, TensorEntry]


def read_gguf_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file at `path`, its arrays skipped (`read_gguf_layout`)."""
    layout = read_gguf_layout(path)
    return GGUFHeader(layout.fields, {tensor.name: tensor for tensor in layout.tensors})


@dataclass(frozen=True)
class Requantised:
    """What `rewrite_gguf_requantised` did: every edited tensor (`rewritten`: source type and
    stored type), the names llama-quantize stored again in their own K-quant type, and the
    binary it used (None: not used)."""

    rewritten: list[Rewritten]
    by_llama_quantize: frozenset[str]
    binary: Path | None
    failure: str | None = None  # why llama-quantize could not be used, when it failed

    def summary(self) -> list[str]:
        """One line per (source type, stored type) pair: how many tensors, and by what."""
        counts: dict[tuple[str, str, str], int] = {}
        for item in self.rewritten:
            if item.name in self.by_llama_quantize:
                how = "stored again in its own type by llama-quantize"
            elif item.fell_back and self.failure:
                how = f"stored as Q8_0 (llama-quantize failed: {self.failure})"
            elif item.fell_back:
                how = "stored as Q8_0 (gguf-py cannot quantise it; llama-quantize not used)"
            else:
                how = "stored again in its own type by gguf-py"
            key = (item.source_type, item.stored_type, how)
            counts[key] = counts.get(key, 0) + 1
        return [f"{n} {src} -> {dst}: {how}" for (src, dst, how), n in sorted(counts.items())]


def find_llama_quantize() -> Path | None:
    """The pinned build's `llama-quantize`, or None when it is not found."""
    try:
        return find_binary("llama-quantize")
    except LlamaCppError:
        return None


def rewrite_gguf_requantised(
    source: Path,
    out: Path,
    *,
    fields: Mapping[str, tuple[Any, GGUFValueType]],
    added: Mapping[str, NewTensor] | None = None,
    edits: Mapping[str, Edit] | None = None,
    llama_quantize: Path | None = None,
    threads: int = 0,
) -> Requantised:
    """`rewrite_gguf(source, out, ...)`, with each edited K-quant tensor stored again in its
    own type by `llama_quantize` (see the module docstring); without it (None) they are
    stored as Q8_0. `threads` is llama-quantize's thread count (0: all cores)."""
    source, out = Path(source), Path(out)
    edits = dict(edits or {})
    header = read_gguf_header(source)
    k_edited = {
        n for n in edits if n in header.tensors and header.tensors[n].kind in LLAMA_QUANTISED
    }
    if llama_quantize is None or not k_edited or not _names_pass(header):
        done = rewrite_gguf(source, out, fields=fields, added=added, edits=edits)
        return Requantised(done, frozenset(), None)
    if out.resolve() == source.resolve():
        raise WeightsError(f"--out {out}: it is the input model; choose another file")
    middle = out.with_name(f".{out.name}.f32-{os.getpid()}")
    final = out.with_name(f".{out.name}.quantised-{os.getpid()}")
    types = middle.with_name(middle.name + ".types")
    try:
        store = dict.fromkeys(k_edited, Q.F32)
        done = rewrite_gguf(source, middle, fields=fields, added=added, edits=edits, store_as=store)
        written = {item.name for item in done}
        targets = _targets(read_gguf_header(middle), header, written & k_edited)
        types.write_text("".join(f"{_anchored(n)}={k.name.lower()}\n" for n, k in targets.items()))
        _run(llama_quantize, middle, final, types, header, threads)
        _check_written(final, targets)
        os.replace(final, out)
    except WeightsError as exc:
        if not str(exc).startswith(str(llama_quantize)):
            raise
        # llama-quantize refused the file (it wants a model llama.cpp can load): Q8_0, said
        done = rewrite_gguf(source, out, fields=fields, added=added, edits=edits)
        return Requantised(done, frozenset(), None, str(exc).rsplit(": ", 1)[-1])
    finally:
        for path in (middle, final, types):
            path.unlink(missing_ok=True)
    requantised = written & k_edited
    rewritten = [
        Rewritten(r.name, r.source_type, r.source_type) if r.name in requantised else r
        for r in done
    ]
    return Requantised(rewritten, frozenset(requantised), Path(llama_quantize))


def _names_pass(header: GGUFHeader) -> bool:
    """Whether llama-quantize's option parser keeps every tensor name as it is."""
    return all(
        name == name.lower() and not any(c.isspace() for c in name) for name in header.tensors
    )


def _anchored(name: str) -> str:
    """`name` as a regular expression that matches it only."""
    return "^" + "".join("\\" + c if c in _REGEX_SPECIAL else c for c in name) + "$"


def _targets(
    middle: GGUFHeader, source: GGUFHeader, requantised: set[str]
) -> dict[str, GGMLQuantizationType]:
    """The type each tensor of the intermediate file must end in: the source's own for the
    tensors requantised here, the type it already has for every other."""
    return {
        name: source.tensors[name].kind if name in requantised else entry.kind
        for name, entry in middle.tensors.items()
    }


def _run(
    binary: Path, middle: Path, final: Path, types: Path, source: GGUFHeader, threads: int
) -> None:
    """llama-quantize from `middle` to `final` with the per-tensor types of `types`."""
    command = [str(binary), "--allow-requantize", "--tensor-type-file", str(types)]
    file_type = source.fields.get("general.file_type")
    if isinstance(file_type, int):
        command += ["--override-kv", f"general.file_type=int:{file_type}"]
    command += [str(middle), str(final), "Q4_K_M"]
    if threads > 0:
        command.append(str(threads))
    try:
        ran = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    except OSError as exc:
        raise WeightsError(f"{binary}: cannot run it ({exc.strerror or exc})") from None
    if ran.returncode != 0:
        last = (ran.stderr.strip() or ran.stdout.strip() or "no output").splitlines()[-1]
        raise WeightsError(f"{binary} failed (exit {ran.returncode}): {last}")


def _check_written(final: Path, targets: Mapping[str, GGMLQuantizationType]) -> None:
    """Refuse a file from llama-quantize whose tensors are not exactly the planned ones."""
    written = read_gguf_header(final).tensors
    if set(written) != set(targets):
        extra = sorted(set(written) ^ set(targets))
        raise WeightsError(f"{final}: llama-quantize wrote tensor set differing at {extra[0]}")
    for name, kind in targets.items():
        if written[name].kind != kind:
            raise WeightsError(
                f"{final}: llama-quantize stored {name} as {written[name].kind.name}, not "
                f"{kind.name}"
            )
