"""A non-editable wheel carries the shipped data and works from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_data_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = next(wheels.glob("cvgen-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_axes = sorted(p.stem for p in (REPO / "axes").glob("*.json"))
    eval_files = {"cvgen/data/eval/prompts.txt", "cvgen/data/eval/neutral.json"} | {
        f"cvgen/data/eval/probes/{axis}.json" for axis in shipped_axes
    }
    assert eval_files <= names, sorted(eval_files - names)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = (
        "import json, importlib.resources as r, cvgen, cvgen.data.shipped as d, cvgen.data.eval_data as e;"
        "print(json.dumps({'file': cvgen.__file__, 'root': str(d.data_root()),"
        " 'axes': d.shipped_axis_names(), 'prompts': len(d.load_writing_prompts()),"
        " 'stems': len(d.load_stems()),"
        " 'eval_root': str(e.eval_root()), 'eval_prompts': len(e.load_eval_prompts()),"
        " 'neutral': len(e.load_neutral_texts()), 'probe_axes': e.shipped_probe_axes(),"
        " 'probe_classes': [list(e.load_probes(a).classes) for a in e.shipped_probe_axes()],"
        " 'page': [f.name for f in r.files('cvgen.pack').joinpath('static').iterdir()]}))"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    facts = json.loads(done.stdout)
    assert facts["file"].startswith(str(site))
    assert facts["root"] == str(site / "cvgen" / "data")
    assert len(facts["axes"]) == 12 and "language" in facts["axes"]
    assert facts["prompts"] >= 500 and facts["stems"] >= 1600
    assert facts["eval_root"] == str(site / "cvgen" / "data" / "eval")
    assert facts["eval_prompts"] == 48 and facts["neutral"] == 12
    assert facts["probe_axes"] == facts["axes"] == shipped_axes
    assert facts["probe_classes"][facts["axes"].index("optimism")] == ["optimism", "nihilism"]
    assert sorted(facts["page"]) == [
        "builder.js",
        "index.html.template",
        "style.css",
        "try.css",
        "try.js",
    ]
    axes = subprocess.run(
        [sys.executable, "-c", "from cvgen.cli import main; main()", "axes"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "character_focus  narration" in axes.stdout
    # the installed wheel renders the command-line page from its own package files
    pack = tmp_path / "pack"
    pack.mkdir()
    manifest = {
        "format": "cvgen-pack",
        "model": {"name": "m", "n_layer": 4},
        "axes": {
            "a": {
                "classes": ["x", "y"],
                "files": {"debias": "a.gguf", "negative": "b.gguf", "positive": "c.gguf"},
            }
        },
    }
    (pack / "pack.json").write_text(json.dumps(manifest))
    subprocess.run(
        [sys.executable, "-c", "from cvgen.cli import main; main()", "html", str(pack)],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    page = (pack / "index.html").read_text(encoding="utf-8")
    assert "window.cvgenBuilder" in page and "--control-vector-scaled" in page
