"""The typed manifest (cvgen.pack.records, cvgen.pack.manifest): read once and checked, written
back as the same JSON (keys, values, order, explicit nulls, unknown keys), a manifest of another
format version refused in one line, and every check's message."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from manifests import hostile_manifest, sample_manifest, write_manifest

from cvgen.pack.errors import PackError
from cvgen.pack.manifest import load_manifest, manifest_text, parse_manifest, save_manifest
from cvgen.pack.records import SafeScale


def _odd_manifest() -> dict[str, Any]:
    """A manifest in an unusual key order, with explicit nulls and keys cvgen does not know."""
    manifest = sample_manifest()
    manifest["evaluation"] = {"backend": "hf", "kl_budget": 0.1}
    manifest["added_by_user"] = {"note": [1, 2, {"x": None}]}
    manifest["model"]["n_embd"] = 32
    manifest["model"]["hint"] = None
    manifest["axes"]["optimism"]["description"] = None
    manifest["axes"]["optimism"]["files"]["mine"] = "kept.txt"
    manifest["axes"]["language"]["safe_scale"]["note"] = "calibrated"
    manifest["samples"] = {"count": 3, "file": "samples.jsonl"}
    return dict(reversed(list(manifest.items())))


@pytest.mark.parametrize("make", [sample_manifest, hostile_manifest, _odd_manifest])
def test_read_then_write_gives_the_same_json(tmp_path: Path, make: Any) -> None:
    written = make()
    pack = write_manifest(tmp_path / "pack", written)
    manifest = load_manifest(pack)
    assert manifest.to_json() == written
    assert json.dumps(manifest.to_json()) == json.dumps(written)  # the order too
    save_manifest(pack, manifest)
    assert (pack / "pack.json").read_text(encoding="utf-8") == json.dumps(written, indent=2) + "\n"


def test_the_records_hold_the_typed_fields() -> None:
    manifest = parse_manifest(_odd_manifest(), "pack.json")
    assert manifest.model.n_layer == 6 and manifest.model.whole_number("n_embd") == 32
    assert manifest.model.hint is None
    language = manifest.axes["language"]
    assert language.classes == ("simple", "ornate")
    assert language.files.of("positive") == "m-language__ornate.gguf"
    assert language.safe_scale == SafeScale(0.8, 1.25, extra={"note": "calibrated"})
    assert manifest.presets == {"vivid-dialogue": {"dialogue": 0.4, "language": 0.5}}
    assert manifest.llama_cpp_commit == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert manifest.extra["added_by_user"] == {"note": [1, 2, {"x": None}]}
    assert manifest.samples is not None and manifest.samples.file == "samples.jsonl"


def test_a_changed_field_is_written_and_a_removed_one_left_out() -> None:
    manifest = parse_manifest(sample_manifest(), "pack.json")
    manifest.axes["language"].safe_scale = None
    manifest.axes["tense"].safe_scale = SafeScale(0.5, 2.0)
    manifest.extra["evaluation"] = {"backend": "hf"}
    data = json.loads(manifest_text(manifest))
    assert "safe_scale" not in data["axes"]["language"]
    assert data["axes"]["tense"]["safe_scale"] == {"negative": 0.5, "positive": 2.0}
    assert list(data)[-1] == "evaluation"  # a new key comes after those read


@pytest.mark.parametrize("version", [2, 0, "1", None, True])
def test_another_format_version_is_refused_in_one_line(tmp_path: Path, version: Any) -> None:
    manifest = sample_manifest()
    manifest["format_version"] = version
    pack = write_manifest(tmp_path / "pack", manifest)
    with pytest.raises(PackError) as caught:
        load_manifest(pack)
    assert str(caught.value) == (
        f"{pack / 'pack.json'}: field 'format_version' is {version!r}, but this cvgen reads "
        "packs of format version 1 only; use the cvgen that wrote the pack, or make the pack again"
    )


def test_a_manifest_without_a_version_is_read_and_written_without_one() -> None:
    manifest = sample_manifest()
    del manifest["format_version"]
    assert parse_manifest(manifest, "pack.json").to_json() == manifest


def _set(path: str, value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(sample_manifest())
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return manifest


FILE_RULE = (
    "expected a plain .gguf file name in the pack folder (letters, digits, '_', '-', '.'; no '/')"
)
MESSAGES = [
    ("format", "gguf", "field 'format' is not 'cvgen-pack'"),
    ("model", KeyError, "field 'model' is missing or not an object"),
    ("model", [], "field 'model' is missing or not an object"),
    ("model.n_layer", 1, "field 'model.n_layer' is 1, expected an integer >= 2"),
    ("model.n_layer", True, "field 'model.n_layer' is True, expected an integer >= 2"),
    ("model.source", 3, "field 'model.source' is 3, expected a string"),
    ("model.hint", ["h"], "field 'model.hint' is ['h'], expected a string"),
    ("axes", {}, "field 'axes' is missing, empty or not an object"),
    ("axes.tense", "x", "field 'axes.tense' is not an object"),
    ("axes.tense.classes", ["past"], "field 'axes.tense.classes' is ['past'], expected two"),
    ("axes.tense.classes", ["a", "a"], "field 'axes.tense.classes' names the class 'a' twice"),
    ("axes.tense.description", 1, "field 'axes.tense.description' is 1, expected a string"),
    ("axes.tense.files", None, "field 'axes.tense.files' is missing or not an object"),
    ("axes.tense.files.positive", "", "field 'axes.tense.files.positive' is '', expected a file"),
    (
        "axes.tense.files.positive",
        "a/b.gguf",
        f"'axes.tense.files.positive' is 'a/b.gguf', {FILE_RULE}",
    ),
    ("axes.tense.safe_scale", 1, "field 'axes.tense.safe_scale' is 1, expected an object"),
    (
        "axes.language.safe_scale.negative",
        0,
        "field 'axes.language.safe_scale.negative' is 0, expected a positive number",
    ),
    ("presets", [1], "field 'presets' is not an object"),
    ("presets.x", {"nope": 1}, "preset 'x' names unknown axis 'nope'; the pack has:"),
    ("presets.x", {"tense": "1"}, "presets.x.tense is 1, not a number"),
    ("llama_cpp.commit", 7, "field 'llama_cpp.commit' is 7, expected a string"),
    ("llama_cpp", 7, "field 'llama_cpp.commit' is 7, expected a string"),
    ("prompt_format", "jinja", "field 'prompt_format' is 'jinja', expected one of: "),
]


@pytest.mark.parametrize(("path", "value", "message"), MESSAGES)
def test_every_check_names_the_source_field_and_value(path: str, value: Any, message: str) -> None:
    with pytest.raises(PackError) as caught:
        parse_manifest(_set(path, value), "/p/pack.json")
    text = str(caught.value)
    assert text.startswith("/p/pack.json: ") and message in text
    assert "\n" not in text


def test_an_axis_name_with_control_characters_is_refused() -> None:
    manifest = sample_manifest()
    manifest["axes"]["bad\nname"] = manifest["axes"].pop("tense")
    manifest["presets"] = {}
    with pytest.raises(PackError, match="axis name 'bad\\\\nname' is empty or holds control"):
        parse_manifest(manifest, "pack.json")
