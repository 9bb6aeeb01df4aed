"""The held-out data of an evaluation, tokenised once per backend: the prompts, the neutral
texts for the KL divergence, each axis's probes (for the propensity), and the text statistics
its axis file names (its `evaluation` field)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cvgen.data.axis_fields import AxisStatistic
from cvgen.data.eval_data import (
    Probes,
    find_probes,
    load_eval_prompts,
    load_neutral_texts,
    load_probes,
)
from cvgen.data.shipped import load_axis, shipped_axis_names
from cvgen.eval.backend import Backend
from cvgen.eval.settings import EvalError, EvalSettings
from cvgen.pack.records import AxisRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalInputs:
    """The held-out data, tokenised once per backend, and per axis the text statistics that
    its axis file names (measured on the generations)."""

    prompts: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    neutral: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (prompt ids, reply ids)
    probes: Mapping[str, Probes | None]
    probe_ids: Mapping[str, tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]]  # (neg, pos)
    statistics: Mapping[str, tuple[AxisStatistic, ...]] = field(default_factory=dict)


def axis_statistics(axis: str, entry: AxisRecord) -> tuple[AxisStatistic, ...]:
    """The text statistics of `axis`, from its entry in a pack manifest (`axes[axis]`): those
    the axis file it was made from names (`source`, its `evaluation` field); when that file is
    gone, those of the shipped axis of the same name. An axis file whose classes are no longer
    the pack's gives none (with a warning), as does an axis that names none."""
    classes = entry.classes
    source = entry.extra.get("source")
    if isinstance(source, str) and source and Path(source).is_file():
        found = load_axis(source)
    elif axis in shipped_axis_names():
        found = load_axis(axis)
    else:
        return ()
    if found.classes != classes:
        log.warning(
            "axis '%s': %s now has classes %s, the pack %s; its text statistics are not measured",
            axis,
            found.source,
            list(found.classes),
            list(classes),
        )
        return ()
    return found.statistics


def axis_probes(
    axis: str, classes: tuple[str, str], probe_file: Path | None = None
) -> Probes | None:
    """The probes of `axis`: from `probe_file` (its classes must be the pack's), else the shipped
    ones when their classes match, else None (propensity is then not measured)."""
    if probe_file is None:
        return find_probes(axis, classes)
    probes = load_probes(axis, probe_file)
    if probes.classes != classes:
        raise EvalError(
            f"{probe_file}: field 'classes' is {list(probes.classes)}, but axis '{axis}' of the "
            f"pack has classes {list(classes)}"
        )
    return probes


def prepare_inputs(
    backend: Backend,
    axes: Mapping[str, tuple[str, str]],
    settings: EvalSettings,
    *,
    probe_files: Mapping[str, Path] | None = None,
    statistics: Mapping[str, tuple[AxisStatistic, ...]] | None = None,
) -> EvalInputs:
    """Load and tokenise the held-out prompts, the neutral texts and each axis's probes
    (`axes`: name -> classes); `statistics` (name -> `axis_statistics`) is kept as given."""
    prompts = load_eval_prompts()[: settings.prompts]
    neutral = []
    for text in load_neutral_texts()[: settings.neutral_texts]:
        reply = backend.continuation_ids(text.reply)[: settings.kl_tokens]
        neutral.append((tuple(backend.prompt_ids(text.request)), tuple(reply)))
    probes: dict[str, Probes | None] = {}
    probe_ids: dict[str, tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]] = {}
    for axis, classes in axes.items():
        found = axis_probes(axis, classes, (probe_files or {}).get(axis))
        if found is None:
            log.warning(
                "axis '%s': no shipped probes for classes %s; propensity is not measured",
                axis,
                list(classes),
            )
        probes[axis] = found
        pairs = found.pairs if found is not None else ()
        if settings.probe_pairs:
            pairs = pairs[: settings.probe_pairs]
        limit = settings.probe_tokens or None
        probe_ids[axis] = tuple(
            (
                tuple(backend.continuation_ids(neg)[:limit]),
                tuple(backend.continuation_ids(pos)[:limit]),
            )
            for neg, pos in pairs
        )
    return EvalInputs(
        prompts=tuple(prompts),
        prompt_ids=tuple(tuple(backend.prompt_ids(p)) for p in prompts),
        neutral=tuple(neutral),
        probes=probes,
        probe_ids=probe_ids,
        statistics=dict(statistics or {}),
    )
