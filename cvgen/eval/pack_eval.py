"""`cvgen eval` composed: choose and open a backend, measure (`cvgen.eval.evaluate`), write
`eval.json`, `eval.md` and the plots into the pack, and store the calibrated safe scales in
`pack.json`, in each file's `cvgen.*` metadata, in the pack's README and its page."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cvgen import __version__
from cvgen.engine.binding import binding_available
from cvgen.eval.axis_table import axis_row
from cvgen.eval.backend import BACKENDS, LLAMA_CPP_BACKENDS, Backend
from cvgen.eval.calibration import SUGGESTED_KL_SHARE
from cvgen.eval.evaluate import RawResults, run_evaluation
from cvgen.eval.inputs import EvalInputs, axis_probes
from cvgen.eval.records import EvalReport, UnsteeredSummary
from cvgen.eval.repetition import text_repetition
from cvgen.eval.report import render_markdown, write_plots
from cvgen.eval.settings import EvalError, EvalSettings
from cvgen.eval.summary import summarise_axis
from cvgen.llamacpp.binaries import LlamaCppError, find_binary
from cvgen.llamacpp.commands import default_model_path
from cvgen.pack.manifest import load_manifest, write_text_atomically
from cvgen.pack.names import EVAL_REPORT_NAMES, ROLES
from cvgen.pack.readme import example_command, render_pack_readme
from cvgen.pack.records import PackManifest, SafeScale
from cvgen.vectors.control_vector import ControlVector

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_MARKDOWN = EVAL_REPORT_NAMES  # defined with the other pack files


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate_pack` wrote: the report (eval.json's content) and the file paths."""

    report: EvalReport
    written: list[Path]


@dataclass(frozen=True)
class ModelChoice:
    """Which model an evaluation runs and how it is loaded: `model` None is the pack's own
    (its .gguf for llama.cpp, its source for hf); `backend` "auto", "llama.cpp" (the engine),
    "llama-server" or "hf"; `device`, `dtype` and `trust_remote_code` for hf; `threads` for
    all (None: default); `gpu_layers` blocks offloaded by llama.cpp (0: CPU)."""

    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    threads: int | None = None
    gpu_layers: int = 0


def check_choice(choice: ModelChoice) -> None:
    """Refuse a thread count below 1 or a negative number of offloaded blocks."""
    threads = choice.threads
    if threads is not None and threads < 1:
        raise EvalError(f"--threads: {threads} must be at least 1 (leave it out for the default)")
    if choice.gpu_layers < 0:
        raise EvalError(f"--gpu-layers: {choice.gpu_layers} must be 0 (CPU) or a number of blocks")


def choose_backend(choice: str, model: str) -> str:
    """`auto` -> for a .gguf model, llama.cpp (the engine) when its binding is installed, else
    llama-server when that binary is found; hf for anything else."""
    if choice not in (*BACKENDS, "auto"):
        raise EvalError(f"--backend: '{choice}' is not one of auto, {', '.join(BACKENDS)}")
    if choice != "auto":
        return choice
    if model.lower().endswith(".gguf"):
        if binding_available():
            return "llama.cpp"
        try:
            find_binary("llama-server")
            log.info("llama-cpp-python not installed; evaluating with llama-server")
            return "llama-server"
        except LlamaCppError:
            log.info("llama.cpp not found; evaluating with transformers (--backend hf)")
    return "hf"


def default_model(manifest: PackManifest, backend: str) -> str:
    """The model a pack was made from: its .gguf file for llama.cpp, its source for hf."""
    if backend in LLAMA_CPP_BACKENDS:
        return default_model_path(manifest.to_json())
    return str(manifest.model.source or manifest.model.extra.get("spec"))


