"""Load and validate the held-out data that `cvgen eval` runs on.

Shipped data lives in the wheel under `cvgen/data/eval/` (in a source checkout, `eval/` at the
repository root):

- `prompts.txt`: creative-writing prompts, one per line, none of them used for extraction
  (blank lines and lines starting with `#` are skipped);
- `neutral.json`: `{"description": ..., "texts": [{"request": ..., "reply": ...}, ...]}`, plain
  factual answers on which a vector's damage to ordinary text is measured;
- `probes/<axis>.json`: `{"axis": ..., "classes": [negative, positive], "description": ...,
  "pairs": [[negative_text, positive_text], ...]}`, openings of a reply that differ in the axis's
  trait, scored as log p(positive) - log p(negative) per token.

Every error is an `EvalDataError` whose one-line message names the file, the field and the value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.common.messages import json_error_text
from cvgen.data.shipped import AXIS_NAME_PATTERN, data_root

OVERLAP_RUN_WORDS = 6


class EvalDataError(CvgenError, ValueError):
    """Bad evaluation data file or field; the message names the file, the field and the value."""


@dataclass(frozen=True)
class NeutralText:
    """One neutral text: a plain user request and a flat, factual assistant reply."""

    request: str
    reply: str


@dataclass(frozen=True)
class Probes:
    """Probe pairs of one axis: `pairs[i]` is (negative text, positive text)."""

    axis: str
    classes: tuple[str, str]
    pairs: tuple[tuple[str, str], ...]
    description: str = ""
    source: str = ""

    @property
    def negative(self) -> str:
        return self.classes[0]

    @property
    def positive(self) -> str:
        return self.classes[1]


@dataclass(frozen=True)
class PromptOverlap:
    """A candidate prompt that repeats a reference prompt, and how (`reason`)."""

    prompt: str
    reference: str
    reason: str


def eval_root() -> Path:
    """Folder of the shipped evaluation data: `cvgen/data/eval` in a wheel, else `eval/`."""
    return data_root() / "eval"


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = f"'{value}'" if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(path: Path, field: str, value: Any, expected: str) -> EvalDataError:
    return EvalDataError(f"{path}: field '{field}' is {_show(value)}, expected {expected}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalDataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _read_json_object(path: Path, fields: Iterable[str]) -> dict[str, Any]:
    """The JSON object in `path`, checked to hold every name in `fields`."""
    try:
        raw = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{path}: not valid JSON ({json_error_text(exc)})") from None
    required = list(fields)
    if not isinstance(raw, dict):
        raise EvalDataError(
            f"{path}: top level is {type(raw).__name__}, expected an object with fields "
            + ", ".join(f"'{name}'" for name in required)
        )
    for name in required:
        if name not in raw:
            raise EvalDataError(f"{path}: field '{name}' is missing")
    return raw


def _text(path: Path, field: str, value: Any) -> str:
    """`value` with its whitespace collapsed; an error unless it is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise _bad(path, field, value, "a non-empty string")
    return " ".join(value.split())


