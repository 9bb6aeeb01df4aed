"""Hand-written pack manifests shared by the pack, page and wording tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from cvgen.cli import main

HOSTILE = "<script>window.__pwned = 1</script>"


def sample_manifest() -> dict[str, Any]:
    """A hand-written pack manifest: three axes (one calibrated), a preset, a llama.cpp commit."""

    def files(stem: str, negative: str, positive: str) -> dict[str, str]:
        return {
            "debias": f"m-{stem}__debias.gguf",
            "negative": f"m-{stem}__{negative}.gguf",
            "positive": f"m-{stem}__{positive}.gguf",
        }

    return {
        "format": "cvgen-pack",
        "format_version": 1,
        "cvgen_version": "0.1.0",
        "model": {
            "name": "pico-llama",
            "source": "/models/pico llama.Q4_1.gguf",
            "n_layer": 6,
            "n_embd": 32,
            "hint": "llama",
        },
        "settings": {"method": "cross_covariance", "samples": 12},
        "layers": [1, 2, 3, 4],
        "llama_cpp": {"commit": "0c1e57098bba43ac29e6e3b677cdceebdd22334f"},
        "axes": {
            "language": {
                "classes": ["simple", "ornate"],
                "description": "plain or ornate prose",
                "files": files("language", "simple", "ornate"),
                "safe_scale": {"negative": 0.8, "positive": 1.25},
            },
            "optimism": {
                "classes": ["gloomy", "cheerful"],
                "files": files("optimism", "gloomy", "cheerful"),
            },
            "dialogue": {
                "classes": ["narration", "dialogue"],
                "files": files("dialogue", "narration", "dialogue"),
            },
            "tense": {
                "classes": ["past", "present"],
                "files": files("tense", "past", "present"),
            },
        },
        "presets": {"vivid-dialogue": {"dialogue": 0.4, "language": 0.5}},
    }


def hostile_manifest() -> dict[str, Any]:
    """Names and text holding markup, quotes, spaces and non-ASCII, as a hand-edited pack.json
    could; the files stay plain so that the commands work."""
    manifest = sample_manifest()
    manifest["model"]["name"] = f"Modèle «{HOSTILE}» 'q' \"qq\""
    manifest["model"]["hint"] = (
        '</script><script>window.__pwned = 2</script><img src=x onerror="window.__pwned = 3">'
    )
    manifest["llama_cpp"]["commit"] = "<b>abc</b>"
    language = manifest["axes"].pop("language")
    language["classes"] = [f'<i>plain</i> "simple" {HOSTILE}', "orné 'fleuri' 日本語"]
    language["description"] = "<!-- comment --> & \u2028 line"
    manifest["axes"][f"lang {HOSTILE} 'ü'"] = language
    manifest["presets"] = {
        f"pré set {HOSTILE}": {f"lang {HOSTILE} 'ü'": -0.5, "optimism": 1},
    }
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pack.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)
