"""The person, tense, length and register statistics on known strings."""

from __future__ import annotations

import pytest

from cvgen.eval.textstats import get_statistic


def stat(name: str, text: str) -> float:
    return get_statistic(name).function(text)


def test_person_counts_first_against_third_person_pronouns() -> None:
    assert stat("first_person_share", "I packed my bag and we left.") == 1.0
    assert stat("first_person_share", "She packed her bag and they left.") == 0.0
    assert stat("first_person_share", "I told him that my sister saw them.") == pytest.approx(0.5)
    assert stat("first_person_share", "The rain fell on the roofs.") == 0.5  # nothing to count
    assert stat("first_person_share", "It is mine, not hers or theirs.") == pytest.approx(1 / 3)


def test_tense_counts_past_against_present_forms() -> None:
    assert stat("past_tense_share", "She walked home and saw the lights; it was late.") == 1.0
    assert stat("past_tense_share", "She walks home and sees the lights; it is late.") == 0.0
    # "need", "indeed", "red" and "speed" end in -ed and are no past forms
    assert stat("past_tense_share", "Indeed I need the red car for speed.") == 0.5
    assert stat("past_tense_share", "He jumped, then he runs.") == pytest.approx(0.5)


def test_length_is_words_per_reply() -> None:
    assert stat("words_per_reply", "") == 0.0
    assert stat("words_per_reply", "One, two -- three! Don't stop.") == 5.0


def test_register_statistics() -> None:
    casual = "Yeah, it's gonna be cool, don't worry about that stuff."
    formal = "The committee will convene tomorrow to consider the proposal in detail."
    assert stat("contraction_rate", casual) == pytest.approx(2 / 10)
    assert stat("contraction_rate", formal) == 0.0
    assert stat("contraction_rate", "We\u2019ll see.") == pytest.approx(1 / 2)  # curly apostrophe
    assert stat("casual_word_rate", casual) == pytest.approx(4 / 10)  # yeah, gonna, cool, stuff
    assert stat("casual_word_rate", formal) == 0.0
    # it's, don't, and yeah, gonna, cool, stuff: one count of both marks
    assert stat("casual_rate", casual) == pytest.approx(6 / 10)
    assert stat("casual_rate", formal) == 0.0
    assert stat("words_per_sentence", "One two three. Four five! Six") == pytest.approx(2.0)
    assert stat("words_per_sentence", formal) == 11.0
    assert stat("words_per_sentence", "") == 0.0


def test_a_possessive_is_no_contraction() -> None:
    # "the captain's" and "Mary's" are possessives; "it's", "there's" and "let's" contract "is",
    # "is" and "us"
    possessive = "The captain's log and Mary's letter lay on the ship's desk."
    assert stat("contraction_rate", possessive) == 0.0
    assert stat("contraction_rate", "It's late, there's rain, so let's go.") == pytest.approx(3 / 7)
    assert stat("casual_rate", possessive) == 0.0
