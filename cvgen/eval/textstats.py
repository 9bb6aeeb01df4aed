"""Text statistics that show an axis at work in generated text (word length and rarity, the
share of quoted speech, sentiment; person, tense, length and register from
`cvgen.eval.style_stats`), registered by name in `TEXT_STATISTICS`. An axis file names
the ones that fit it in its `evaluation` field (`cvgen.data.axis_fields.AxisStatistic`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from statistics import fmean
from typing import Any

from cvgen.eval import style_stats as style
from cvgen.eval.statistics import MetricError

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
# straight double quotes, curly double quotes; an unclosed quote runs to the end of the text
_QUOTED = re.compile(r'"[^"]*(?:"|$)|\u201c[^\u201d]*(?:\u201d|$)')


def words(text: str) -> list[str]:
    """The words of ``text`` (letters, with inner apostrophes), in order."""
    return _WORD.findall(text)


def mean_word_length(text: str) -> float:
    """Mean length in letters of the words in ``text`` (0 for a text with no word)."""
    found = words(text)
    return fmean(len(word) for word in found) if found else 0.0


def mean_zipf_frequency(text: str, *, language: str = "en") -> float:
    """Mean Zipf frequency (log10 of occurrences per billion words, from ``wordfreq``) of the
    words in ``text``: lower means rarer words. 0 for a text with no word."""
    from wordfreq import zipf_frequency

    found = words(text)
    return fmean(zipf_frequency(word.lower(), language) for word in found) if found else 0.0


def quoted_fraction(text: str) -> float:
    """The fraction of the characters of ``text`` that lie inside double quotes, the quote
    marks included; a quote left open runs to the end (a generation cut mid-speech)."""
    if not text:
        return 0.0
    return sum(len(match) for match in _QUOTED.findall(text)) / len(text)


@lru_cache(maxsize=1)
def _vader() -> Any:
    """The VADER analyser, built once on first use (its lexicon ships in the wheel)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER compound sentiment score of ``text``, in [-1, 1]: above 0 for a positive tone,
    below 0 for a negative one, 0 for a neutral text."""
    return float(_vader().polarity_scores(text)["compound"])


@dataclass(frozen=True)
class TextStatistic:
    """A number computed from one generated text, registered under ``name``."""

    name: str
    description: str
    function: Callable[[str], float]


TEXT_STATISTICS: dict[str, TextStatistic] = {
    stat.name: stat
    for stat in (
        TextStatistic("word_length", "mean word length in letters", mean_word_length),
        TextStatistic(
            "zipf_frequency",
            "mean Zipf frequency of the words (wordfreq; lower = rarer)",
            mean_zipf_frequency,
        ),
        TextStatistic(
            "quoted_fraction", "share of characters inside double quotes", quoted_fraction
        ),
        # axes/optimism.json and axes/empathy.json name it, axes/compassion.json does not:
        # VADER rates compassion's sadistic pole kindly ("delight", "savour"); it ordered only
        # 6 of the 10 compassion probe pairs right, against 9 of 10 for optimism and empathy
        TextStatistic("sentiment", "VADER compound sentiment score, -1 to 1", sentiment),
        TextStatistic(
            "first_person_share",
            "first-person pronouns over first- and third-person ones",
            style.first_person_share,
        ),
        TextStatistic(
            "past_tense_share", "past verb forms over past and present ones", style.past_tense_share
        ),
        TextStatistic("words_per_reply", "words in the reply", style.words_per_reply),
        TextStatistic("contraction_rate", "contractions per word", style.contraction_rate),
        TextStatistic("casual_word_rate", "casual words per word", style.casual_word_rate),
        TextStatistic("casual_rate", "contractions and casual words per word", style.casual_rate),
        TextStatistic("words_per_sentence", "mean words per sentence", style.words_per_sentence),
    )
}


def get_statistic(name: str) -> TextStatistic:
    """The text statistic registered under ``name``; MetricError listing the valid names."""
    try:
        return TEXT_STATISTICS[name]
    except KeyError:
        valid = ", ".join(sorted(TEXT_STATISTICS))
        raise MetricError(f"unknown statistic {name!r}; choose one of: {valid}") from None
