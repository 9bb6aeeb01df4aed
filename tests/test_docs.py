"""The README's CLI reference is generated from --help and must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_cli_reference_matches_help() -> None:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", REPO / "scripts" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--samples" in module.cli_reference()
    assert module.updated_readme(readme) == readme, "run: python scripts/cli_reference.py"


def test_public_api_names_resolve() -> None:
    import cvgen

    for name in cvgen.__all__:
        assert getattr(cvgen, name) is not None, name
    assert cvgen.generate_pack.__module__ == "cvgen.generate.pipeline"