def _non_empty_list(path: Path, field: str, value: Any, expected: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _bad(path, field, value, expected)
    return value


def _description(path: Path, raw: dict[str, Any]) -> str:
    value = raw.get("description", "")
    if not isinstance(value, str):
        raise _bad(path, "description", value, "a string")
    return " ".join(value.split())


def normalise_prompt(text: str) -> str:
    """Lower-case `text`, strip its punctuation and collapse its whitespace."""
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


def load_eval_prompts(path: Path | None = None) -> tuple[str, ...]:
    """Held-out writing prompts in file order (the shipped `prompts.txt` when `path` is None).

    Blank lines and lines starting with `#` are skipped and whitespace is collapsed. Two lines
    that are equal after `normalise_prompt` are an error, and so is a file with no prompt.
    """
    path = path or eval_root() / "prompts.txt"
    prompts: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        text = " ".join(line.split())
        if not text or text.startswith("#"):
            continue
        key = normalise_prompt(text)
        if key in first_line:
            raise EvalDataError(
                f"{path}: field 'line {number}' is {_show(text)}, "
                f"expected a prompt not already on line {first_line[key]}"
            )
        first_line[key] = number
        prompts.append(text)
    if not prompts:
        raise EvalDataError(
            f"{path}: field 'lines' holds no prompt, expected at least one line "
            "that is not blank and does not start with '#'"
        )
    return tuple(prompts)


def _neutral_item(path: Path, index: int, item: Any) -> NeutralText:
    field = f"texts[{index}]"
    if not isinstance(item, dict):
        raise _bad(path, field, item, "an object with fields 'request' and 'reply'")
    for name in ("request", "reply"):
        if name not in item:
            raise EvalDataError(f"{path}: field '{field}.{name}' is missing")
    return NeutralText(
        request=_text(path, f"{field}.request", item["request"]),
        reply=_text(path, f"{field}.reply", item["reply"]),
    )


def load_neutral_texts(path: Path | None = None) -> tuple[NeutralText, ...]:
    """Neutral request/reply texts (the shipped `neutral.json` when `path` is None).

    Each reply must be a distinct non-empty string; whitespace is collapsed.
    """
    path = path or eval_root() / "neutral.json"
    raw = _read_json_object(path, ("texts",))
    _description(path, raw)
    items = _non_empty_list(
        path, "texts", raw["texts"], "a non-empty list of {request, reply} objects"
    )
    texts: list[NeutralText] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        text = _neutral_item(path, index, item)
        if text.reply in first_index:
            raise _bad(
                path,
                f"texts[{index}].reply",
                text.reply,
                f"a reply not already in texts[{first_index[text.reply]}]",
            )
        first_index[text.reply] = index
        texts.append(text)
    return tuple(texts)


def shipped_probe_axes() -> list[str]:
    """Names of the axes that have shipped probes, sorted."""
    return sorted(p.stem for p in (eval_root() / "probes").glob("*.json"))


def _probe_classes(path: Path, value: Any) -> tuple[str, str]:
    expected = "two different non-empty names [negative, positive]"
    if not isinstance(value, list) or len(value) != 2:
        raise _bad(path, "classes", value, expected)
    negative, positive = (_text(path, f"classes[{i}]", name) for i, name in enumerate(value))
    if negative == positive:
        raise _bad(path, "classes", value, expected)
    return negative, positive


def _probe_pair(path: Path, index: int, value: Any) -> tuple[str, str]:
    field = f"pairs[{index}]"
    if not isinstance(value, list) or len(value) != 2:
        raise _bad(path, field, value, "two texts [negative, positive]")
    negative, positive = (_text(path, f"{field}[{i}]", text) for i, text in enumerate(value))
    if negative == positive:
        raise _bad(path, f"{field}[1]", positive, f"a text different from {field}[0]")
    return negative, positive


def parse_probes(path: Path, raw: dict[str, Any], *, axis: str) -> Probes:
    """Validate the JSON object of a probes file for `axis` and return its `Probes`."""
    name = raw["axis"]
    if name != axis:
        raise _bad(path, "axis", name, f"'{axis}'")
    classes = _probe_classes(path, raw["classes"])
    items = _non_empty_list(
        path, "pairs", raw["pairs"], "a non-empty list of [negative, positive] texts"
    )
    pairs: list[tuple[str, str]] = []
    first_index: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        pair = _probe_pair(path, index, item)
        if pair in first_index:
            raise _bad(
                path,
                f"pairs[{index}]",
                list(pair),
                f"a pair not already in pairs[{first_index[pair]}]",
            )
        first_index[pair] = index
        pairs.append(pair)
    return Probes(
        axis=axis,
        classes=classes,
        pairs=tuple(pairs),
        description=_description(path, raw),
        source=str(path),
    )


def load_probes(axis: str, path: Path | None = None) -> Probes:
    """Probe pairs for `axis`: the shipped `probes/<axis>.json`, or the file at `path`.

    The file's `axis` field must equal `axis`. An axis without shipped probes is an error that
    lists the axes that have them.
    """
    if path is None:
        shipped = eval_root() / "probes" / f"{axis}.json"
        if not AXIS_NAME_PATTERN.match(axis) or not shipped.is_file():
            raise EvalDataError(
                f"no shipped probes for axis '{axis}'; shipped probes: "
                f"{', '.join(shipped_probe_axes())} (or pass your own probes file)"
            )
        path = shipped
    raw = _read_json_object(path, ("axis", "classes", "pairs"))
    return parse_probes(path, raw, axis=axis)


def find_probes(axis: str, classes: tuple[str, str]) -> Probes | None:
    """The shipped probes of `axis` if there are any and their classes equal `classes`, else None.

    A user's axis that reuses a shipped name with other classes gets None, not the wrong probes.
    """
    if axis not in shipped_probe_axes():
        return None
    probes = load_probes(axis)
    return probes if probes.classes == tuple(classes) else None


def _word_runs(text: str, length: int) -> set[tuple[str, ...]]:
    words = normalise_prompt(text).split()
    return {tuple(words[i : i + length]) for i in range(len(words) - length + 1)}


def prompt_overlaps(
    prompts: Iterable[str], reference: Iterable[str], *, run_words: int = OVERLAP_RUN_WORDS
) -> list[PromptOverlap]:
    """Prompts that repeat a reference prompt: equal after `normalise_prompt`, or sharing a run
    of `run_words` consecutive normalised words with it. One entry per (prompt, reference) pair,
    in the order of `prompts`, then of `reference`.
    """
    if run_words < 1:
        raise EvalDataError(f"run_words is {run_words}, expected a positive number of words")
    references = [(text, normalise_prompt(text), _word_runs(text, run_words)) for text in reference]
    overlaps: list[PromptOverlap] = []
    for prompt in prompts:
        key, runs = normalise_prompt(prompt), _word_runs(prompt, run_words)
        for text, other_key, other_runs in references:
            if key == other_key:
                overlaps.append(PromptOverlap(prompt, text, "same prompt after normalisation"))
            elif shared := sorted(runs & other_runs):
                reason = f"shares the {run_words}-word run '{' '.join(shared[0])}'"
                overlaps.append(PromptOverlap(prompt, text, reason))
    return overlaps
