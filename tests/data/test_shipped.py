"""Shipped data counts, axis-file validation and writing-prompt loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvgen.common.files import DataError
from cvgen.data.axis_fields import AXIS_METHODS, AxisStatistic
from cvgen.data.shipped import (
    load_axis,
    load_stems,
    load_writing_prompts,
    shipped_axis_names,
)

EXPECTED_AXES = {
    "language": ("simple", "ornate"),
    "storytelling": ("explicit", "descriptive"),
    "character_focus": ("narration", "dialogue"),
    "empathy": ("empathy", "sociopathy"),
    "honesty": ("honesty", "machiavellianism"),
    "humility": ("humility", "narcissism"),
    "compassion": ("compassion", "sadism"),
    "optimism": ("optimism", "nihilism"),
    "person": ("first_person", "third_person"),
    "tense": ("past", "present"),
    "length": ("terse", "expansive"),
    "register": ("casual", "formal"),
}


def test_shipped_stems_have_at_least_40_distinct_each() -> None:
    stems = load_stems()
    assert len(set(stems.pre)) == len(stems.pre) >= 40
    assert len(set(stems.post)) == len(stems.post) >= 40
    assert stems.stem(0) == f"{stems.pre[0]} {stems.post[0]}"
    assert stems.stem(len(stems.post) + 1) == f"{stems.pre[1]} {stems.post[1]}"


@pytest.mark.parametrize("name", sorted(EXPECTED_AXES))
def test_shipped_axes_have_their_classes_in_order_and_12_pairs(name: str) -> None:
    axis = load_axis(name)
    assert axis.classes == EXPECTED_AXES[name]
    assert len(axis.pairs) >= 12
    for negative, positive in axis.pairs:
        assert not negative.endswith(".") and not positive.endswith(".")


def test_shipped_axis_list_is_exactly_the_twelve() -> None:
    assert len(EXPECTED_AXES) == 12
    assert shipped_axis_names() == sorted(EXPECTED_AXES)


def test_shipped_writing_prompts_are_500_distinct() -> None:
    prompts = load_writing_prompts()
    assert len(prompts) >= 500
    normalised = {" ".join(p.lower().split()) for p in prompts}
    assert len(normalised) == len(prompts)


def _axis_file(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(content))
    return path


GOOD = {"classes": ["calm", "angry"], "data": [["who stays calm", "who rages"], ["a", "b"]]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"data": GOOD["data"]}, "field 'classes' is missing"),
        ({"classes": ["calm"], "data": GOOD["data"]}, "field 'classes' is [\"calm\"]"),
        ({"classes": ["calm", "calm"], "data": GOOD["data"]}, "names the same class twice: 'calm'"),
        ({"classes": GOOD["classes"]}, "field 'data' is missing"),
        ({"classes": GOOD["classes"], "data": [["x", "y", "z"]]}, "field 'data[0]' has 3 items"),
        (
            {"classes": GOOD["classes"], "data": [["x", "y"], ["only"]]},
            "field 'data[1]' has 1 item;",
        ),
        ({"classes": GOOD["classes"], "data": [["x", "  "]]}, "'data[0][1]' is an empty positive"),
        ({"classes": GOOD["classes"], "data": [["", "y"]]}, "'data[0][0]' is an empty negative"),
        (
            {"classes": GOOD["classes"], "data": [[1, 2]]},
            "field 'data[0][0]' is the number 1, not a string; expected the negative continuation",
        ),
        (
            {"classes": GOOD["classes"], "data": [["x", None]]},
            "field 'data[0][1]' is null, not a string; expected the positive continuation",
        ),
        (
            {"classes": GOOD["classes"], "data": [["x", "y"], ["p", "q"], ["x", "y"]]},
            "field 'data[2]' duplicates data[0]",
        ),
        ({"classes": GOOD["classes"], "data": [["same", "same"]]}, "same text on both sides"),
        ({"name": "bad name!", **GOOD}, "field 'name' is 'bad name!'"),
    ],
)
def test_user_axis_errors_name_file_and_field(
    tmp_path: Path, content: object, message: str
) -> None:
    path = _axis_file(tmp_path, content)
    with pytest.raises(DataError) as caught:
        load_axis(str(path))
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_user_axis_file_loads(tmp_path: Path) -> None:
    axis = load_axis(str(_axis_file(tmp_path, GOOD)))
    assert axis.name == "mine"
    assert axis.classes == ("calm", "angry")
    assert axis.pairs == (("who stays calm", "who rages"), ("a", "b"))


def test_user_axis_names_its_evaluation_statistics(tmp_path: Path) -> None:
    statistics = [
        {"name": "sentiment", "expected_sign": -1},
        {"name": "word_length", "expected_sign": 1},
    ]
    axis = load_axis(str(_axis_file(tmp_path, {**GOOD, "evaluation": {"statistics": statistics}})))
    assert axis.statistics == (AxisStatistic("sentiment", -1), AxisStatistic("word_length", 1))
    assert load_axis(str(_axis_file(tmp_path, GOOD))).statistics == ()


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        (
            {"statistics": [{"name": "rhyme", "expected_sign": 1}]},
            "field 'evaluation.statistics[0].name' is \"rhyme\"; choose one of: "
            "casual_rate, casual_word_rate, contraction_rate, first_person_share, past_tense_share, "
            "quoted_fraction, sentiment, word_length, words_per_reply, words_per_sentence, "
            "zipf_frequency",
        ),
        (
            {"statistics": [{"name": "sentiment", "expected_sign": 0}]},
            "field 'evaluation.statistics[0].expected_sign' is 0; expected 1",
        ),
        (
            {"statistics": [{"name": "sentiment", "expected_sign": True}]},
            "field 'evaluation.statistics[0].expected_sign' is true; expected 1",
        ),
        (
            {"statistics": [{"name": "sentiment"}]},
            'field \'evaluation.statistics[0]\' is {"name": "sentiment"}; expected an object '
            "with exactly 'name' and 'expected_sign'",
        ),
        ({"statistics": "sentiment"}, "field 'evaluation.statistics' is a string, expected a list"),
        ({"statistic": []}, "field 'evaluation' is {\"statistic\": []}; expected an object"),
        (
            {"statistics": [{"name": "sentiment", "expected_sign": 1}] * 2},
            "field 'evaluation.statistics[1].name' repeats 'sentiment'",
        ),
    ],
)
def test_axis_evaluation_errors_name_file_field_and_value(
    tmp_path: Path, evaluation: object, message: str
) -> None:
    path = _axis_file(tmp_path, {**GOOD, "evaluation": evaluation})
    with pytest.raises(DataError) as caught:
        load_axis(str(path))
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_axis_lists_shipped_ones() -> None:
    with pytest.raises(
        DataError, match="unknown axis 'nope'; shipped axes: character_focus, compassion"
    ):
        load_axis("nope")


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        load_axis(str(path))


def test_prompts_from_txt_deduplicate_and_strip(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("Write a poem.\n\n  Write a   poem. \nWrite a song.\n")
    assert load_writing_prompts(str(path)) == ("Write a poem.", "Write a song.")


def test_prompts_from_jsonl_csv_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ["Write a fable.", "Write a letter.", "Write a fable."]
    (tmp_path / "p.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "prompt": r}) for i, r in enumerate(rows))
    )
    (tmp_path / "p.csv").write_text("id,text\n" + "\n".join(f"{i},{r}" for i, r in enumerate(rows)))
    pq.write_table(pa.table({"task": rows}), tmp_path / "p.parquet")
    expected = ("Write a fable.", "Write a letter.")
    assert load_writing_prompts(str(tmp_path / "p.jsonl")) == expected
    assert load_writing_prompts(str(tmp_path / "p.csv")) == expected
    assert load_writing_prompts(str(tmp_path / "p.parquet"), column="task") == expected


def test_prompt_column_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"a": "x", "b": "y"}) + "\n")
    with pytest.raises(DataError, match="cannot tell which column holds the prompts"):
        load_writing_prompts(str(path))
    with pytest.raises(DataError, match="column 'zzz' not found; columns: a, b"):
        load_writing_prompts(str(path), column="zzz")


def test_missing_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_writing_prompts(str(tmp_path / "absent.csv"))


def test_missing_shipped_prompts_are_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cvgen.data.shipped

    monkeypatch.setattr(cvgen.data.shipped, "data_root", lambda: tmp_path)
    with pytest.raises(DataError) as caught:
        load_writing_prompts()
    assert str(caught.value) == (
        f"{tmp_path / 'writing_prompts.txt'}: the shipped writing prompts are missing; "
        "reinstall cvgen"
    )


# ------------------------------------------------------- bad files through the CLI (issue 12)


def _generate_refuses(tmp_path: Path, *options: str) -> str:
    """Run `cvgen generate` with `options` on a model that need not exist (the data is read
    first): exit 1, one line, nothing written; returns the line."""
    from click.testing import CliRunner

    from cvgen.cli import main

    out = tmp_path / "never-written"
    arguments = ["generate", "-m", str(tmp_path / "absent.gguf"), "-o", str(out), *options]
    inputs = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
    assert "unexpected" not in result.output and "datasets" not in result.output
    assert not out.exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == inputs
    return result.output.removeprefix("Error: ").rstrip("\n")


def test_non_utf8_and_folder_axis_files_name_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"classes": ["a", "b"],\n "data": [["caf\xe9", "tea"]]}')
    assert _generate_refuses(tmp_path, "-a", str(latin)) == (
        f"{latin}: line 2: not UTF-8 text (byte 0xe9 at offset 39); save the file as UTF-8"
    )
    folder = tmp_path / "my-axes"
    folder.mkdir()
    assert _generate_refuses(tmp_path, "-a", str(folder)) == (
        f"--axis {folder}: is a folder, not an axis .json file"
    )
    named_json = tmp_path / "odd.json"
    named_json.mkdir()
    assert _generate_refuses(tmp_path, "-a", str(named_json)) == (
        f"{named_json}: is a folder, not an axis .json file"
    )
    bom = tmp_path / "bom.json"  # a byte-order mark, as some editors write, is fine
    bom.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"classes": ["a", "b"], "data": [["x", "y"]]}).encode()
    )
    assert load_axis(str(bom)).pairs == (("x", "y"),)


def test_non_utf8_prompts_name_the_file_and_line(tmp_path: Path) -> None:
    for suffix in (".txt", ".jsonl", ".csv"):
        prompts = tmp_path / f"prompts{suffix}"
        prompts.write_bytes(b"prompt\nWrite a poem.\nWrite about na\xefve art.\n")
        assert _generate_refuses(tmp_path, "-a", "language", "--prompts", str(prompts)) == (
            f"{prompts}: line 3: not UTF-8 text (byte 0xef at offset 35); save the file as UTF-8"
        )


@pytest.fixture
def no_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """`datasets.load_dataset` fails the test if called; returns the datasets cache folder
    (under the isolated HF_HOME) that must stay absent."""
    import datasets

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"datasets.load_dataset called with {args}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    return tmp_path / "hf-home" / "datasets"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "p.jsonl",
            '{"prompt": "Write a fable."}\n\n{"prompt": "Write a song.",}\n',
            "p.jsonl: line 3: not valid JSON (Expecting property name enclosed in double quotes "
            "at column 28)",
        ),
        ("p.jsonl", '{"prompt": "a"}\n["b"]\n', "p.jsonl: line 2: is an array, not a JSON object"),
        (
            "p.jsonl",
            '{"prompt": "a"}\n{"prompt": 7}\n',
            "p.jsonl: line 2: column 'prompt' is int, not text",
        ),
        (
            "p.csv",
            'prompt,id\n"Write a fable.",1\nWrite, a song,2\n',
            "p.csv: line 3: 3 fields, but the header names 2",
        ),
        (
            "p.csv",
            'prompt\n"Write a fable.\n',
            "p.csv: line 2: not valid CSV (a quoted field is never closed)",
        ),
        (
            "p.json",
            '[{"prompt": "a"}, "b"]',
            "p.json: item 2 of the array is a string, not a JSON object",
        ),
        (
            "p.json",
            '{"prompt": "a",\n "id": }',
            "p.json: line 2: not valid JSON (Expecting value at column 8)",
        ),
        ("p.parquet", "not parquet at all", "p.parquet: not a readable Parquet file"),
    ],
)
def test_unreadable_prompt_files_name_the_file_and_line(
    tmp_path: Path, no_datasets: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / "data" / name
    path.parent.mkdir()
    path.write_text(content)
    line = _generate_refuses(tmp_path, "-a", "language", "--prompts", str(path))
    assert line.startswith(f"{path.parent}/{message}"), line
    assert not no_datasets.exists()


def test_prompt_folders_are_read_file_by_file(tmp_path: Path, no_datasets: Path) -> None:
    folder = tmp_path / "prompts"
    (folder / "more").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"text": "Write a fable."}\n{"text": "Write a song."}\n')
    (folder / "more" / "b.jsonl").write_text('{"text": "Write a letter."}\n')
    (folder / ".hidden.jsonl").write_text("not json")
    assert load_writing_prompts(str(folder)) == (
        "Write a fable.",
        "Write a song.",
        "Write a letter.",
    )
    (folder / "more" / "c.jsonl").write_text('{"text": "Write a poem."}\n{"text": "x"\n')
    line = _generate_refuses(tmp_path, "-a", "language", "--prompts", str(folder))
    assert (
        line
        == f"{folder / 'more' / 'c.jsonl'}: line 2: not valid JSON (Expecting ',' delimiter at column 13)"
    )
    (folder / "d.csv").write_text("text\nWrite a play.\n")
    assert _generate_refuses(tmp_path, "-a", "language", "--prompts", str(folder)) == (
        f"{folder}: the folder holds .csv and .jsonl files; keep one format per folder"
    )
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"prompt": ["Write a fable.", None, "Write a song."]}))
    assert load_writing_prompts(str(columns)) == ("Write a fable.", "Write a song.")
    assert not no_datasets.exists()


def test_an_axis_file_may_name_its_method_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    from cvgen.solve.methods import METHODS

    assert tuple(sorted(METHODS)) == AXIS_METHODS
    assert load_axis(str(_axis_file(tmp_path, {**GOOD, "method": "pca-diff"}))).method == "pca-diff"
    assert load_axis(str(_axis_file(tmp_path, GOOD))).method is None
    assert load_axis("person").method == "mean-diff"
    path = _axis_file(tmp_path, {**GOOD, "method": "median"})
    with pytest.raises(DataError) as caught:
        load_axis(str(path))
    assert str(caught.value) == (
        f"{path}: field 'method' is \"median\"; expected one of cross-covariance, mean-diff, "
        "pca-diff"
    )
