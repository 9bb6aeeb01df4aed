"""Seeded sampling of (stem, continuation pair, writing prompt) triples.

A pack draws n (stem, prompt) pairs once, shared by all its axes, so the baseline texts
`"{stem}."` + prompt are collected once per pack. Each axis then assigns a continuation pair to
every sample. The draw is without replacement over stem x prompt, so no (stem, pair, prompt)
triple repeats while unused ones remain; when n exceeds stems x prompts, later rounds shift
each key's pair index so triples stay distinct up to stems x pairs x prompts.

The per-axis draw is seeded by (seed, axis name): adding an axis to a pack changes neither the
shared samples nor the other axes' pairs, so their collected states are reused.

The draw for n is a prefix of the draw for any larger n with the same seed (stems, prompts and
every axis's pairs), so growing `--samples` keeps the samples already collected: each round is
a lazily drawn Fisher-Yates shuffle from its own generator, and the first round's pair of row i
depends on i alone.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cvgen.common.errors import CvgenError
from cvgen.data.shipped import Axis, Stems


class SamplerError(CvgenError, ValueError):
    """The sampler cannot satisfy the request."""


@dataclass(frozen=True)
class SamplePlan:
    """The drawn samples: row i uses stem `stem_index[i]`, prompt `prompt_index[i]` and, for
    each axis, continuation pair `pair_index[axis][i]`. All arrays are int64 of shape (n,)."""

    stem_index: np.ndarray
    prompt_index: np.ndarray
    pair_index: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.stem_index.shape[0])

    def triples(self, axis: str) -> np.ndarray:
        """(n, 3) int64 array of (stem, pair, prompt) for one axis."""
        return np.stack([self.stem_index, self.pair_index[axis], self.prompt_index], axis=1)


def _axis_seed(seed: int, axis: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(axis.encode("utf-8"))])


def _shuffled_prefix(count: int, population: int, rng: np.random.Generator) -> np.ndarray:
    """The first `count` entries of a Fisher-Yates shuffle of range(population), drawn lazily
    (memory O(count), not O(population)): int64 of shape (count,). Step i's swap partner comes
    from the i-th draw alone, so the result for `count` is a prefix of the result for any
    larger `count` from the same generator state."""
    steps = np.arange(count, dtype=np.int64)
    partners = steps + rng.integers(0, population - steps, dtype=np.int64)
    moved: dict[int, int] = {}  # position -> the value now there, where it is not its own
    keys = np.empty(count, dtype=np.int64)
    for step, partner in zip(steps.tolist(), partners.tolist(), strict=True):
        keys[step] = moved.get(partner, partner)
        moved[partner] = moved.get(step, step)
    return keys


def _draw_keys(n: int, population: int, seed: int) -> np.ndarray:
    """n keys in [0, population): rounds of a shuffle of the population, round r drawn from
    its own generator (seed, 0, r), so that every n is a prefix of every larger n."""
    parts = []
    for round_index in range(-(-n // population)):
        count = min(population, n - round_index * population)
        rng = np.random.default_rng([seed, 0, round_index])
        parts.append(_shuffled_prefix(count, population, rng))
    return np.concatenate(parts)


def _assign_pairs(
    keys: np.ndarray, population: int, n_pairs: int, seed: int, axis: str
) -> np.ndarray:
    """Pair index per sample: balanced over pairs in the first round, shifted in later ones."""
    rng = _axis_seed(seed, axis)
    order = rng.permutation(n_pairs)
    first_round = min(len(keys), population)
    pairs = np.empty(len(keys), dtype=np.int64)
    pairs[:first_round] = order[np.arange(first_round) % n_pairs]
    if len(keys) > population:
        base = np.empty(population, dtype=np.int64)
        base[keys[:population]] = pairs[:population]
        rounds = np.arange(population, len(keys)) // population
        pairs[population:] = (base[keys[population:]] + rounds) % n_pairs
    return pairs


def draw_samples(
    n: int, *, stems: Stems, n_prompts: int, axes: Mapping[str, Axis] | list[Axis], seed: int
) -> SamplePlan:
    """Draw n samples (n per class) for the given axes, reproducibly from `seed`."""
    if n < 1:
        raise SamplerError(f"samples: {n} must be at least 1")
    if n_prompts < 1:
        raise SamplerError("no writing prompts to sample from")
    axis_list = list(axes.values()) if isinstance(axes, Mapping) else list(axes)
    population = len(stems) * n_prompts
    keys = _draw_keys(n, population, seed)
    stem_index, prompt_index = np.divmod(keys, n_prompts)
    pair_index = {
        axis.name: _assign_pairs(keys, population, len(axis.pairs), seed, axis.name)
        for axis in axis_list
    }
    return SamplePlan(stem_index=stem_index, prompt_index=prompt_index, pair_index=pair_index)


def max_distinct_triples(stems: Stems, n_prompts: int, axis: Axis) -> int:
    """How many distinct (stem, pair, prompt) triples exist for an axis."""
    return len(stems) * n_prompts * len(axis.pairs)


def baseline_text(plan: SamplePlan, stems: Stems, row: int) -> str:
    """The baseline system text of sample `row`: `"{stem}."`."""
    return f"{stems.stem(int(plan.stem_index[row]))}."


def axis_texts(plan: SamplePlan, stems: Stems, axis: Axis, row: int) -> tuple[str, str]:
    """The (negative, positive) system texts of sample `row`: `"{stem} {neg}."`, `"{stem} {pos}."`."""
    stem = stems.stem(int(plan.stem_index[row]))
    negative, positive = axis.pairs[int(plan.pair_index[axis.name][row])]
    return f"{stem} {negative}.", f"{stem} {positive}."
