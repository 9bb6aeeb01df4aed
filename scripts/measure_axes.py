"""The measured table of every shipped axis on one model: make a pack of the axes, evaluate it
with a fast `cvgen eval`, and write the table that `cvgen axes --measured` and docs/axes.md show.

    python scripts/measure_axes.py --model SmolLM2-135M-Instruct.Q4_1.gguf --write

1. `cvgen generate --model MODEL --axis ... --samples N` into WORK/pack (llama.cpp engine for a
   .gguf; the state store under WORK/store is reused by a re-run);
2. `cvgen eval WORK/pack` with the settings below (propensity slope with its 95% interval over
   prompts, the matched-norm random direction, the negated vector, KL on neutral text, the safe
   scale and the axes' text statistics);
3. one row per axis (`cvgen.eval.axis_table`), printed as Markdown; with `--write`, stored as
   `eval/measured/<model>.json` and as that model's section of docs/axes.md.

Run it on a quiet machine with `--threads` no more than its free cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cvgen.common.messages import signed_number, slope_interval  # noqa: E402
from cvgen.data.measured import (  # noqa: E402
    STEER_FACTOR,
    MeasuredTable,
    measured_root,
    read_measured,
)
from cvgen.data.shipped import shipped_axis_names  # noqa: E402
from cvgen.eval.axis_table import report_rows, table_markdown  # noqa: E402
from cvgen.eval.records import load_eval_report  # noqa: E402
from cvgen.pack.manifest import write_text_atomically  # noqa: E402

# the fast evaluation behind the table: 5 sweep scales for the slope, the calibration scales
# for the safe scale, every probe pair, and short generations for the text statistics
# (every probe pair and two calibration scales measured at 110 min for 12 axes on SmolLM2 on 2
# cores, so 3 pairs and one calibration scale: each probe text is scored after its whole prompt)
EVAL_OPTIONS = {
    "--scales": "-2,-1,0,1,2",
    "--calibration-scales": "4",
    "--prompts": "10",
    "--probe-pairs": "3",
    "--probe-tokens": "16",
    "--neutral-texts": "4",
    "--kl-tokens": "48",
    "--max-tokens": "48",
}
DOC = REPO / "docs" / "axes.md"
# point 4 of issue 17 (--statistics): each new axis's text statistics over a sweep within its
# safe range (scales -S, -S/2, 0, S/2, S, S the smaller of its two safe scales in the table),
# 16 prompts, generations of up to 256 tokens (so that a long reply is seldom cut)
STATISTICS_AXES = ("person", "tense", "length", "register")
STATISTICS_OPTIONS = {
    "--prompts": "16",
    "--probe-pairs": "3",
    "--probe-tokens": "16",
    "--neutral-texts": "4",
    "--kl-tokens": "48",
    "--max-tokens": "256",
    "--calibration-scales": "",
}
RHO_TARGET = 0.5
ROLES_NP = ("negative", "positive")
# a pole the table found safe up to its largest tested scale ("sweep") is calibrated further
# before the check, so that the check's range is the safe range and not the table's sweep
WIDER_CALIBRATION = {
    "--scales": "-4,0,4",
    "--calibration-scales": "6,8,11,16",
    "--prompts": "4",
    "--probe-pairs": "1",
    "--neutral-texts": "4",
    "--kl-tokens": "48",
    "--max-tokens": "48",
}


def _run(command: list[str]) -> None:
    print("$ " + shlex.join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=sys.stderr)  # stdout: this script's JSON only


def _section(stem: str, table: MeasuredTable) -> str:
    """The model's section of docs/axes.md, all of it from the table's JSON."""
    settings = table.settings
    took = (
        "the generation and evaluation"
        if settings.get("generated", True)
        else "the evaluation (of a pack made before)"
    )
    head = (
        f"Measured {table.date} with `{table.command}`; {took} took "
        f"{settings['seconds'] / 60:.0f} min with `--threads {settings['threads']}`."
    )
    if settings.get("note"):
        head += " " + settings["note"]
    lines = [f"<!-- measured:{stem} -->", f"### {table.model}", "", head]
    for again in settings.get("remeasured", []):
        lines.append(
            f"Re-measured {again['date']}: {', '.join(again['axes'])}, with `{again['command']}` "
            f"({again['seconds'] / 60:.0f} min): {again['why']}."
        )
    lines += [
        f"The settings are in `eval/measured/{stem}.json`.",
        "",
        *table_markdown(table.rows),
        *_check_lines(table.statistics_check),
        "",
        f"<!-- /measured:{stem} -->",
    ]
    return "\n".join(lines)


def _check_lines(check: dict[str, Any]) -> list[str]:
    """The statistics check (--statistics) as a paragraph and a table, if it was run."""
    if not check:
        return []
    settings = check["settings"]
    lines = [
        "",
        f"Text statistics (point 4 of issue 17), measured {check['date']} with "
        f"`{check['command']}` ({settings['seconds'] / 60:.0f} min): "
        f"{settings['prompts']} prompts × 5 scales within each axis's safe range, greedy "
        f"replies of up to {settings['max_tokens']} tokens; Spearman ρ of each statistic "
        f"with the scale over every reply, and the propensity slope at those scales. An axis "
        f"meets point 4 where a statistic reaches ρ ≥ {RHO_TARGET} in its expected direction "
        "and its row of the table steers (point 2's rule). A pole whose table sweep ended "
        "before its KL reached the budget is first calibrated on scales up to 16, so that the "
        "range is the safe range.",
        "",
        "| axis | method | scales | statistics: ρ (expected sign) | slope [95% CI] | meets |",
        "|---|---|---|---|---|---|",
    ]
    for axis, entry in check["axes"].items():
        statistics = "; ".join(
            f"{name} ρ={signed_number(item['spearman'], 2)} "
            f"({'+' if item['expected_sign'] > 0 else '−'})"
            for name, item in entry["statistics"].items()
        )
        scales = ", ".join(f"{scale:g}" for scale in entry["scales"])
        if "calibrated" in entry:
            limits = "/".join(entry["calibrated"][role]["limited_by"] for role in ROLES_NP)
            scales += f" (calibrated: {limits})"
        slope = slope_interval(entry["slope"], entry["low"], entry["high"])
        meets = "**yes**" if entry["meets"] else "no"
        lines.append(
            f"| {axis} | {entry['method']} | {scales} | {statistics} | {slope} | {meets} |"
        )
    return lines


def _calibrate(python: list[str], folder: Path, axis: str, threads: int) -> dict[str, Any]:
    """The safe scale of each pole of `axis` over scales up to 16 (`WIDER_CALIBRATION`), for a
    row whose table sweep ended before its KL reached the budget."""
    options = [item for pair in WIDER_CALIBRATION.items() for item in pair]
    _run(
        [*python, "eval", str(folder), "--axis", axis, "--threads", str(threads), *options]
        + ["--no-controls", "--no-store", "--quiet"]
    )
    report = load_eval_report(folder / "eval.json").axes[axis]
    return {
        role: {"scale": round(safe.scale, 3), "limited_by": safe.limited_by}
        for role, safe in report.safe_scale.items()
    } | {"options": WIDER_CALIBRATION}


def _statistics_check(
    python: list[str],
    pack: Path,
    work: Path,
    table: MeasuredTable,
    axes: Sequence[str],
    threads: int,
) -> dict[str, Any]:
    """Run point 4's sweep per axis on a copy of the pack (cvgen eval writes its report into
    the pack it measures) and gather each statistic's ρ and the propensity slope."""
    started = time.perf_counter()
    methods = _methods(pack)
    options = [item for pair in STATISTICS_OPTIONS.items() for item in pair]
    entries: dict[str, Any] = {}
    for axis in axes:
        row = table.row(axis)
        if row is None:
            raise SystemExit(f"measure_axes: --statistics: the table has no row for '{axis}'")
        folder = work / f"statistics-{axis}"  # this script's own copy of the pack
        if folder.exists():
            # replaced only when it is that copy (a cvgen pack holding this script's eval)
            if not (folder / "pack.json").is_file() or not (folder / "eval.json").is_file():
                raise SystemExit(
                    f"measure_axes: {folder} exists and is not a pack copy this script made; "
                    "move it or give another --work"
                )
            shutil.rmtree(folder)
        shutil.copytree(pack, folder)
        safe = list(row.safe_scale)
        calibrated = None
        if "sweep" in row.limited_by:
            calibrated = _calibrate(python, folder, axis, threads)
            safe = [calibrated[role]["scale"] for role in ROLES_NP]
        top = round(min(safe), 2)
        scales = [-top, round(-top / 2, 2), 0.0, round(top / 2, 2), top]
        _run(
            [*python, "eval", str(folder), "--axis", axis, "--threads", str(threads), *options]
            + ["--scales", ",".join(f"{scale:g}" for scale in scales)]
            + ["--no-controls", "--no-store", "--quiet"]
        )
        report = load_eval_report(folder / "eval.json").axes[axis]
        statistics = {
            name: {
                "spearman": item.spearman,
                "expected_sign": item.expected_sign,
                "mean": item.mean,
            }
            for name, item in report.statistics.items()
        }
        best = max(
            (item.expected_sign * item.spearman for item in report.statistics.values()
             if item.spearman is not None),
            default=float("-inf"),
        )  # fmt: skip
        slope = report.propensity.slope if report.propensity else None
        entries[axis] = {
            "method": methods.get(axis, ""),
            "scales": scales,
            "statistics": statistics,
            "slope": slope.slope if slope else None,
            "low": slope.low if slope else None,
            "high": slope.high if slope else None,
            "rho_meets": best >= RHO_TARGET,
            "steers": row.steers,  # the propensity criterion of point 2, from the table
            "meets": best >= RHO_TARGET and row.steers,
            **({"calibrated": calibrated} if calibrated else {}),
        }
    return {
        "date": date.today().isoformat(),
        "command": "python scripts/measure_axes.py --model " + table.model + " --statistics",
        "settings": {
            "prompts": int(STATISTICS_OPTIONS["--prompts"]),
            "max_tokens": int(STATISTICS_OPTIONS["--max-tokens"]),
            "eval_options": STATISTICS_OPTIONS,
            "threads": threads,
            "seconds": round(time.perf_counter() - started),
        },
        "axes": entries,
    }


