"""A small hand-built pack for the serve and chat tests: two axes of random directions on
SmolLM2-135M's blocks 8..20, written in well under a second (no `cvgen generate`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cvgen.pack.manifest import load_manifest
from cvgen.vectors.control_vector import ControlVector

SERVE_AXES = {"language": ("simple", "ornate"), "mood": ("gloomy", "cheerful")}
SERVE_BLOCKS = range(8, 21)
SERVE_N_EMBD = 576  # SmolLM2-135M
SERVE_N_LAYER = 30
POLE_NORM = 6.0  # large enough to change SmolLM2's greedy text visibly
DEBIAS_NORM = 0.05
SAFE_SCALE = 1.5
SERVE_PRESETS = {"vivid": {"language": 0.8, "mood": -0.5}}


def _directions(rng: np.random.Generator, norm: float) -> dict[int, np.ndarray]:
    directions = {}
    for block in SERVE_BLOCKS:
        vector = rng.standard_normal(SERVE_N_EMBD)
        directions[block] = (vector / np.linalg.norm(vector) * norm).astype(np.float32)
    return directions


def write_serve_pack(folder: Path, model: Path, *, seed: int = 0) -> Path:
    """Write a pack for `model` (SmolLM2-135M: 30 blocks of width 576) in `folder`: axes
    "language" (simple/ornate) and "mood" (gloomy/cheerful), each with a debias file of small
    random vectors and two pole files of random vectors of norm 6 on blocks 8..20, safe scales
    1.5 both ways, and the preset "vivid" = {language: 0.8, mood: -0.5}. Returns `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    axes = {}
    for axis, classes in SERVE_AXES.items():
        files = {}
        for role, norm in (
            ("debias", DEBIAS_NORM),
            ("negative", POLE_NORM),
            ("positive", POLE_NORM),
        ):
            name = f"smollm2-{axis}__{role}.gguf"
            ControlVector(_directions(rng, norm), "llama").to_gguf(folder / name)
            files[role] = name
        axes[axis] = {
            "classes": list(classes),
            "description": f"{classes[0]} versus {classes[1]} (random test directions)",
            "files": files,
            "safe_scale": {"negative": SAFE_SCALE, "positive": SAFE_SCALE},
        }
    manifest = {
        "format": "cvgen-pack",
        "format_version": 1,
        "model": {
            "name": "SmolLM2-135M-Instruct",
            "source": str(model),
            "n_layer": SERVE_N_LAYER,
            "n_embd": SERVE_N_EMBD,
            "hint": "llama",
        },
        "axes": axes,
        "presets": SERVE_PRESETS,
    }
    (folder / "pack.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    load_manifest(folder)  # the pack must read back as every command reads it
    return folder