def open_backend(
    backend: str,
    model: str,
    *,
    settings: EvalSettings,
    choice: ModelChoice = ModelChoice(),
    log_dir: Path | None = None,
    decoder_blocks: str | None = None,
) -> Backend:
    """Open `model` on `backend` ("llama.cpp", "llama-server" or "hf"), loaded as `choice`
    says."""
    if backend in LLAMA_CPP_BACKENDS and not Path(model).is_file():
        raise EvalError(f"--model: {model} is not a file ({backend} needs a .gguf model)")
    if choice.gpu_layers and backend == "hf":
        raise EvalError("--gpu-layers: llama.cpp only; the hf backend takes --device")
    if backend == "llama.cpp":
        from cvgen.eval.engine_backend import EngineBackend

        return EngineBackend(Path(model), threads=choice.threads, gpu_layers=choice.gpu_layers)
    if backend == "llama-server":
        from cvgen.eval.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend(
            Path(model),
            top_k=settings.top_k,
            threads=choice.threads,
            gpu_layers=choice.gpu_layers,
            log_dir=log_dir,
        )
    from cvgen.eval.hf_backend import HfBackend  # imports torch

    return HfBackend.load(
        model,
        device=choice.device,
        dtype=choice.dtype,
        trust_remote_code=choice.trust_remote_code,
        threads=choice.threads,
        decoder_blocks=decoder_blocks,
    )


def check_backend_fits(backend: Backend, manifest: PackManifest, pack: Path) -> None:
    """Refuse a model whose depth or width differs from the pack's."""
    expected = manifest.model
    for what, got in (("n_layer", backend.n_layer), ("n_embd", backend.n_embd)):
        want = expected.n_layer if what == "n_layer" else expected.whole_number(what)
        if isinstance(want, int) and want != got:
            raise EvalError(f"{pack}: the pack was made for {what} {want}, but the model has {got}")


def select_axes(manifest: PackManifest, axes: Sequence[str], pack: Path) -> list[str]:
    chosen = list(axes) or list(manifest.axes)
    for name in chosen:
        if name not in manifest.axes:
            known = ", ".join(manifest.axes)
            raise EvalError(f"--axis: '{name}' is not in pack {pack} (it has: {known})")
    return chosen


def build_report(
    pack: Path,
    manifest: PackManifest,
    axes: Sequence[str],
    backend: Backend,
    model: str,
    inputs: EvalInputs,
    raw: RawResults,
    settings: EvalSettings,
) -> EvalReport:
    """eval.json's content."""
    texts = raw.unsteered.texts or []
    return EvalReport(
        cvgen_version=__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        pack_name=Path(pack).resolve().name,
        model=model,
        backend=backend.name,
        settings=settings,
        seconds=raw.seconds,
        estimate_seconds=raw.estimate_seconds,
        prompts=list(inputs.prompts),
        neutral_positions=sum(len(reply) for _, reply in inputs.neutral),
        unsteered=UnsteeredSummary(
            repetition=sum(text_repetition(t) for t in texts) / max(1, len(texts)),
            examples=texts[:1],
        ),
        axes={
            axis: summarise_axis(axis, list(manifest.axes[axis].classes), inputs, raw, settings)
            for axis in axes
        },
    )


def evaluate_pack(
    pack: Path,
    *,
    choice: ModelChoice = ModelChoice(),
    axes: Sequence[str] = (),
    settings: EvalSettings | None = None,
    store: bool = True,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    probe_files: Mapping[str, Path] | None = None,
) -> EvalResult:
    """Evaluate `pack` and write eval.json, eval.md and eval-<axis>.png into it; with `store`,
    record each axis's calibrated safe scales (pack.json, file metadata, README, page).

    `choice` names the model and backend; `probe_files` maps an axis to its own probes file
    (else the shipped probes of that axis, when its classes match).
    Nothing is written unless the whole evaluation succeeded.
    """
    settings = settings or EvalSettings()
    check_choice(choice)
    pack = Path(pack)
    manifest = load_manifest(pack)
    chosen_axes = select_axes(manifest, axes, pack)
    for name, path in (probe_files or {}).items():
        if name not in chosen_axes:
            raise EvalError(
                f"--probes: axis '{name}' is not evaluated (axes: {', '.join(chosen_axes)})"
            )
        axis_probes(name, manifest.axes[name].classes, Path(path))  # fail fast
    kind = choose_backend(choice.backend, choice.model or default_model(manifest, "llama.cpp"))
    model = choice.model or default_model(manifest, kind)
    opened = open_backend(
        kind,
        model,
        settings=settings,
        choice=choice,
        decoder_blocks=manifest.settings.get("decoder_blocks"),
    )
    try:
        check_backend_fits(opened, manifest, pack)
        inputs, raw = run_evaluation(
            opened,
            pack,
            manifest,
            chosen_axes,
            settings,
            progress=progress,
            announce=announce,
            probe_files=probe_files,
        )
    finally:
        opened.close()
    report = build_report(pack, manifest, chosen_axes, opened, model, inputs, raw, settings)
    written = write_report(pack, report)
    if store:
        written += store_safe_scales(pack, report)
    return EvalResult(report, written)


