"""A small hand-built pack for the serve, chat and weights tests: two axes of random directions
on SmolLM2-135M's blocks 8..20 (another model: its middle half of blocks), written in well
under a second (no `cvgen generate`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cvgen.pack.manifest import load_manifest
from cvgen.vectors.control_vector import ControlVector
from cvgen.vectors.model_header import read_model_file_info

SERVE_AXES = {"language": ("simple", "ornate"), "mood": ("gloomy", "cheerful")}
SERVE_BLOCKS = range(8, 21)
SERVE_N_EMBD = 576  # SmolLM2-135M
SERVE_N_LAYER = 30
POLE_NORM = 6.0  # large enough to change SmolLM2's greedy text visibly
DEBIAS_NORM = 0.05
SAFE_SCALE = 1.5
SERVE_PRESETS = {"vivid": {"language": 0.8, "mood": -0.5}}


def _directions(
    rng: np.random.Generator, norm: float, n_embd: int, blocks: range
) -> dict[int, np.ndarray]:
    directions = {}
    for block in blocks:
        vector = rng.standard_normal(n_embd)
        directions[block] = (vector / np.linalg.norm(vector) * norm).astype(np.float32)
    return directions


def write_serve_pack(folder: Path, model: Path, *, seed: int = 0) -> Path:
    """Write a pack for `model` (SmolLM2-135M: 30 blocks of width 576) in `folder`: axes
    "language" (simple/ornate) and "mood" (gloomy/cheerful), each with a debias file of small
    random vectors and two pole files of random vectors of norm 6 on blocks 8..20, safe scales
    1.5 both ways, and the preset "vivid" = {language: 0.8, mood: -0.5}. Returns `folder`.
    For a model of another shape (read from its header), blocks n_layer/4 .. 3 n_layer/4."""
    folder = Path(folder)
    n_embd, n_layer, blocks = SERVE_N_EMBD, SERVE_N_LAYER, SERVE_BLOCKS
    if Path(model).is_file():
        info = read_model_file_info(Path(model))
        if (info.n_embd, info.n_layer) != (n_embd, n_layer):
            n_embd, n_layer = info.n_embd, info.n_layer
            blocks = range(n_layer // 4, 3 * n_layer // 4)
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
            ControlVector(_directions(rng, norm, n_embd, blocks), "llama").to_gguf(folder / name)
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
            "n_layer": n_layer,
            "n_embd": n_embd,
            "hint": "llama",
        },
        "axes": axes,
        "presets": SERVE_PRESETS,
    }
    (folder / "pack.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    load_manifest(folder)  # the pack must read back as every command reads it
    return folder
