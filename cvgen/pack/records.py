"""The typed pack manifest (`pack.json`): one record per object of the file.

Each record holds, typed, the fields cvgen validates and relies on; every other key (the model's
config facts, an axis's Fisher ratios, `cvgen eval`'s results, keys a user added) stays in its
`extra`, as read. `to_json()` writes a record back as the JSON object it was read from: the same
keys, values and order (`Layout` remembers the order and which keys were an explicit `null`),
with keys set since then after them. `cvgen.pack.manifest.parse_manifest` builds the records from
JSON, checking it once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cvgen.pack.names import ROLES


@dataclass(frozen=True)
class Layout:
    """How a JSON object was laid out when read: its key order, and the keys that held null."""

    order: tuple[str, ...] = ()
    nulls: frozenset[str] = frozenset()

    @classmethod
    def of(cls, data: dict[str, Any]) -> Layout:
        """The layout of the JSON object `data`."""
        return cls(tuple(data), frozenset(key for key, value in data.items() if value is None))


def json_object(
    known: list[tuple[str, Any]], extra: dict[str, Any], layout: Layout
) -> dict[str, Any]:
    """The JSON object of a record: its `known` (key, value) pairs (a None value only where the
    key held null when read), then `extra`, ordered as `layout` remembers (new keys last)."""
    out = {key: value for key, value in known if value is not None or key in layout.nulls}
    for key, value in extra.items():
        out.setdefault(key, value)
    position = {key: index for index, key in enumerate(layout.order)}
    ordered = sorted(out, key=lambda key: position.get(key, len(position)))
    return {key: out[key] for key in ordered}


@dataclass
class VectorFiles:
    """An axis's three GGUF file names, plain names inside the pack folder."""

    debias: str
    negative: str
    positive: str
    extra: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout, compare=False, repr=False)

    def of(self, role: str) -> str:
        """The file name of `role` ("debias", "negative" or "positive")."""
        return {"debias": self.debias, "negative": self.negative, "positive": self.positive}[role]

    def to_json(self) -> dict[str, Any]:
        """The `files` object of pack.json."""
        return json_object([(role, self.of(role)) for role in ROLES], self.extra, self.layout)


@dataclass
class SafeScale:
    """The calibrated largest |scale| of each pole (`cvgen eval`), both positive and finite."""

    negative: float
    positive: float
    extra: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The `safe_scale` object of pack.json."""
        known = [("negative", self.negative), ("positive", self.positive)]
        return json_object(known, self.extra, self.layout)


@dataclass
class AxisRecord:
    """One axis: its two distinct classes (negative, positive), its files, an optional
    description and safe scale; `extra` holds pairs, source, suggested_scale, layers,
    fisher_ratio and any other key."""

    classes: tuple[str, str]
    files: VectorFiles
    description: str | None = None
    safe_scale: SafeScale | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The axis's object in pack.json's `axes`."""
        known = [
            ("classes", list(self.classes)),
            ("description", self.description),
            ("files", self.files.to_json()),
            ("safe_scale", self.safe_scale.to_json() if self.safe_scale else None),
        ]
        return json_object(known, self.extra, self.layout)


@dataclass
class ModelRecord:
    """The model a pack was made for: its block count (>= 2) and optional name, source and
    GGUF architecture hint; `extra` holds slug, spec, kind, identity, n_embd and config facts."""

    n_layer: int
    name: str | None = None
    source: str | None = None
    hint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout, compare=False, repr=False)

    def whole_number(self, key: str) -> int | None:
        """`extra[key]` when it is an integer (e.g. "n_embd"), else None."""
        value = self.extra.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def text(self, key: str) -> str | None:
        """`extra[key]` when it is a non-empty string (e.g. "spec", "slug"), else None."""
        value = self.extra.get(key)
        return value if isinstance(value, str) and value else None

    def to_json(self) -> dict[str, Any]:
        """The `model` object of pack.json."""
        known = [
            ("name", self.name),
            ("source", self.source),
            ("hint", self.hint),
            ("n_layer", self.n_layer),
        ]
        return json_object(known, self.extra, self.layout)


@dataclass
class SamplesRecord:
    """Where the drawn samples are listed (`file`, normally samples.jsonl); `extra` holds the
    counts of samples, prompts and stems."""

    file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The `samples` object of pack.json."""
        return json_object([("file", self.file)], self.extra, self.layout)


Presets = dict[str, dict[str, float]]  # preset name -> axis -> scale, in order


@dataclass
class PackManifest:
    """The whole `pack.json`: format and version, the model, the axes (in order), the presets,
    the llama.cpp the files were checked against (an object with `commit`, or the commit
    itself), the prompt format, and the samples record. `extra` holds cvgen_version,
    settings, settings_digest, layers, layer_convention, shards, evaluation and any other key."""

    format: str
    model: ModelRecord
    axes: dict[str, AxisRecord]
    format_version: int | None = None
    presets: Presets | None = None
    llama_cpp: dict[str, Any] | str | None = None
    prompt_format: str | None = None
    samples: SamplesRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout, compare=False, repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings (`GenerateSettings.to_dict()`), `{}` when absent or not an object."""
        value = self.extra.get("settings")
        return value if isinstance(value, dict) else {}

    @property
    def llama_cpp_commit(self) -> str | None:
        """The llama.cpp commit the files were checked against, if recorded."""
        if isinstance(self.llama_cpp, dict):
            return self.llama_cpp.get("commit")
        return self.llama_cpp

    def preset_names(self) -> list[str]:
        """The presets' names, in order."""
        return list(self.presets or {})

    def with_presets(self, presets: Presets) -> PackManifest:
        """A copy with `presets` instead of the current ones (the records are shared)."""
        return dataclasses.replace(self, presets=presets)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of pack.json (what `save_manifest` writes, and the page embeds)."""
        known = [
            ("format", self.format),
            ("format_version", self.format_version),
            ("model", self.model.to_json()),
            ("axes", {name: axis.to_json() for name, axis in self.axes.items()}),
            ("samples", self.samples.to_json() if self.samples else None),
            ("presets", self.presets),
            ("llama_cpp", self.llama_cpp),
            ("prompt_format", self.prompt_format),
        ]
        return json_object(known, self.extra, self.layout)
