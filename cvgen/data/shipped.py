"""Load and validate cvgen's text data: prompt stems, axes and writing prompts.

Shipped data lives in the wheel under `cvgen/data/` (in a source checkout, at the repository
root: `prompt_stems.json`, `axes/`, `writing_prompts.txt`). Users may pass their own axis file
(any path ending in `.json`) and their own writing prompts (`.txt`, `.jsonl`, `.csv`,
`.parquet`, or a Hugging Face dataset name).

Every error is a `DataError` whose one-line message names the file, the field and the value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.common.files import DataError, read_text_file
from cvgen.common.messages import json_error_text, plural
from cvgen.data import prompt_files
from cvgen.data.axis_fields import AxisStatistic, axis_method_field, axis_statistics, json_type

AXIS_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PROMPT_FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
PROMPT_COLUMN_GUESSES = ("prompt", "text", "instruction", "question", "input")


@dataclass(frozen=True)
class Stems:
    """Persona stems: every (pre, post) pair gives one stem `"{pre} {post}"`."""

    pre: tuple[str, ...]
    post: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.pre) * len(self.post)

    def stem(self, index: int) -> str:
        """Stem number `index` in [0, len(self)): pre index `index // len(post)`."""
        pre, post = divmod(index, len(self.post))
        return f"{self.pre[pre]} {self.post[post]}"


@dataclass(frozen=True)
class Axis:
    """One axis: its two classes (negative first), its continuation pairs, and the text
    statistics `cvgen eval` measures on it (none when the file names none)."""

    name: str
    classes: tuple[str, str]
    pairs: tuple[tuple[str, str], ...]
    description: str = ""
    source: str = ""
    statistics: tuple[AxisStatistic, ...] = ()
    method: str | None = None  # the file's `method`: its solver under --method auto

    @property
    def negative(self) -> str:
        return self.classes[0]

    @property
    def positive(self) -> str:
        return self.classes[1]


def data_root() -> Path:
    """Folder holding the shipped data: `cvgen/data` in a wheel, else the source checkout root."""
    packaged = Path(__file__).resolve().parent
    if (packaged / "prompt_stems.json").is_file():
        return packaged
    return packaged.parent.parent


def _read_json(path: Path, what: str = "a JSON file") -> Any:
    try:
        return json.loads(read_text_file(path, what))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({json_error_text(exc)})") from None


def _string_list(path: Path, field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{path}: field '{field}' must be a non-empty list of strings")
    items: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{path}: field '{field}[{index}]' must be a non-empty string")
        items.append(item.strip())
    return tuple(items)


def load_stems(path: Path | None = None) -> Stems:
    """Load `prompt_stems.json`: {"pre": [...], "post": [...]}."""
    path = path or data_root() / "prompt_stems.json"
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object with fields 'pre' and 'post'")
    for field in ("pre", "post"):
        if field not in raw:
            raise DataError(f"{path}: field '{field}' is missing")
    return Stems(_string_list(path, "pre", raw["pre"]), _string_list(path, "post", raw["post"]))


def shipped_axis_names() -> list[str]:
    """Names of the axes that ship with cvgen, sorted."""
    return sorted(p.stem for p in (data_root() / "axes").glob("*.json"))


def _check_pair(path: Path, index: int, pair: Any) -> tuple[str, str]:
    field = f"data[{index}]"
    if not isinstance(pair, list) or len(pair) != 2:
        got = plural(len(pair), "item") if isinstance(pair, list) else json_type(pair)
        raise DataError(f"{path}: field '{field}' has {got}; expected [negative, positive]")
    sides: list[str] = []
    for position, (side, text) in enumerate(zip(("negative", "positive"), pair, strict=True)):
        if not isinstance(text, str):
            raise DataError(
                f"{path}: field '{field}[{position}]' is {json_type(text)}, not a string; "
                f"expected the {side} continuation"
            )
        cleaned = text.strip().rstrip(".").rstrip()
        if not cleaned:
            raise DataError(f"{path}: field '{field}[{position}]' is an empty {side} continuation")
        sides.append(cleaned)  # the period is added when the sentence is built
    if sides[0] == sides[1]:
        raise DataError(f"{path}: field '{field}' has the same text on both sides: '{sides[0]}'")
    return sides[0], sides[1]


def parse_axis(path: Path, raw: Any, *, default_name: str) -> Axis:
    """Validate the JSON content of an axis file and return the `Axis`."""
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object with fields 'classes' and 'data'")
    if "name" not in raw:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", default_name).strip("_.-")
        if not name:
            raise DataError(
                f"{path}: cannot make an axis name from the file name; add a 'name' field"
            )
    else:
        name = raw["name"]
    if not isinstance(name, str) or not AXIS_NAME_PATTERN.match(name):
        raise DataError(
            f"{path}: field 'name' is '{name}'; use letters, digits, '_', '-' or '.' only"
        )
    for field in ("classes", "data"):
        if field not in raw:
            raise DataError(f"{path}: field '{field}' is missing")
    classes = raw["classes"]
    if (
        not isinstance(classes, list)
        or len(classes) != 2
        or not all(isinstance(c, str) and c.strip() for c in classes)
    ):
        raise DataError(
            f"{path}: field 'classes' is {json.dumps(classes)}; "
            "expected two non-empty names [negative, positive]"
        )
    if classes[0].strip() == classes[1].strip():
        raise DataError(f"{path}: field 'classes' names the same class twice: '{classes[0]}'")
    data = raw["data"]
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: field 'data' must be a non-empty list of [negative, positive]")
    pairs: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(data):
        pair = _check_pair(path, index, item)
        if pair in seen:
            raise DataError(f"{path}: field 'data[{index}]' duplicates data[{seen[pair]}]")
        seen[pair] = index
        pairs.append(pair)
    description = raw.get("description", "")
    return Axis(
        name=name,
        classes=(classes[0].strip(), classes[1].strip()),
        pairs=tuple(pairs),
        description=description if isinstance(description, str) else "",
        source=str(path),
        statistics=axis_statistics(path, raw),
        method=axis_method_field(path, raw),
    )


def load_axis(name_or_path: str) -> Axis:
    """Load a shipped axis by name, or a user's axis file by path (ending in .json)."""
    candidate = Path(name_or_path).expanduser()
    if name_or_path.endswith(".json") or candidate.is_file():
        raw = _read_json(candidate, "an axis .json file")
        return parse_axis(candidate, raw, default_name=candidate.stem)
    path = data_root() / "axes" / f"{name_or_path}.json"
    if not path.is_file() and candidate.is_dir():
        raise DataError(f"--axis {name_or_path}: is a folder, not an axis .json file")
    if not path.is_file():
        raise DataError(
            f"unknown axis '{name_or_path}'; shipped axes: {', '.join(shipped_axis_names())} "
            "(or pass the path of your own .json axis file)"
        )
    return parse_axis(path, _read_json(path), default_name=name_or_path)


