"""The sampler: seeded, reproducible, no repeated (stem, pair, prompt) triple."""

from __future__ import annotations

import numpy as np
import pytest

from cvgen.data.shipped import Axis, Stems
from cvgen.extract.sampler import axis_texts, baseline_text, draw_samples

STEMS = Stems(pre=("You are", "Act as", "Be"), post=("an author", "a poet"))


def _axis(name: str, n_pairs: int) -> Axis:
    pairs = tuple((f"who is calm {i}", f"who is wild {i}") for i in range(n_pairs))
    return Axis(name=name, classes=("calm", "wild"), pairs=pairs)


def test_same_seed_same_samples_other_seed_differs() -> None:
    axes = [_axis("a", 5)]
    one = draw_samples(40, stems=STEMS, n_prompts=50, axes=axes, seed=7)
    two = draw_samples(40, stems=STEMS, n_prompts=50, axes=axes, seed=7)
    other = draw_samples(40, stems=STEMS, n_prompts=50, axes=axes, seed=8)
    assert np.array_equal(one.triples("a"), two.triples("a"))
    assert not np.array_equal(one.triples("a"), other.triples("a"))


def test_no_repeated_triple_while_unused_remain() -> None:
    axis = _axis("a", 4)
    population = len(STEMS) * 5 * 4  # 6 stems x 5 prompts x 4 pairs = 120 triples
    plan = draw_samples(population, stems=STEMS, n_prompts=5, axes=[axis], seed=3)
    triples = {tuple(row) for row in plan.triples("a").tolist()}
    assert len(triples) == population


def test_pairs_are_used_evenly() -> None:
    plan = draw_samples(64, stems=STEMS, n_prompts=100, axes=[_axis("a", 16)], seed=0)
    assert np.bincount(plan.pair_index["a"], minlength=16).tolist() == [4] * 16


def test_adding_an_axis_keeps_the_others() -> None:
    alone = draw_samples(30, stems=STEMS, n_prompts=40, axes=[_axis("a", 6)], seed=1)
    both = draw_samples(30, stems=STEMS, n_prompts=40, axes=[_axis("b", 9), _axis("a", 6)], seed=1)
    assert np.array_equal(alone.triples("a"), both.triples("a"))
    assert np.array_equal(alone.stem_index, both.stem_index)


def test_texts_share_stem_and_differ_only_in_the_continuation() -> None:
    axis = _axis("a", 3)
    plan = draw_samples(5, stems=STEMS, n_prompts=10, axes=[axis], seed=2)
    for row in range(5):
        base = baseline_text(plan, STEMS, row)
        negative, positive = axis_texts(plan, STEMS, axis, row)
        pair = axis.pairs[int(plan.pair_index["a"][row])]
        assert negative == base[:-1] + f" {pair[0]}."
        assert positive == base[:-1] + f" {pair[1]}."


def test_zero_samples_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        draw_samples(0, stems=STEMS, n_prompts=3, axes=[_axis("a", 2)], seed=0)


@pytest.mark.parametrize("seed", [0, 5])
def test_a_smaller_draw_is_a_prefix_of_a_larger_one(seed: int) -> None:
    axes = [_axis("a", 4), _axis("b", 7)]
    population = len(STEMS) * 200  # 1200 (stem, prompt) keys: n = 2600 is past two rounds
    largest = draw_samples(2600, stems=STEMS, n_prompts=200, axes=axes, seed=seed)
    for n in (1, 7, 23, 600, population - 1, population, population + 1, 2500):
        plan = draw_samples(n, stems=STEMS, n_prompts=200, axes=axes, seed=seed)
        assert np.array_equal(plan.stem_index, largest.stem_index[:n]), n
        assert np.array_equal(plan.prompt_index, largest.prompt_index[:n]), n
        for axis in ("a", "b"):
            assert np.array_equal(plan.pair_index[axis], largest.pair_index[axis][:n]), (n, axis)
    other = draw_samples(2600, stems=STEMS, n_prompts=200, axes=axes, seed=seed + 1)
    assert not np.array_equal(other.prompt_index, largest.prompt_index)
    for axis in ("a", "b"):
        assert not np.array_equal(other.triples(axis), largest.triples(axis))


def test_every_round_is_a_permutation_of_the_stem_prompt_keys() -> None:
    plan = draw_samples(75, stems=STEMS, n_prompts=5, axes=[_axis("a", 3)], seed=9)
    keys = plan.stem_index * 5 + plan.prompt_index
    assert sorted(keys[:30].tolist()) == list(range(30))
    assert sorted(keys[30:60].tolist()) == list(range(30))
    assert len(set(keys[60:].tolist())) == 15
    assert not np.array_equal(keys[:30], keys[30:60])  # each round is shuffled anew


def test_a_large_population_is_not_materialised() -> None:
    many = Stems(pre=tuple(f"p{i}" for i in range(300)), post=tuple(f"q{i}" for i in range(300)))
    plan = draw_samples(
        1000, stems=many, n_prompts=1_000_000_000, axes=[_axis("a", 2)], seed=1
    )  # 9e13 keys: a full permutation would not fit in memory
    keys = plan.stem_index.astype(object) * 1_000_000_000 + plan.prompt_index.astype(object)
    assert len(set(keys.tolist())) == 1000
