"""A run's inputs: the stems, axes and writing prompts it loads, the samples it draws, and the
texts of every row of every array (system texts, then the chat-formatted prompts)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.common.files import DataError
from cvgen.data.shipped import (
    Axis,
    Stems,
    load_axis,
    load_stems,
    load_writing_prompts,
    prompt_location,
)
from cvgen.extract.chat import render_text, tokenize_texts
from cvgen.extract.sampler import (
    SamplePlan,
    axis_texts,
    baseline_text,
    draw_samples,
    max_distinct_triples,
)
from cvgen.generate.settings import GenerateSettings

log = logging.getLogger("cvgen")


BASELINE = "baseline"


class GenerateError(CvgenError, RuntimeError):
    """The run cannot produce a pack (e.g. no block of an axis passed the solver)."""


@dataclass
class RunInputs:
    """The loaded text data and the drawn samples of a run."""

    stems: Stems
    axes: list[Axis]
    prompts: tuple[str, ...]
    plan: SamplePlan


def load_inputs(settings: GenerateSettings) -> RunInputs:
    stems = load_stems()
    axes = [load_axis(name) for name in settings.axes]
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise GenerateError(f"--axis: two axes share a name: {', '.join(names)}")
    prompts = load_writing_prompts(
        settings.prompts, split=settings.prompts_split, column=settings.prompts_column
    )
    _warn_repeated_triples(settings.samples, stems, len(prompts), axes)
    plan = draw_samples(
        settings.samples, stems=stems, n_prompts=len(prompts), axes=axes, seed=settings.seed
    )
    return RunInputs(stems, axes, prompts, plan)


def _warn_repeated_triples(samples: int, stems: Stems, n_prompts: int, axes: list[Axis]) -> None:
    """One warning when `samples` exceeds the distinct (stem, pair, prompt) triples of the
    axis that has the fewest: beyond them the sampler repeats triples."""
    axis = min(axes, key=lambda each: max_distinct_triples(stems, n_prompts, each))
    distinct = max_distinct_triples(stems, n_prompts, axis)
    if samples > distinct:
        log.warning(
            "--samples %d exceeds the %d distinct (stem, pair, prompt) triples of axis '%s' "
            "(%s x %s x %s): triples will repeat; add writing prompts (--prompts) or pairs "
            "for more distinct samples",
            samples,
            distinct,
            axis.name,
            _count(len(stems), "stem"),
            _count(n_prompts, "prompt"),
            _count(len(axis.pairs), "pair"),
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def system_texts(inputs: RunInputs) -> dict[str, list[str]]:
    """System texts of every array: "baseline", then "<axis>/negative", "<axis>/positive"."""
    rows = range(len(inputs.plan))
    texts = {BASELINE: [baseline_text(inputs.plan, inputs.stems, row) for row in rows]}
    for axis in inputs.axes:
        pairs = [axis_texts(inputs.plan, inputs.stems, axis, row) for row in rows]
        texts[f"{axis.name}/negative"] = [negative for negative, _ in pairs]
        texts[f"{axis.name}/positive"] = [positive for _, positive in pairs]
    return texts


def samples_rows(inputs: RunInputs) -> list[dict[str, Any]]:
    rows = []
    for row in range(len(inputs.plan)):
        prompt_index = int(inputs.plan.prompt_index[row])
        rows.append(
            {
                "sample": row,
                "stem_index": int(inputs.plan.stem_index[row]),
                "stem": inputs.stems.stem(int(inputs.plan.stem_index[row])),
                "prompt_index": prompt_index,
                "prompt": inputs.prompts[prompt_index],
                "pairs": {
                    axis.name: int(inputs.plan.pair_index[axis.name][row]) for axis in inputs.axes
                },
            }
        )
    return rows


def render_all(inputs: RunInputs, tokenizer: Any, *, system_turn: bool) -> dict[str, list[str]]:
    """The chat-formatted prompt string of every row of every array."""
    return {
        name: [
            render_text(
                tokenizer,
                text,
                inputs.prompts[int(inputs.plan.prompt_index[row])],
                system_turn=system_turn,
            )
            for row, text in enumerate(texts)
        ]
        for name, texts in system_texts(inputs).items()
    }


def _longest_system_text(inputs: RunInputs) -> str:
    """The longest system text any row can have: the longest stem with the longest
    continuation of any axis (a persona is `"{stem} {continuation}."`)."""
    stem = f"{max(inputs.stems.pre, key=len)} {max(inputs.stems.post, key=len)}"
    sides = [side for axis in inputs.axes for pair in axis.pairs for side in pair]
    return f"{stem} {max(sides, key=len)}."


def check_context(
    settings: GenerateSettings,
    inputs: RunInputs,
    tokenizer: Any,
    context: int | None,
    model: str,
) -> None:
    """Refuse, naming the prompts file and line, a drawn writing prompt whose longest text
    (the longest persona, the chat template) has more tokens than the model's context.

    Only a text of more UTF-8 bytes than the context can have more tokens than it (a token
    covers at least one byte, a special token many; the plain fallback adds one BOS), so only
    the drawn prompts that long are rendered once and tokenized."""
    if context is None:
        return
    persona = _longest_system_text(inputs)
    frame = render_text(tokenizer, persona, "", system_turn=settings.system_message)
    overhead = len(frame.encode("utf-8")) + 1
    for index in np.unique(inputs.plan.prompt_index).tolist():
        prompt = inputs.prompts[index]
        if len(prompt.encode("utf-8")) + overhead <= context:
            continue  # too few bytes to make more tokens than the context
        text = render_text(tokenizer, persona, prompt, system_turn=settings.system_message)
        count = len(tokenize_texts(tokenizer, [text])[0])
        if count > context:
            where = prompt_location(settings.prompts, prompt, index)
            raise DataError(
                f"{where}: this writing prompt makes a text of {count} tokens (with the persona "
                f"and the chat template), more than the {context} tokens of {model}'s context; "
                "shorten it or remove it"
            )
