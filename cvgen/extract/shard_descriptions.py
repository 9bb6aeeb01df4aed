"""Shard descriptions: what each part of a run's samples holds, and which of them `solve` merges.

Shards are parts of a run's samples, collected on any process or machine, merged to solve.

`cvgen collect --shard i/N` collects the rows `ShardSpec(i, N).rows(n)` of every array of a run
(the baseline and each axis's two classes: the same sample rows for every kind of text) into the
ordinary state store, and writes a description, `<store>/shards/<key>.json`, that lists exactly
which sample indices it covers and what fixed its states: the model's identity, dtype,
quantisation, stored blocks and a digest of every prompt text of the run (the plan digest).

`cvgen solve` reads the descriptions in a store, keeps those of its own run, checks that they
cover every sample exactly once (`select_shards`) and are complete, and merges them in sample
order (`cvgen.extract.shard_merge`). Indices are 0-based, like torchrun's RANK: a run in 4
shards has shards 0/4 .. 3/4 (`cvgen.extract.shard_spec`). The split is contiguous,
so shards of a run may also come from different splits (0/2 with 2/4 and 3/4), as long as no
sample is covered twice. Every name in a store is relative, so a store folder copied between
machines (rsync) keeps working.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvgen.common.messages import json_error_text
from cvgen.extract.shard_spec import ShardError, ShardSpec
from cvgen.extract.store_keys import texts_digest

SHARD_FORMAT = "cvgen-shard"
SHARD_FORMAT_VERSION = 1
SHARDS_FOLDER = "shards"
# settings that change the prompt texts, named when two runs' texts differ
TEXT_SETTINGS = (
    "axes",
    "samples",
    "seed",
    "system_message",
    "prompts",
    "prompts_split",
    "prompts_column",
)


def plan_digest(texts: Mapping[str, Sequence[str]]) -> str:
    """SHA-256 over every array's name and the digest of all its texts: equal for two runs
    exactly when they would feed the model the same prompts in the same sample order."""
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(f"{name}\0{texts_digest(texts[name])}\0".encode())
    return digest.hexdigest()


def format_rows(rows: Sequence[int] | np.ndarray) -> str:
    """Sample indices as ranges: [0, 1, 2, 5] -> "0..2, 5"."""
    values = sorted(int(row) for row in rows)
    if not values:
        return "none"
    runs: list[list[int]] = [[values[0], values[0]]]
    for value in values[1:]:
        if value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


@dataclass(frozen=True)
class ShardDescription:
    """What a shard holds and what fixed its states; stored as `<store>/shards/<key>.json`."""

    spec: ShardSpec
    samples: tuple[int, ...]
    plan_samples: int
    plan_digest: str
    model_identity: str
    model_name: str
    dtype: str
    quantization: str
    blocks: tuple[int, ...]
    width: int
    arrays: dict[str, str]  # array name -> store key
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Content key of the shard: the run it belongs to and its place in it."""
        description = {
            "model": self.model_identity,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "blocks": list(self.blocks),
            "plan": self.plan_digest,
            "shard": str(self.spec),
        }
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHARD_FORMAT,
            "format_version": SHARD_FORMAT_VERSION,
            "shard": str(self.spec),
            "samples": list(self.samples),
            "plan": {"samples": self.plan_samples, "digest": self.plan_digest},
            "model": {"identity": self.model_identity, "name": self.model_name},
            "dtype": self.dtype,
            "quantization": self.quantization,
            "blocks": list(self.blocks),
            "width": self.width,
            "arrays": dict(self.arrays),
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, data: Any, path: Path) -> ShardDescription:
        """Parse a description file's JSON; a one-line `ShardError` naming the field if bad."""
        if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
            raise ShardError(f"{path}: field 'format' is not '{SHARD_FORMAT}'")
        if data.get("format_version") != SHARD_FORMAT_VERSION:
            raise ShardError(
                f"{path}: field 'format_version' is {data.get('format_version')!r}, this cvgen "
                f"reads {SHARD_FORMAT_VERSION}"
            )
        try:
            spec = ShardSpec.parse(str(data["shard"]))
            description = cls(
                spec=spec,
                samples=tuple(int(row) for row in data["samples"]),
                plan_samples=int(data["plan"]["samples"]),
                plan_digest=str(data["plan"]["digest"]),
                model_identity=str(data["model"]["identity"]),
                model_name=str(data["model"]["name"]),
                dtype=str(data["dtype"]),
                quantization=str(data["quantization"]),
                blocks=tuple(int(block) for block in data["blocks"]),
                width=int(data["width"]),
                arrays={str(name): str(key) for name, key in data["arrays"].items()},
                settings=dict(data.get("settings") or {}),
                path=path,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ShardError(
                f"{path}: malformed shard description ({type(exc).__name__}: {exc})"
            ) from None
        rows = description.samples
        if list(rows) != sorted(set(rows)) or (
            rows and not 0 <= rows[0] <= rows[-1] < description.plan_samples
        ):
            raise ShardError(
                f"{path}: field 'samples' is not an ascending list of indices below "
                f"{description.plan_samples}"
            )
        return description

    def write(self, root: Path) -> Path:
        """Write `<root>/shards/<key>.json` atomically; return its path."""
        folder = root / SHARDS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.key}.json"
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def read_shard_descriptions(root: Path) -> list[ShardDescription]:
    """Every shard description in the store `root`, in file-name order."""
    descriptions = []
    for path in sorted((root / SHARDS_FOLDER).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ShardError(f"{path}: not valid JSON ({json_error_text(exc)})") from None
        descriptions.append(ShardDescription.from_json(data, path))
    return descriptions


@dataclass(frozen=True)
class ExpectedRun:
    """What `cvgen solve` expects of its shards. `dtype` None accepts any one dtype."""

    model_identity: str
    model_name: str
    dtype: str | None
    quantization: str
    blocks: tuple[int, ...]
    plan_digest: str
    plan_samples: int
    settings: dict[str, Any]


def mismatch(description: ShardDescription, expected: ExpectedRun) -> str | None:
    """Why the shard is not part of the expected run ("was collected with a different
    model (...)"), or None when it is."""
    if description.model_identity != expected.model_identity:
        return (
            f"was collected with a different model ({description.model_name} "
            f"{description.model_identity}, not {expected.model_name} {expected.model_identity})"
        )
    if description.quantization != expected.quantization:
        return (
            f"was collected with --load-in {description.quantization}, not {expected.quantization}"
        )
    if expected.dtype is not None and description.dtype != expected.dtype:
        return (
            f"was collected in {description.dtype}, not {expected.dtype} "
            f"(pass --dtype {description.dtype})"
        )
    if description.blocks != expected.blocks:
        return (
            f"stores blocks {format_rows(description.blocks)}, not {format_rows(expected.blocks)} "
            "(different --skip-first/--skip-last)"
        )
    if description.plan_digest != expected.plan_digest:
        changed = [
            f"{name} {description.settings.get(name)!r}, not {expected.settings.get(name)!r}"
            for name in TEXT_SETTINGS
            if description.settings.get(name) != expected.settings.get(name)
        ]
        why = (
            "; ".join(changed)
            if changed
            else "same settings, so the axis, stem or prompt files differ between the machines"
        )
        return f"was collected for different prompt texts ({why})"
    return None


def select_shards(
    descriptions: Sequence[ShardDescription], expected: ExpectedRun, *, root: Path
) -> list[ShardDescription]:
    """The shards of the expected run, ordered by their first sample; they cover every sample
    exactly once. Shards of other runs are ignored unless they would have filled a gap.
    Raises a one-line `ShardError` naming the missing, overlapping or mismatched shard."""
    ours = [d for d in descriptions if mismatch(d, expected) is None]
    others = [d for d in descriptions if mismatch(d, expected) is not None]
    dtypes = sorted({d.dtype for d in ours})
    if len(dtypes) > 1:
        raise ShardError(
            f"{root}: this run's shards were collected in several dtypes ({', '.join(dtypes)}); "
            "pass --dtype to choose one"
        )
    owner = np.full(expected.plan_samples, -1, dtype=np.int64)
    for position, description in enumerate(ours):
        rows = np.asarray(description.samples, dtype=np.int64)
        taken = rows[owner[rows] >= 0]
        if taken.size:
            first = ours[int(owner[taken[0]])]
            raise ShardError(
                f"{root}: samples {format_rows(taken)} are in both shard {first.spec} and shard "
                f"{description.spec}; keep one split (delete the other's description from "
                f"{root / SHARDS_FOLDER})"
            )
        owner[rows] = position
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        raise ShardError(_gap_message(missing, ours, others, expected, root))
    return sorted(ours, key=lambda d: (d.samples[0] if d.samples else -1, d.spec))


def _gap_message(
    missing: np.ndarray,
    ours: Sequence[ShardDescription],
    others: Sequence[ShardDescription],
    expected: ExpectedRun,
    root: Path,
) -> str:
    gap = set(missing.tolist())
    if not ours:
        if others:
            other = others[0]
            reason = mismatch(other, expected)
            return f"{root}: no shard of this run; shard {other.spec} there {reason}"
        return (
            f"{root}: no shard of this run (run cvgen collect --store {root} with the same "
            "options first)"
        )
    for other in others:
        if gap & set(other.samples):
            reason = mismatch(other, expected)
            return f"{root}: shard {other.spec} {reason}; recollect it with these settings"
    counts = {d.spec.count for d in ours}
    if len(counts) == 1:
        count = counts.pop()
        present = {d.spec.index for d in ours}
        absent = [ShardSpec(i, count) for i in range(count) if i not in present]
        names = ", ".join(str(spec) for spec in absent[:8])
        if len(absent) > 8:
            names += f" and {len(absent) - 8} more"
        return (
            f"{root}: shard{'s' if len(absent) > 1 else ''} {names} missing (samples "
            f"{format_rows(missing)}); run cvgen collect --shard {absent[0]} with the same options"
        )
    return f"{root}: samples {format_rows(missing)} are in no shard of this run"
