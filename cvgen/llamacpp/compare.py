"""See a pack steer: greedy llama.cpp completions of one prompt at several scales per axis,
printed side by side (``cvgen compare``), and the checks that a pack fits a model file."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.common.messages import measured_parts
from cvgen.extract.chat import render_chat_prompt, template_of_model_file
from cvgen.llamacpp.binaries import complete, find_binary
from cvgen.llamacpp.commands import format_scale, pack_suggested_scale, vector_arguments
from cvgen.vectors.model_header import ModelFileInfo, read_model_file_info

DEFAULT_PROMPT = (
    "Write the opening paragraph of a story about an old ferryman who finds a letter "
    "addressed to him in a bottle."
)


class PackModelMismatch(CvgenError, ValueError):
    """A pack used with a model whose shape differs from the one it was made for."""


def check_pack_fits_model(manifest: Mapping[str, Any], model: Path, *, pack: Path) -> ModelFileInfo:
    """Raise PackModelMismatch when the model GGUF's width or depth differs from the pack's
    (llama.cpp would refuse the vectors, log an error and run on without them)."""
    info = read_model_file_info(model)
    expected = manifest["model"]
    for what, got in (("n_embd", info.n_embd), ("n_layer", info.n_layer)):
        want = expected.get(what)
        if isinstance(want, int) and want != got:
            made_for = expected.get("name") or expected.get("spec") or "another model"
            raise PackModelMismatch(
                f"{model}: {info.architecture}.{_GGUF_KEYS[what]} is {got}, but pack {pack} was "
                f"made for {made_for} with {what} {want}; llama.cpp would refuse its vectors"
            )
    return info


_GGUF_KEYS = {"n_embd": "embedding_length", "n_layer": "block_count"}


@dataclass(frozen=True)
class AxisOutputs:
    """One axis's greedy completions, one per scale, in scale order."""

    axis: str
    classes: tuple[str, str]
    scales: tuple[float, ...]
    texts: tuple[str, ...]
    note: str = ""  # what `cvgen eval` measured of the axis, when the pack holds it


@dataclass(frozen=True)
class ComparePrompt:
    """What each run completes: ``text`` in the model's chat template (``chat``; a model
    without one gets the bare text), continued for ``n_predict`` greedy tokens."""

    text: str = DEFAULT_PROMPT
    n_predict: int = 64
    chat: bool = True


def compare_scales(
    pack: Path,
    manifest: Mapping[str, Any],
    model: Path,
    *,
    axes: Sequence[str],
    scales: Sequence[float | str],
    prompt: ComparePrompt = ComparePrompt(),
    progress: Callable[[str], None] | None = None,
) -> list[AxisOutputs]:
    """Complete ``prompt`` greedily with each axis of ``pack`` at each scale in llama.cpp.

    Every run is checked from llama.cpp's log: the vectors were applied and no error line.
    Scale 0 loads the axis's debias file alone, as ``cvgen commands`` would; a scale "+" or
    "-" is the axis's suggested scale of that pole (``pack_suggested_scale``).
    """
    info = check_pack_fits_model(manifest, model, pack=pack)
    use_template = prompt.chat and info.chat_template is not None
    template = template_of_model_file(info)
    text = render_chat_prompt(template, prompt.text) if use_template else prompt.text
    n_predict = prompt.n_predict
    binary = find_binary("llama-completion")
    results = []
    for axis in axes:
        outputs = []
        resolved = [
            pack_suggested_scale(manifest, axis, s) if isinstance(s, str) else s for s in scales
        ]
        for scale in resolved:
            if progress is not None:
                progress(f"{axis} {format_scale(scale)}")
            arguments = vector_arguments(manifest, [(axis, scale)], vector_dir=str(pack))
            outputs.append(
                complete(model, text, vectors=arguments, n_predict=n_predict, binary=binary).text
            )
        classes = manifest["axes"][axis]["classes"]
        results.append(
            AxisOutputs(
                axis,
                (classes[0], classes[1]),
                tuple(resolved),
                tuple(s.strip() for s in outputs),
                measured_note(manifest["axes"][axis]),
            )
        )
    return results


def measured_note(record: Mapping[str, Any]) -> str:
    """One line on what `cvgen eval` stored for an axis (its `measured` propensity slope and
    its calibrated suggested scales), or "" for an axis never evaluated."""
    parts = measured_parts(record.get("measured"), missing="?")
    suggested = record.get("suggested_scale")
    if parts is None:
        return ""
    interval, random_slope, verdict = parts
    note = (
        f"measured (cvgen eval): propensity slope {interval} nats/token per unit scale, "
        f"random direction {random_slope}: {verdict}"
    )
    if isinstance(suggested, Mapping) and suggested.get("calibrated"):
        negative, positive = suggested.get("negative"), suggested.get("positive")
        if isinstance(negative, int | float) and isinstance(positive, int | float):
            note += f"; suggested scales -{format_scale(negative)} / +{format_scale(positive)}"
    return note


def format_side_by_side(results: Sequence[AxisOutputs], *, width: int | None = None) -> str:
    """The outputs as text columns, one block per axis, one column per scale."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    blocks = []
    for result in results:
        columns = len(result.scales)
        column_width = max(16, (width - 3 * (columns - 1)) // columns)
        headers = [_scale_header(result, scale) for scale in result.scales]
        wrapped = [textwrap.wrap(text, column_width) or [""] for text in result.texts]
        height = max(len(lines) for lines in wrapped)
        lines = [
            f"== {result.axis}: {result.classes[0]} (-) vs {result.classes[1]} (+) ==",
            *([result.note] if result.note else []),
            " | ".join(header.ljust(column_width) for header in headers).rstrip(),
            "-+-".join("-" * column_width for _ in headers),
        ]
        for row in range(height):
            cells = [(column[row] if row < len(column) else "") for column in wrapped]
            lines.append(" | ".join(cell.ljust(column_width) for cell in cells).rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _scale_header(result: AxisOutputs, scale: float) -> str:
    text = format_scale(scale)
    if text == "0":
        return "0 (debias only)"
    pole = result.classes[1] if scale > 0 else result.classes[0]
    return f"{'+' if scale > 0 else ''}{text} ({pole})"
