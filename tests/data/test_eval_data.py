"""The held-out evaluation data: shipped content, its separation from the extraction prompts,
and the loader's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import pytest

from cvgen.data.eval_data import (
    EvalDataError,
    PromptOverlap,
    find_probes,
    load_eval_prompts,
    load_neutral_texts,
    load_probes,
    normalise_prompt,
    prompt_overlaps,
    shipped_probe_axes,
)
from cvgen.data.shipped import load_axis, load_writing_prompts, shipped_axis_names
from cvgen.eval.style_stats import (
    casual_word_rate,
    contraction_rate,
    first_person_share,
    past_tense_share,
    words_per_reply,
    words_per_sentence,
)
from cvgen.eval.textstats import mean_word_length, mean_zipf_frequency, quoted_fraction

QUOTE_MARKS = "\"'\u201c\u201d\u2018\u2019"


# ---------------------------------------------------------------- held-out prompts


def test_shipped_prompts_are_48_short_distinct_prompts() -> None:
    prompts = load_eval_prompts()
    assert len(prompts) == 48
    assert len({normalise_prompt(p) for p in prompts}) == 48
    assert max(len(p.split()) for p in prompts) <= 25
    assert not any(p.startswith("#") for p in prompts)


def test_shipped_prompts_do_not_overlap_the_extraction_prompts() -> None:
    assert prompt_overlaps(load_eval_prompts(), load_writing_prompts()) == []


def test_a_copied_extraction_prompt_is_caught() -> None:
    extraction = load_writing_prompts()
    copied = extraction[17]
    overlaps = prompt_overlaps([*load_eval_prompts(), copied.upper() + "!!"], extraction)
    assert [(o.prompt, o.reference, o.reason) for o in overlaps] == [
        (copied.upper() + "!!", copied, "same prompt after normalisation")
    ]


def test_a_six_word_run_is_an_overlap_and_a_five_word_run_is_not() -> None:
    reference = ["Write a poem about the quiet harbour at dusk."]
    six = "Recite a poem, about the QUIET harbour!"  # punctuation and case do not break a run
    assert prompt_overlaps([six], reference) == [
        PromptOverlap(six, reference[0], "shares the 6-word run 'a poem about the quiet harbour'")
    ]
    five = ["Recite a poem about the quiet pier.", "Paint the quiet harbour at dusk in oils."]
    assert prompt_overlaps(five, reference) == []
    assert len(prompt_overlaps(five, reference, run_words=5)) == 2


def test_normalise_prompt_drops_case_punctuation_and_spacing() -> None:
    assert normalise_prompt("  Write a POEM,\tabout   the sea!  ") == "write a poem about the sea"


# ---------------------------------------------------------------- probes


def test_every_shipped_axis_has_probes() -> None:
    assert shipped_probe_axes() == shipped_axis_names()


@pytest.mark.parametrize("axis", shipped_axis_names())
def test_shipped_probes_match_their_axis_and_stay_within_the_word_limits(axis: str) -> None:
    probes = load_probes(axis)
    assert probes.axis == axis
    assert probes.classes == load_axis(axis).classes
    assert len(probes.pairs) >= 8
    assert len(set(probes.pairs)) == len(probes.pairs)
    for negative, positive in probes.pairs:
        assert negative != positive
        for text in (negative, positive):
            assert 12 <= len(text.split()) <= 30, text
        # similar length within a pair, so neither side wins on length alone
        assert abs(len(negative.split()) - len(positive.split())) <= 8, (negative, positive)


def test_language_probes_put_the_long_rare_words_on_the_ornate_side() -> None:
    probes = load_probes("language")
    assert probes.classes == ("simple", "ornate")
    for simple, ornate in probes.pairs:
        assert mean_word_length(ornate) > mean_word_length(simple) + 0.5, ornate
        assert mean_zipf_frequency(ornate) < mean_zipf_frequency(simple) - 0.5, ornate


def test_character_focus_probes_quote_speech_only_on_the_dialogue_side() -> None:
    probes = load_probes("character_focus")
    assert probes.classes == ("narration", "dialogue")
    for narration, dialogue in probes.pairs:
        assert quoted_fraction(narration) == 0.0, narration
        assert quoted_fraction(dialogue) > 0.4, dialogue


def test_shipped_probes_do_not_overlap_the_extraction_prompts() -> None:
    texts = [
        text for axis in shipped_axis_names() for pair in load_probes(axis).pairs for text in pair
    ]
    assert prompt_overlaps(texts, load_writing_prompts()) == []


def test_person_probes_say_i_or_we_only_on_the_first_person_side() -> None:
    probes = load_probes("person")
    assert probes.classes == ("first_person", "third_person")
    for first, third in probes.pairs:
        assert first_person_share(first) > 0.8, first
        assert first_person_share(third) < 0.2, third


def test_tense_probes_use_past_forms_only_on_the_past_side() -> None:
    probes = load_probes("tense")
    assert probes.classes == ("past", "present")
    for past, present in probes.pairs:
        assert past_tense_share(past) > 0.7, past
        assert past_tense_share(present) < 0.3, present


# the last words of a terse probe, which end the whole piece
CLOSING_CUES = (
    "The end.",
    "That is all.",
    "That is all I have.",
    "That is the whole piece.",
    "Nothing more to say.",
    "Done.",
    "Finished.",
)


def test_length_probes_end_the_piece_only_on_the_terse_side() -> None:
    probes = load_probes("length")
    assert probes.classes == ("terse", "expansive")
    for terse, expansive in probes.pairs:
        assert terse.endswith(CLOSING_CUES), terse
        # the expansive opening stops mid-flow, with more to come, and never closes
        assert expansive.endswith((",", ":")), expansive
        assert not any(cue in expansive for cue in CLOSING_CUES), expansive
        assert words_per_reply(expansive) > words_per_reply(terse), expansive


def test_register_probes_put_contractions_and_slang_only_on_the_casual_side() -> None:
    probes = load_probes("register")
    assert probes.classes == ("casual", "formal")
    for casual, formal in probes.pairs:
        assert contraction_rate(casual) > 0.0 and casual_word_rate(casual) > 0.0, casual
        assert contraction_rate(formal) == 0.0 and casual_word_rate(formal) == 0.0, formal
        # measured: the formal sentences are 2.7 to 6.3 times as long
        assert words_per_sentence(formal) > 2 * words_per_sentence(casual), formal


@pytest.mark.parametrize("axis", ["optimism", "empathy", "compassion"])
def test_the_warm_first_class_reads_more_positive_than_the_dark_second(axis: str) -> None:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    probes = load_probes(axis)
    gaps = [
        analyzer.polarity_scores(negative)["compound"]
        - analyzer.polarity_scores(positive)["compound"]
        for negative, positive in probes.pairs
    ]
    # VADER is a word-list scorer ('delight' in a sadistic line reads as positive), so the
    # check is on the mean gap; measured: optimism 0.54, empathy 0.42, compassion 0.50
    assert fmean(gaps) > 0.3


def test_find_probes_returns_the_shipped_probes_only_for_matching_classes() -> None:
    found = find_probes("optimism", ("optimism", "nihilism"))
    assert found is not None and found == load_probes("optimism")
    assert find_probes("optimism", ("nihilism", "optimism")) is None
    assert find_probes("language", ("plain", "ornate")) is None
    assert find_probes("formality", ("casual", "formal")) is None


def test_unknown_axis_lists_the_shipped_probes() -> None:
    with pytest.raises(EvalDataError) as caught:
        load_probes("formality")
    assert str(caught.value) == (
        "no shipped probes for axis 'formality'; shipped probes: "
        + ", ".join(shipped_axis_names())
        + " (or pass your own probes file)"
    )
    with pytest.raises(EvalDataError, match="no shipped probes for axis '../axes/language'"):
        load_probes("../axes/language")


GOOD_PROBES = {
    "axis": "formality",
    "classes": ["casual", "formal"],
    "description": "mine",
    "pairs": [["hey,  so here's the thing", "Allow me to begin"], ["ok so", "Firstly"]],
}


def _json_file(tmp_path: Path, content: object, name: str = "probes.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def test_a_user_probes_file_overrides_the_shipped_one(tmp_path: Path) -> None:
    probes = load_probes("formality", _json_file(tmp_path, GOOD_PROBES))
    assert probes.classes == ("casual", "formal")
    assert probes.pairs == (("hey, so here's the thing", "Allow me to begin"), ("ok so", "Firstly"))
    assert probes.description == "mine"
    assert probes.negative == "casual" and probes.positive == "formal"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pairs": None}, "field 'pairs' is missing"),
        ({"classes": ["casual"]}, "field 'classes' is [\"casual\"], expected two different"),
        ({"classes": ["casual", "casual"]}, 'field \'classes\' is ["casual", "casual"]'),
        ({"classes": ["casual", " "]}, "field 'classes[1]' is ' ', expected a non-empty string"),
        ({"axis": "language"}, "field 'axis' is 'language', expected 'formality'"),
        ({"pairs": []}, "field 'pairs' is [], expected a non-empty list of [negative, positive]"),
        ({"pairs": [["a", "b", "c"]]}, 'field \'pairs[0]\' is ["a", "b", "c"], expected two'),
        ({"pairs": [["a", "b"], ["c", ""]]}, "field 'pairs[1][1]' is '', expected a non-empty"),
        ({"pairs": [["a", "b"], [3, "d"]]}, "field 'pairs[1][0]' is 3, expected a non-empty"),
        ({"pairs": [["same", "same"]]}, "field 'pairs[0][1]' is 'same', expected a text different"),
        (
            {"pairs": [["a", "b"], ["a", " b"]]},
            'field \'pairs[1]\' is ["a", "b"], expected a pair not already in pairs[0]',
        ),
        ({"description": 7}, "field 'description' is 7, expected a string"),
    ],
)
def test_bad_probes_files_name_the_file_and_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    content = {**GOOD_PROBES, **change}
    content = {key: value for key, value in content.items() if value is not None}
    path = _json_file(tmp_path, content)
    with pytest.raises(EvalDataError) as caught:
        load_probes("formality", path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_probes_empty_text_message_in_full(tmp_path: Path) -> None:
    path = _json_file(
        tmp_path, {**GOOD_PROBES, "pairs": [["a", "b"], ["c", "d"], ["e", "f"], ["g", ""]]}
    )
    with pytest.raises(EvalDataError) as caught:
        load_probes("formality", path)
    assert str(caught.value) == f"{path}: field 'pairs[3][1]' is '', expected a non-empty string"


def test_probes_file_that_is_not_json_or_not_an_object(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"broken\.json: not valid JSON \(Expecting"):
        load_probes("formality", broken)
    listed = _json_file(tmp_path, [1, 2], "list.json")
    with pytest.raises(EvalDataError) as caught:
        load_probes("formality", listed)
    assert str(caught.value) == (
        f"{listed}: top level is list, expected an object with fields 'axis', 'classes', 'pairs'"
    )
    missing = tmp_path / "missing.json"
    with pytest.raises(EvalDataError) as caught:
        load_probes("formality", missing)
    assert str(caught.value) == f"{missing}: file not found"


# ---------------------------------------------------------------- neutral texts


def test_shipped_neutral_texts_are_flat_factual_replies() -> None:
    texts = load_neutral_texts()
    assert len(texts) >= 10
    assert len({t.request for t in texts}) == len(texts)
    for text in texts:
        assert text.request.endswith("?"), text.request
        assert 40 <= len(text.reply.split()) <= 120, text.request
        assert not any(mark in text.reply for mark in QUOTE_MARKS), text.request
        assert not any(mark in text.request for mark in QUOTE_MARKS), text.request


def test_neutral_texts_collapse_whitespace(tmp_path: Path) -> None:
    path = _json_file(tmp_path, {"texts": [{"request": " Why?\n", "reply": "Because  it\tis."}]})
    (text,) = load_neutral_texts(path)
    assert (text.request, text.reply) == ("Why?", "Because it is.")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"description": "x"}, "field 'texts' is missing"),
        (
            {"texts": []},
            "field 'texts' is [], expected a non-empty list of {request, reply} objects",
        ),
        (
            {"texts": ["why?"]},
            "field 'texts[0]' is 'why?', expected an object with fields 'request' and 'reply'",
        ),
        ({"texts": [{"request": "Why?"}]}, "field 'texts[0].reply' is missing"),
        (
            {"texts": [{"request": "Why?", "reply": "So."}, {"request": "", "reply": "No."}]},
            "field 'texts[1].request' is '', expected a non-empty string",
        ),
        (
            {"texts": [{"request": "A?", "reply": "So."}, {"request": "B?", "reply": "So."}]},
            "field 'texts[1].reply' is 'So.', expected a reply not already in texts[0]",
        ),
    ],
)
def test_bad_neutral_files_name_the_file_and_field(
    tmp_path: Path, content: object, message: str
) -> None:
    path = _json_file(tmp_path, content, "neutral.json")
    with pytest.raises(EvalDataError) as caught:
        load_neutral_texts(path)
    assert str(caught.value) == f"{path}: {message}"


# ---------------------------------------------------------------- prompts files


def test_prompts_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# header\n\nDescribe a  pier.\n   \n#another\nWrite a fable.\n", "utf-8")
    assert load_eval_prompts(path) == ("Describe a pier.", "Write a fable.")


def test_empty_prompts_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# only a header\n\n", encoding="utf-8")
    with pytest.raises(EvalDataError) as caught:
        load_eval_prompts(path)
    assert str(caught.value) == (
        f"{path}: field 'lines' holds no prompt, expected at least one line "
        "that is not blank and does not start with '#'"
    )


def test_duplicate_prompts_name_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# header\nDescribe a pier.\nWrite a fable.\ndescribe a PIER\n", "utf-8")
    with pytest.raises(EvalDataError) as caught:
        load_eval_prompts(path)
    assert str(caught.value) == (
        f"{path}: field 'line 4' is 'describe a PIER', expected a prompt not already on line 2"
    )


def test_missing_prompts_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "none.txt"
    with pytest.raises(EvalDataError) as caught:
        load_eval_prompts(path)
    assert str(caught.value) == f"{path}: file not found"
