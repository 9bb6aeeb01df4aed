"""The pack manifest of a run, built from its settings, model facts and inputs before any model
work (so that bad class names fail fast), and the `cvgen.*` metadata of each vector file."""

from __future__ import annotations

from typing import Any

from cvgen import __version__
from cvgen.data.shipped import Axis
from cvgen.extract.decoder_blocks import describe_config
from cvgen.extract.model_source import ModelSource
from cvgen.generate.inputs import RunInputs
from cvgen.generate.settings import GenerateSettings
from cvgen.llamacpp.binaries import llama_cpp_record
from cvgen.pack.manifest import PACK_FORMAT, PACK_FORMAT_VERSION, parse_manifest
from cvgen.pack.names import MANIFEST_NAME, SAMPLES_NAME, vector_file_names
from cvgen.pack.records import PackManifest
from cvgen.solve.direction import BlockDirection
from cvgen.solve.methods import axis_method


def draft_manifest(
    settings: GenerateSettings,
    source: ModelSource,
    config: Any,
    n_layer: int,
    n_embd: int,
    layers: list[int],
    inputs: RunInputs,
    identity: str,
) -> PackManifest:
    """The manifest of a run before its axes are solved: format, model facts (`n_layer`
    blocks of width `n_embd`), the llama.cpp record, the settings and their digest, the kept
    `layers`, each axis's classes, files and suggested scales, and the samples record. It is
    checked as `load_manifest` checks a read one (a `PackError` names "pack.json")."""
    draft = {
        "format": PACK_FORMAT,
        "format_version": PACK_FORMAT_VERSION,
        "cvgen_version": __version__,
        "model": {
            "name": source.name,
            "slug": source.slug,
            "source": source.location,
            "spec": settings.model,
            "kind": source.kind,
            "identity": identity,
            "hint": describe_config(config)["architecture"],
            "n_layer": n_layer,
            "n_embd": n_embd,
            **describe_config(config),
        },
        "llama_cpp": llama_cpp_record(),
        "settings": settings.to_dict(),
        "settings_digest": settings.digest(),
        "layers": layers,
        "layer_convention": "direction.k = output of block k (0-based); block 0 is never written",
        "axes": {
            axis.name: {
                "classes": list(axis.classes),
                "description": axis.description,
                "pairs": len(axis.pairs),
                "source": axis.source,
                "files": vector_file_names(
                    source.slug, axis.name, axis.classes, source=axis.source
                ),
                "suggested_scale": {"negative": 1.0, "positive": 1.0, "calibrated": False},
            }
            for axis in inputs.axes
        },
        "samples": {
            "file": SAMPLES_NAME,
            "count": len(inputs.plan),
            "prompts": len(inputs.prompts),
            "stems": len(inputs.stems),
        },
        "presets": {},
    }
    return parse_manifest(draft, MANIFEST_NAME)


def record_solved_axis(
    manifest: PackManifest, axis: str, solved: dict[int, BlockDirection], method: str
) -> None:
    """Record in `manifest` the solver `method` of `axis`, the blocks that got a direction,
    and each one's Fisher ratio (rounded to 4 places, keyed by the block as text)."""
    entry = manifest.axes[axis]
    entry.extra["method"] = method
    entry.extra["layers"] = sorted(solved)
    entry.extra["fisher_ratio"] = {
        str(block): round(direction.fisher_ratio, 4) for block, direction in solved.items()
    }


def file_metadata(
    settings: GenerateSettings, axis: Axis, role: str, model_name: str
) -> dict[str, Any]:
    """The `cvgen.*` metadata keys of the `role` file ("debias", "negative", "positive") of
    `axis`: cvgen's version, the axis, class and role, the method, features, samples, seed,
    model name and the suggested scale (1)."""
    class_name = {"debias": "debias", "negative": axis.classes[0], "positive": axis.classes[1]}[
        role
    ]
    return {
        "cvgen.version": __version__,
        "cvgen.axis": axis.name,
        "cvgen.class": class_name,
        "cvgen.role": role,
        "cvgen.method": axis_method(settings.method, axis.method),
        "cvgen.features": settings.features,
        "cvgen.samples_per_class": settings.samples,
        "cvgen.seed": settings.seed,
        "cvgen.model_name": model_name,
        "cvgen.suggested_scale": 1.0,
    }
