"""cvgen.eval.textstats: the text statistics, their registry, and the statistics the shipped
axis files name in their `evaluation` field."""

from __future__ import annotations

import numpy as np
import pytest

from cvgen.data.axis_fields import TEXT_STATISTIC_NAMES
from cvgen.data.shipped import load_axis, shipped_axis_names
from cvgen.eval.statistics import MetricError
from cvgen.eval.textstats import TEXT_STATISTICS, get_statistic

# The table that lived in cvgen.eval.metrics (`_AXIS_TABLE`) before the axis files held it.
FORMER_TABLE = {
    "language": (("word_length", +1), ("zipf_frequency", -1)),
    "character_focus": (("quoted_fraction", +1),),
    "optimism": (("sentiment", -1),),
    "empathy": (("sentiment", -1),),
}
# The axes added with the style statistics (issue 17).
STYLE_AXES = {
    "person": (("first_person_share", -1),),
    "tense": (("past_tense_share", -1),),
    "length": (("words_per_reply", +1),),
    "register": (
        ("casual_rate", -1),
        ("contraction_rate", -1),
        ("casual_word_rate", -1),
        ("words_per_sentence", +1),
    ),
}


def test_quoted_fraction_on_a_fixed_string() -> None:
    text = 'He said "hi" to me'
    assert get_statistic("quoted_fraction").function(text) == 4 / len(text)


def test_word_statistics() -> None:
    assert get_statistic("word_length").function("a bb ccc") == 2.0
    zipf = get_statistic("zipf_frequency").function
    assert zipf("perspicacious obfuscation") < zipf("the and of")


def test_sentiment_sign() -> None:
    sentiment = get_statistic("sentiment").function
    assert sentiment("What a wonderful, happy day; I love my kind friends.") > 0.5
    assert sentiment("This is a horrible, hateful disaster and I am miserable.") < -0.5
    assert sentiment("The table has four legs.") == 0.0


def test_unknown_statistic_lists_the_valid_names() -> None:
    with pytest.raises(
        MetricError,
        match=r"^unknown statistic 'rhyme'; choose one of: "
        r"casual_rate, casual_word_rate, contraction_rate, first_person_share, past_tense_share, "
        r"quoted_fraction, sentiment, word_length, words_per_reply, words_per_sentence, "
        r"zipf_frequency$",
    ):
        get_statistic("rhyme")


def test_the_registry_holds_exactly_the_names_the_axis_loader_accepts() -> None:
    assert set(TEXT_STATISTICS) == set(TEXT_STATISTIC_NAMES)


def test_shipped_axis_files_name_the_statistics_of_the_former_table_and_style_axes() -> None:
    for name in shipped_axis_names():
        found = tuple((s.name, s.expected_sign) for s in load_axis(name).statistics)
        assert found == (FORMER_TABLE | STYLE_AXES).get(name, ()), name


@pytest.mark.parametrize(
    ("axis", "statistic"),
    [
        ("language", "word_length"),
        ("language", "zipf_frequency"),
        ("optimism", "sentiment"),
        ("person", "first_person_share"),
        ("tense", "past_tense_share"),
    ],
)
def test_expected_sign_agrees_with_the_axis_own_class_descriptions(
    axis: str, statistic: str
) -> None:
    """The second class's continuations, scored by the statistic, move the expected way."""
    function = get_statistic(statistic).function
    loaded = load_axis(axis)
    change = np.mean([function(second) - function(first) for first, second in loaded.pairs])
    (sign,) = [s.expected_sign for s in loaded.statistics if s.name == statistic]
    assert np.sign(change) == sign
