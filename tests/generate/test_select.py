"""`cvgen generate --select` on the real SmolLM2 model through the llama.cpp engine: the pack
holds the candidate picked on half A of the held-out prompts, with both halves' figures, and
its files are that candidate's vectors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import require_binding, require_real_model

from cvgen.cli import main
from cvgen.eval.matched import MatchedSearch
from cvgen.eval.selection import SelectSettings, chooser
from cvgen.generate.pipeline import generate_pack
from cvgen.generate.settings import GenerateSettings
from cvgen.pack.names import ROLES
from cvgen.vectors.control_vector import ControlVector

pytestmark = pytest.mark.slow

AXIS = "language"
# small held-out data so that the test takes seconds: 4 prompts (halves [0, 2] and [1, 3]), one
# probe pair, two neutral replies, and a short search
SMALL = SelectSettings(
    prompts=4,
    probe_pairs=1,
    neutral_texts=2,
    kl_tokens=24,
    search=MatchedSearch(kl_tolerance=0.2, search_steps=4),
)


def _vectors(pack: Path, role: str) -> ControlVector:
    manifest = json.loads((pack / "pack.json").read_text())
    name = manifest["axes"][AXIS]["files"][role]
    return ControlVector.from_gguf(pack / name)


def test_select_writes_the_candidate_picked_on_half_a(tmp_path: Path, real_store: Path) -> None:
    model = require_real_model()
    require_binding()
    threads = int(os.environ.get("CVGEN_TEST_THREADS", "2"))
    settings = GenerateSettings(model=str(model), axes=(AXIS,), samples=32, threads=threads)
    pack = tmp_path / "selected"
    generate_pack(settings, pack, store_root=real_store, show_progress=False, choose=chooser(SMALL))
    manifest = json.loads((pack / "pack.json").read_text())
    record = manifest["axes"][AXIS]["selection"]
    candidates = record["candidates"]
    # both methods on every block, then three bands of the better one on half A
    on_all = [name for name in candidates if name.endswith("all blocks")]
    assert sorted(on_all) == ["cross-covariance, all blocks", "mean-diff, all blocks"]
    assert len(candidates) == 5
    better = max(on_all, key=lambda name: candidates[name]["a"])
    bands = {entry["band"] for entry in candidates.values() if entry["band"] != "all blocks"}
    assert bands == {"first half", "middle third", "last half"}
    assert {entry["method"] for entry in candidates.values() if entry["band"] in bands} == {
        candidates[better]["method"]
    }
    reached = [name for name, entry in candidates.items() if entry["reached"]]
    assert reached, "no candidate reached the KL target on both poles"
    assert record["picked"] == max(reached, key=lambda name: candidates[name]["a"])
    assert record["halves"] == {"a": [0, 2], "b": [1, 3]}
    assert record["default"] == "cross-covariance, all blocks"
    assert all(np.isfinite(entry["b"]) for entry in candidates.values())
    picked = candidates[record["picked"]]
    assert manifest["axes"][AXIS]["method"] == picked["method"]
    assert manifest["axes"][AXIS]["layers"] == picked["blocks"]

    # the files are the picked candidate: the same method's pack, cut to the picked blocks
    plain = tmp_path / "plain"
    generate_pack(
        GenerateSettings(
            model=str(model), axes=(AXIS,), samples=32, threads=threads, method=picked["method"]
        ),
        plain,
        store_root=real_store,
        show_progress=False,
    )
    for role in ROLES:
        selected, full = _vectors(pack, role), _vectors(plain, role)
        assert list(selected.blocks) == picked["blocks"]
        assert selected.metadata["cvgen.method"] == picked["method"]
        for block in picked["blocks"]:
            np.testing.assert_array_equal(selected.directions[block], full.directions[block])

    readme = (pack / "README.md").read_text()
    assert "picked by `cvgen generate --select`" in readme
    assert f"| {AXIS} | {record['picked']} |" in readme
    assert f"{picked['b']:.3f}" in readme


def test_select_refuses_an_axis_without_probes_before_the_model_loads(tmp_path: Path) -> None:
    axis = tmp_path / "tides.json"
    axis.write_text(
        json.dumps(
            {
                "name": "tides",
                "classes": ["ebb", "flood"],
                "description": "Steers from ebb to flood.",
                "data": [
                    ["who writes of the ebb", "who writes of the flood"],
                    ["who waits for low water", "who waits for high water"],
                ],
            }
        )
    )
    out = tmp_path / "pack"
    missing_model = tmp_path / "no-such-model.gguf"  # never opened: the check comes first
    missing_model.write_bytes(b"")
    result = CliRunner().invoke(
        main,
        ["generate", "--model", str(missing_model), "--axis", str(axis), "--out", str(out)]
        + ["--select", "--samples", "2"],
    )
    assert result.exit_code != 0
    message = result.output.strip().splitlines()[-1]
    assert "--select: axis 'tides' (classes ebb, flood) has no probes file" in message
    assert not out.exists()
