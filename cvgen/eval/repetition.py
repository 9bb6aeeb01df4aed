"""Degenerate loops in generated text: the share of n-grams that repeat an earlier one."""

from __future__ import annotations

from collections.abc import Sequence

from cvgen.eval.statistics import MetricError
from cvgen.eval.textstats import words


def repeated_ngram_rate(tokens: Sequence[str] | Sequence[int], n: int = 4) -> float:
    """The fraction of the n-grams of ``tokens`` that already occurred EARLIER in it.

    A sequence of L >= n tokens has L - n + 1 n-grams (overlapping); one counts as repeated
    when the same n tokens started at an earlier position. Returns a value in [0, 1): 0.0
    for a sequence with no repeat, and 0.0 when L < n (no n-gram at all)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MetricError(f"n: {n!r} must be an integer >= 1")
    if isinstance(tokens, str):
        raise MetricError("tokens: got a string, not a sequence of tokens (use text_repetition)")
    items: list[str | int] = list(tokens)
    total = len(items) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[str | int, ...]] = set()
    repeated = 0
    for start in range(total):
        gram = tuple(items[start : start + n])
        if gram in seen:
            repeated += 1
        seen.add(gram)
    return repeated / total


def text_repetition(text: str, n: int = 4) -> float:
    """:func:`repeated_ngram_rate` over the lower-cased words of ``text``
    (``cvgen.eval.textstats.words``): the share of its word n-grams that repeat an earlier one."""
    return repeated_ngram_rate([word.lower() for word in words(text)], n)