def _update_doc(stem: str, section: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = f"<!-- measured:{stem} -->", f"<!-- /measured:{stem} -->"
    if start in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        marker = "<!-- measured tables end -->"
        text = text.replace(marker, section + "\n\n" + marker)
    write_text_atomically(DOC, text)


def _methods(pack: Path) -> dict[str, str]:
    """Each axis's solver as the pack records it (`axes.<name>.method`)."""
    manifest = json.loads((pack / "pack.json").read_text(encoding="utf-8"))
    return {name: str(entry.get("method", "")) for name, entry in manifest["axes"].items()}


def _merged(old: MeasuredTable, new: MeasuredTable, why: str) -> MeasuredTable:
    """`old` with the rows of `new` in place of its own (an axis re-measured), recorded in
    `settings.remeasured`."""
    fresh = {row.axis: row for row in new.rows}
    rows = [fresh.pop(row.axis, row) for row in old.rows] + list(fresh.values())
    again = {
        "axes": [row.axis for row in new.rows],
        "date": new.date,
        "command": new.command,
        "seconds": new.settings["seconds"],
        "why": why,
    }
    settings = {**old.settings, "remeasured": [*old.settings.get("remeasured", []), again]}
    return MeasuredTable(old.model, old.command, old.date, settings, rows)


def _write(stem: str, table: MeasuredTable) -> None:
    path = measured_root() / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(table.to_dict(), indent=2) + "\n")
    _update_doc(stem, _section(stem, table))
    print(f"wrote {path.relative_to(REPO)} and {DOC.relative_to(REPO)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="the model (.gguf)")
    parser.add_argument(
        "--axis",
        action="append",
        help="an axis (default: every shipped one); with --write and a table already there, "
        "only these rows are replaced (give --why)",
    )
    parser.add_argument("--why", default="", help="why the --axis rows are measured again")
    parser.add_argument("--samples", type=int, default=64, help="samples per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="work folder")
    parser.add_argument("--skip-generate", action="store_true", help="evaluate WORK/pack as is")
    parser.add_argument("--write", action="store_true", help="write the table and the doc")
    parser.add_argument(
        "--doc-only",
        action="store_true",
        help="measure nothing: rewrite the model's section of docs/axes.md from its table",
    )
    parser.add_argument(
        "--statistics",
        action="store_true",
        help="point 4's check of the text statistics (of --axis, default the four new axes) on "
        "WORK/pack, within each axis's safe range in the model's table",
    )
    args = parser.parse_args()
    model = args.model.resolve()
    stem = model.stem
    existing = measured_root() / f"{stem}.json"
    if args.doc_only:
        _update_doc(stem, _section(stem, read_measured(existing)))
        return
    if args.statistics:
        # on the pack the table was measured from (WORK/pack), with the table's safe scales
        work = args.work or Path.home() / ".cache" / "cvgen" / "measure-axes" / stem
        table = read_measured(existing)
        check = _statistics_check(
            [sys.executable, "-m", "cvgen.cli"],
            work / "pack",
            work,
            table,
            args.axis or STATISTICS_AXES,
            args.threads,
        )
        print(json.dumps(check, indent=2))
        if args.write:
            _write(stem, replace(table, statistics_check=check))
        return
    if args.axis and args.write and existing.is_file() and not args.why:
        parser.error("--axis with --write replaces rows of a table: say why with --why")
    axes = args.axis or shipped_axis_names()
    work = args.work or Path.home() / ".cache" / "cvgen" / "measure-axes" / stem
    pack = work / "pack"
    python = [sys.executable, "-m", "cvgen.cli"]
    started = time.perf_counter()
    if not args.skip_generate:
        _run(
            [*python, "generate", "--model", str(model), *[f"--axis={a}" for a in axes]]
            + ["--samples", str(args.samples), "--out", str(pack), "--force"]
            + ["--cache-dir", str(work / "store"), "--quiet", "--threads", str(args.threads)]
        )
    options = [item for pair in EVAL_OPTIONS.items() for item in pair]
    _run([*python, "eval", str(pack), "--threads", str(args.threads), *options, "--quiet"])
    seconds = time.perf_counter() - started
    report = load_eval_report(pack / "eval.json")
    command = "python scripts/measure_axes.py --model " + model.name
    if args.axis:
        command += "".join(f" --axis {axis}" for axis in args.axis)
    if args.samples != 64:
        command += f" --samples {args.samples}"
    table = MeasuredTable(
        model=model.name,
        command=command,
        date=date.today().isoformat(),
        settings={
            "samples": args.samples,
            "eval_options": EVAL_OPTIONS,
            "threads": args.threads,
            "seconds": round(seconds),
            "generated": not args.skip_generate,
            "steer_rule": f"slope low > 0 and > {STEER_FACTOR:g} x |random slope|",
        },
        rows=report_rows(report, _methods(pack)),
    )
    print("\n".join(table_markdown(table.rows)))
    if args.write:
        if args.axis and existing.is_file():
            table = _merged(read_measured(existing), table, args.why)
        _write(stem, table)


if __name__ == "__main__":
    main()
