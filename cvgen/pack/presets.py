"""A pack's presets: named, ordered sets of axis scales stored in `pack.json`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from cvgen.llamacpp.commands import vector_arguments
from cvgen.pack.errors import PackError
from cvgen.pack.manifest import load_manifest
from cvgen.pack.names import CONTROL_CHARACTERS
from cvgen.pack.records import PackManifest, Presets

log = logging.getLogger(__name__)

MAX_PRESET_NAME = 80


def with_preset(
    manifest: PackManifest,
    name: str,
    selection: Sequence[tuple[str, float]],
    *,
    replace: bool = False,
) -> PackManifest:
    """A copy of `manifest` with preset `name` = `selection` (axis -> scale, in that order).

    The selection is checked as `cvgen commands --set` checks it (known axes, each once, finite
    scales); the name must be non-empty, at most 80 characters, without control characters or
    surrounding spaces. An existing preset is replaced only with `replace`.
    """
    if (
        not name
        or len(name) > MAX_PRESET_NAME
        or name != name.strip()
        or CONTROL_CHARACTERS.search(name)
    ):
        raise PackError(
            f"preset name '{name}' is invalid: use 1 to 80 characters, no control characters "
            "and no leading or trailing spaces"
        )
    if not selection:
        raise PackError(f"preset '{name}' is empty; give at least one --set AXIS=SCALE")
    vector_arguments(manifest.to_json(), selection, vector_dir="", legacy_syntax=True)
    presets = dict(manifest.presets or {})
    if name in presets and not replace:
        raise PackError(f"preset '{name}' already exists; pass --replace to overwrite it")
    presets[name] = {axis: float(scale) for axis, scale in selection}
    return manifest.with_presets(presets)


def without_preset(manifest: PackManifest, name: str) -> PackManifest:
    """A copy of `manifest` without preset `name` (which must exist)."""
    presets = dict(manifest.presets or {})
    if name not in presets:
        known = ", ".join(presets) if presets else "none"
        raise PackError(f"unknown preset '{name}'; the pack has: {known}")
    del presets[name]
    return manifest.with_presets(presets)


def carried_presets(out: Path, axes: Iterable[str]) -> Presets:
    """The presets of the pack already at `out` whose axes all exist in the new pack, so that
    re-making a pack in place keeps them. A missing or unreadable old manifest gives none."""
    try:
        old = load_manifest(out)
    except PackError:
        return {}
    presets = old.presets or {}
    known = set(axes)
    kept = {name: dict(values) for name, values in presets.items() if set(values) <= known}
    for name in presets:
        if name not in kept:
            log.warning(
                "preset '%s' of the old pack is dropped: it names an axis no longer here", name
            )
    return kept