def write_report(pack: Path, report: EvalReport) -> list[Path]:
    """eval.json, eval.md and the plots, each written atomically."""
    written = write_plots(report, pack)
    json_path = pack / REPORT_JSON
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    write_text_atomically(json_path, text)
    markdown_path = pack / REPORT_MARKDOWN
    write_text_atomically(markdown_path, render_markdown(report) + "\n")
    return [*written, json_path, markdown_path]


def store_safe_scales(pack: Path, report: EvalReport) -> list[Path]:
    """Record the safe scales: `axes[name].safe_scale` in pack.json (absolute values, for the
    page's sliders), `cvgen.safe_scale.*` in each of the axis's files, the README and the page.
    A pole whose safe scale is 0 (the debias file alone already breaks the budget) leaves the
    axis without `safe_scale` in pack.json; eval.md explains."""
    from cvgen.pack.page import save_manifest_and_page

    manifest = load_manifest(pack)
    written = []
    for name, axis in report.axes.items():
        safe = {role: float(axis.safe_scale[role].scale) for role in ("negative", "positive")}
        entry = manifest.axes[name]
        if min(safe.values()) > 0:
            entry.safe_scale = SafeScale(negative=safe["negative"], positive=safe["positive"])
        else:
            entry.safe_scale = None
            log.warning("axis '%s': no safe non-zero scale on one pole (%s)", name, safe)
        # scale 1 reproduces the pole's own average shift, which costs a small model far less
        # than the budget: suggest where the KL reaches a share of it (older reports: min(1, safe))
        suggested = {
            role: float(axis.suggested_scale.get(role, min(1.0, safe[role])))
            for role in ("negative", "positive")
        }
        entry.extra["suggested_scale"] = {
            **suggested,
            "calibrated": True,
            "kl_share": SUGGESTED_KL_SHARE,
            "kl_budget": float(report.settings.kl_budget),
        }
        row = axis_row(name, axis)
        if row is not None:
            entry.extra["measured"] = {
                "slope": row.slope,
                "low": row.low,
                "high": row.high,
                "random_slope": row.random_slope,
                "steers": row.steers,
            }
        for role in ROLES:
            path = pack / entry.files.of(role)
            written.append(_rewrite_metadata(path, role, safe, suggested, report))
    manifest.extra["evaluation"] = {
        "file": REPORT_JSON,
        "backend": report.backend,
        "date": report.date,
        "kl_budget": report.settings.kl_budget,
        "repetition_tolerance": report.settings.repetition_tolerance,
        "suggested_kl_share": SUGGESTED_KL_SHARE,
    }
    readme = render_pack_readme(manifest, example_command(manifest, pack))
    save_manifest_and_page(pack, manifest)
    write_text_atomically(pack / "README.md", readme)
    return written


def _rewrite_metadata(
    path: Path,
    role: str,
    safe: Mapping[str, float],
    suggested: Mapping[str, float],
    report: EvalReport,
) -> Path:
    """Rewrite one control-vector file with the safe-scale keys added (atomically)."""
    current = ControlVector.from_gguf(path)
    metadata = {key: value for key, value in current.metadata.items() if key.startswith("cvgen.")}
    metadata.update(
        {
            "cvgen.safe_scale.negative": safe["negative"],
            "cvgen.safe_scale.positive": safe["positive"],
            "cvgen.safe_scale.kl_budget": float(report.settings.kl_budget),
            "cvgen.safe_scale.backend": str(report.backend),
        }
    )
    if role in suggested:
        metadata["cvgen.suggested_scale"] = suggested[role]
    replace(current, metadata=metadata).to_gguf(path)
    return path
