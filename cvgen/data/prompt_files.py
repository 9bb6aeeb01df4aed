"""Read local writing-prompt files: .jsonl, .json, .csv, .parquet, and folders of them.

They are parsed here, line by line, not through `datasets`: a bad file is a one-line
`DataError` naming the file and the line (or row), nothing is written to the `datasets` cache,
and no log line comes before the error. Each file becomes a list of `Record`s, one per row,
which `cvgen.data.shipped` turns into prompts.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.common.files import DataError, read_text_file

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
FOLDER_SUFFIXES = (".txt", *TABLE_SUFFIXES)


@dataclass(frozen=True)
class Record:
    """One row of a prompt file: where it is ("line 3", "row 3", "item 3") and its values."""

    file: Path
    where: str
    values: dict[str, Any]


def read_prompt_file(path: Path) -> list[Record]:
    """The rows of one .jsonl, .json, .csv, .parquet or .txt file (a .txt line is a row
    with the one column "text"), in file order."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    text = read_text_file(path, "a prompts file")
    if suffix == ".jsonl":
        return _read_json_lines(path, text)
    if suffix == ".json":
        return _read_json(path, text)
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".txt":
        lines = text.split("\n")
        return [Record(path, f"line {n}", {"text": line}) for n, line in enumerate(lines, 1)]
    raise DataError(f"{path}: unsupported prompt file type '{path.suffix}'")


def read_prompt_folder(folder: Path) -> list[Record]:
    """The rows of every prompt file in `folder` and below (hidden ones skipped), files in
    path order. The files must share one format."""
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in FOLDER_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not files:
        raise DataError(
            f"{folder}: the folder holds no {', '.join(FOLDER_SUFFIXES)} file of prompts"
        )
    formats = sorted({path.suffix.lower() for path in files})
    if len(formats) > 1:
        raise DataError(
            f"{folder}: the folder holds {' and '.join(formats)} files; keep one format per folder"
        )
    return [record for path in files for record in read_prompt_file(path)]


def _object_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _read_json_lines(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(value, dict):
            raise DataError(f"{path}: line {number}: is {_object_kind(value)}, not a JSON object")
        records.append(Record(path, f"line {number}", value))
    return records


def _read_json(path: Path, text: str) -> list[Record]:
    """A JSON array of objects, an object of equal-length column arrays, or JSON Lines."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line, as datasets accepts in a .json
            return _read_json_lines(path, text)
        raise DataError(
            f"{path}: line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if isinstance(value, list):
        records: list[Record] = []
        for index, item in enumerate(value, 1):
            if not isinstance(item, dict):
                raise DataError(
                    f"{path}: item {index} of the array is {_object_kind(item)}, not a JSON object"
                )
            records.append(Record(path, f"item {index}", item))
        return records
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {name: len(column) for name, column in value.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"{path}: its column arrays differ in length ({lengths})")
        count = next(iter(lengths.values()))
        return [
            Record(path, f"item {index + 1}", {name: value[name][index] for name in value})
            for index in range(count)
        ]
    raise DataError(
        f"{path}: expected a JSON array of objects, an object of column arrays, "
        "or one object per line"
    )


def _read_csv(path: Path, text: str) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = _csv_row(path, reader)
    if not header:
        raise DataError(f"{path}: line 1: no header line naming the columns")
    if len(set(header)) != len(header):
        twice = next(name for name in header if header.count(name) > 1)
        raise DataError(f"{path}: line 1: column '{twice}' is named twice")
    records: list[Record] = []
    while True:
        line = reader.line_num + 1
        row = _csv_row(path, reader)
        if row is None:
            return records
        if not row:
            continue
        if len(row) > len(header):
            raise DataError(
                f"{path}: line {line}: {len(row)} fields, but the header names {len(header)}"
            )
        values = {
            name: row[i] if i < len(row) and row[i] else None for i, name in enumerate(header)
        }
        records.append(Record(path, f"line {line}", values))


def _csv_row(path: Path, reader: Any) -> list[str] | None:
    """The next row of a strict csv reader, None at the end; a CSV error names the line the
    bad row starts on (a quote left open runs to the end of the file)."""
    line = reader.line_num + 1
    try:
        row: list[str] | None = next(reader, None)
    except csv.Error as exc:
        detail = str(exc)
        if "end of data" in detail:
            detail = "a quoted field is never closed"
        raise DataError(f"{path}: line {line}: not valid CSV ({detail})") from None
    return row


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise DataError(f"{path}: not a readable Parquet file ({detail})") from None
    rows = table.to_pylist()
    return [Record(path, f"row {index}", row) for index, row in enumerate(rows, 1)]
