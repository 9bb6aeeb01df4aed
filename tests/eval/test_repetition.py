"""cvgen.eval.repetition: repeated n-grams by hand."""

from __future__ import annotations

import pytest

from cvgen.eval.repetition import repeated_ngram_rate, text_repetition
from cvgen.eval.statistics import MetricError


def test_repeated_ngram_rate_by_hand() -> None:
    # 4-grams: abcd bcda cdab dabc abcd -> the last repeats the first: 1 of 5
    assert repeated_ngram_rate(["a", "b", "c", "d", "a", "b", "c", "d"], n=4) == 0.2
    assert repeated_ngram_rate([1, 2, 3, 4, 5, 6, 7], n=4) == 0.0
    assert repeated_ngram_rate(["a", "a", "a", "a", "a"], n=2) == 0.75  # overlapping repeats count
    assert repeated_ngram_rate(["a", "a", "a"], n=4) == 0.0  # fewer than n tokens: no n-gram


def test_repeated_ngram_rate_rejects_bad_input() -> None:
    with pytest.raises(MetricError, match=r"^n: 0 must be an integer >= 1$"):
        repeated_ngram_rate(["a"], n=0)
    with pytest.raises(MetricError, match=r"^tokens: got a string"):
        repeated_ngram_rate("abcabc", n=2)


def test_text_repetition_uses_lower_cased_words() -> None:
    # words: the cat sat the cat sat -> bigrams: (the cat) (cat sat) (sat the) (the cat) (cat sat)
    assert text_repetition('The cat sat. "the CAT sat!"', n=2) == 0.4
    assert text_repetition("Every word here differs from the others.") == 0.0