def _clean_prompts(source: str, items: Sequence[Any], field: str) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for index, item in enumerate(items):
        if item is None:
            continue
        if not isinstance(item, str):
            raise DataError(f"{source}: {field} row {index} is {type(item).__name__}, not text")
        text = " ".join(item.split())
        if text:
            out.setdefault(text, None)
    if not out:
        raise DataError(f"{source}: no non-empty writing prompts found in {field}")
    return tuple(out)


def _pick_column(source: str, columns: Sequence[str], column: str | None) -> str:
    if column is not None:
        if column not in columns:
            raise DataError(f"{source}: column '{column}' not found; columns: {', '.join(columns)}")
        return column
    for guess in PROMPT_COLUMN_GUESSES:
        if guess in columns:
            return guess
    if len(columns) == 1:
        return columns[0]
    raise DataError(
        f"{source}: cannot tell which column holds the prompts; pass --prompts-column "
        f"(columns: {', '.join(columns)})"
    )


def _column_prompts(source: str, records: Sequence[Any], column: str | None) -> tuple[str, ...]:
    """The prompts in one column of the `Record`s of local files (see `cvgen.data.prompt_files`);
    a value that is not text is refused naming its file and line."""
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record.values))
    chosen = _pick_column(source, list(columns), column)
    items = []
    for record in records:
        value = record.values.get(chosen)
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{record.file}: {record.where}: column '{chosen}' is "
                f"{type(value).__name__}, not text"
            )
        items.append(value)
    return _clean_prompts(source, items, f"column '{chosen}'")


