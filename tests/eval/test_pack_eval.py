"""`cvgen eval` end to end (cvgen.eval.pack_eval through the CLI) on the pico model: the
report, the stored safe scales, probes files, refusals, and eval.json read back typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import generate_pico_pack

from cvgen.cli import main
from cvgen.eval.calibration import suggested_scale
from cvgen.eval.records import load_eval_report
from cvgen.vectors.control_vector import ControlVector

FAST = [
    "--prompts",
    "3",
    "--max-tokens",
    "8",
    "--neutral-texts",
    "2",
    "--kl-tokens",
    "6",
    "--probe-pairs",
    "2",
    "--probe-tokens",
    "6",
    "--scales",
    "-1,0,1",
    "--bootstrap",
    "200",
    "--quiet",
]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def pico_pack(pico_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "pack"
    generate_pico_pack(pico_llama, out)
    return out


def test_cli_eval_writes_the_report_and_stores_safe_scales(pico_pack: Path) -> None:
    result = run("eval", str(pico_pack), "--backend", "hf", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((pico_pack / "eval.json").read_text())
    assert report["backend"] == "hf" and sorted(report["axes"]) == ["language", "optimism"]
    assert report["format"] == "cvgen-eval" and report["format_version"] == 1
    assert load_eval_report(pico_pack / "eval.json").to_dict() == report
    # the statistics and their signs come from the axis files the pack was made from
    statistics = report["axes"]["language"]["statistics"]
    assert [(n, s["expected_sign"]) for n, s in statistics.items()] == [
        ("word_length", 1),
        ("zipf_frequency", -1),
    ]
    assert list(report["axes"]["optimism"]["statistics"]) == ["sentiment"]
    manifest = json.loads((pico_pack / "pack.json").read_text())
    for name, axis in report["axes"].items():
        assert axis["scales"] == [-1.0, 0.0, 1.0]
        assert axis["damage"]["scales"] == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
        assert axis["damage"]["kl"][3] == axis["kl"][1]  # the same debias-only run
        assert len(axis["kl"]) == 3 and axis["kl"][1] >= 0
        # the KL grows away from the debias-only point on both sides
        assert axis["kl"][0] > axis["kl"][1] and axis["kl"][2] > axis["kl"][1]
        slope = axis["propensity"]["slope"]
        assert slope["low"] <= slope["slope"] <= slope["high"]
        negated = axis["controls"]["negated"]["slope"]["slope"]
        assert negated == pytest.approx(-slope["slope"], abs=1e-3 + 0.05 * abs(slope["slope"]))
        assert axis["controls"]["random"]["scales"] == [-1.0, 0.0, 1.0]
        assert len(axis["controls"]["random"]["kl"]) == 3
        safe = {role: axis["safe_scale"][role]["scale"] for role in ("negative", "positive")}
        if min(safe.values()) > 0:
            assert manifest["axes"][name]["safe_scale"] == safe
            positive = ControlVector.from_gguf(
                pico_pack / manifest["axes"][name]["files"]["positive"]
            )
            assert positive.metadata["cvgen.safe_scale.positive"] == pytest.approx(safe["positive"])
        # the suggested scale: where the pole's KL curve reaches half the budget (0.05 here),
        # never past the safe scale; recomputed from the stored curve
        suggested = manifest["axes"][name]["suggested_scale"]
        assert suggested["calibrated"] is True and suggested["kl_share"] == 0.5
        for role, sign in (("negative", -1), ("positive", 1)):
            pole = [
                (abs(s), k)
                for s, k in zip(axis["damage"]["scales"], axis["damage"]["kl"], strict=True)
                if s * sign >= 0
            ]
            pole.sort()
            expected = suggested_scale(
                [s for s, _ in pole], [k for _, k in pole], kl_target=0.05, cap=safe[role]
            )
            assert suggested[role] == pytest.approx(expected)
            assert axis["suggested_scale"][role] == pytest.approx(expected)
        measured = manifest["axes"][name]["measured"]
        assert measured["slope"] == slope["slope"] and measured["low"] == slope["low"]
        random_slope = axis["controls"]["random"]["slope"]["slope"]
        assert measured["steers"] == (slope["low"] > max(0.0, 3 * abs(random_slope)))
        assert (pico_pack / f"eval-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["evaluation"]["file"] == "eval.json"
    markdown = (pico_pack / "eval.md").read_text()
    assert "| axis (− / +) | propensity slope" in markdown and "## optimism" in markdown
    assert "safe scale" in result.output
    page = (pico_pack / "index.html").read_text()
    if "safe_scale" in manifest["axes"]["language"]:
        assert '"safe_scale"' in page


def test_cli_eval_refuses_an_unknown_axis_without_writing(pico_pack: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in pico_pack.iterdir())
    result = CliRunner().invoke(main, ["eval", str(pico_pack), "--axis", "nope", "--backend", "hf"])
    assert result.exit_code == 1
    assert (
        f"--axis: 'nope' is not in pack {pico_pack} (it has: language, optimism)" in result.output
    )
    assert sorted(p.name for p in pico_pack.iterdir()) == before


def test_cli_eval_refuses_bad_scales(pico_pack: Path) -> None:
    result = CliRunner().invoke(
        main, ["eval", str(pico_pack), "--scales", "0,1", "--backend", "hf"]
    )
    assert result.exit_code == 1
    assert "--scales: [0.0, 1.0] must hold 0 and at least one scale of each sign" in result.output


def test_generate_with_eval_writes_the_report(pico_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    result = run(
        "generate",
        "--model",
        str(pico_llama),
        "--axis",
        "language",
        "--samples",
        "8",
        "--tau",
        "0",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "store"),
        "--eval",
        "--eval-backend",
        "hf",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert list(report["axes"]) == ["language"] and report["backend"] == "hf"
    assert report["settings"]["scales"] == [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    assert "eval:" in result.output or (out / "eval.md").is_file()


def test_cli_eval_uses_a_probes_file_of_your_own(pico_pack: Path, tmp_path: Path) -> None:
    probes = tmp_path / "mine.json"
    pairs = [["It was plain.", "It was resplendent."], ["He ran.", "He fled, gossamer-light."]]
    probes.write_text(
        json.dumps({"axis": "language", "classes": ["simple", "ornate"], "pairs": pairs})
    )
    at = FAST.index("--probe-pairs")
    options = FAST[:at] + FAST[at + 2 :]
    result = run(
        "eval",
        str(pico_pack),
        "--backend",
        "hf",
        "--axis",
        "language",
        "--probes",
        f"language={probes}",
        "--probe-pairs",
        "0",
        "--no-store",
        *options,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((pico_pack / "eval.json").read_text())
    assert report["axes"]["language"]["propensity"]["probe_pairs"] == 2


def test_cli_eval_refuses_probes_with_other_classes(pico_pack: Path, tmp_path: Path) -> None:
    probes = tmp_path / "wrong.json"
    probes.write_text(
        json.dumps({"axis": "language", "classes": ["plain", "fancy"], "pairs": [["a b", "c d"]]})
    )
    result = CliRunner().invoke(
        main, ["eval", str(pico_pack), "--backend", "hf", "--probes", f"language={probes}"]
    )
    assert result.exit_code == 1
    assert (
        f"{probes}: field 'classes' is ['plain', 'fancy'], but axis 'language' of the pack has "
        "classes ['simple', 'ornate']" in result.output
    )