def _load_local(source: str, path: Path, column: str | None) -> tuple[str, ...]:
    """Prompts from a local .jsonl/.json/.csv/.parquet file or a folder of prompt files,
    read by cvgen itself (never through `datasets`, so nothing lands in its cache)."""
    if path.is_dir():
        return _column_prompts(source, prompt_files.read_prompt_folder(path), column)
    if path.suffix.lower() == ".txt":
        lines = read_text_file(path, "a prompts file").splitlines()
        return _clean_prompts(source, lines, "lines")
    return _column_prompts(source, prompt_files.read_prompt_file(path), column)


def _load_with_datasets(source: str, split: str, column: str | None) -> tuple[str, ...]:
    """Prompts from a Hugging Face dataset name, loaded with `datasets`."""
    import datasets  # imported lazily: it is slow to import

    try:
        table = datasets.load_dataset(source, split=split)
    except Exception as exc:  # datasets raises many types (network, hub, parse errors)
        detail = " ".join(str(exc).split())[:300]
        raise DataError(f"{source}: cannot load prompts ({type(exc).__name__}: {detail})") from None
    chosen = _pick_column(source, list(table.column_names), column)
    return _clean_prompts(source, table[chosen], f"column '{chosen}'")


def load_writing_prompts(
    source: str | None = None, *, split: str = "train", column: str | None = None
) -> tuple[str, ...]:
    """Writing prompts, de-duplicated, in file order.

    `source` None: the shipped list. A path ending in .txt: one prompt per line. .jsonl, .json,
    .csv, .parquet: a column of the file (`column`, or the first of prompt/text/instruction/...).
    A local folder: the rows of every such file in it (one format per folder), in path order.
    Anything else: a Hugging Face dataset name, loaded with `datasets` (`split`, `column`).
    Local files are parsed by cvgen, so an error names the file and the line.
    """
    if source is None:
        if column is not None:
            raise DataError(
                f"--prompts-column {column}: applies only to a --prompts file or dataset, "
                "and none is given"
            )
        path = data_root() / "writing_prompts.txt"
        if not path.is_file():
            raise DataError(f"{path}: the shipped writing prompts are missing; reinstall cvgen")
        return _clean_prompts(str(path), path.read_text(encoding="utf-8").splitlines(), "lines")
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".txt" and column is not None:
        raise DataError(
            f"--prompts-column {column}: does not apply to {source}, a .txt file holds one "
            "prompt per line; drop the option"
        )
    if path.is_dir():
        return _load_local(source, path, column)
    if path.is_file() and suffix not in PROMPT_FILE_SUFFIXES:
        raise DataError(
            f"{source}: unsupported prompt file type '{path.suffix}'; "
            "use .txt, .jsonl, .json, .csv or .parquet"
        )
    if suffix in PROMPT_FILE_SUFFIXES:
        if not path.exists():
            raise DataError(f"{source}: file not found")
        return _load_local(source, path, column)
    return _load_with_datasets(source, split, column)


def prompt_location(source: str | None, prompt: str, index: int) -> str:
    """Where writing prompt number `index` (after de-duplication) comes from, for messages:
    "FILE line L" for a .txt file or the shipped list (the first line that cleans to
    `prompt`), else "SOURCE prompt I"."""
    path = data_root() / "writing_prompts.txt" if source is None else Path(source).expanduser()
    if path.suffix.lower() == ".txt" and path.is_file():
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if " ".join(line.split()) == prompt:
                    return f"{source or path} line {number}"
    return f"{source or path} prompt {index + 1}"
