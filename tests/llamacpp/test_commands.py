"""Exact command lines for a hand-written pack manifest (cvgen.llamacpp.commands)."""

from __future__ import annotations

import copy
import math
import shlex
import shutil
import subprocess
from typing import Any

import pytest

from cvgen.llamacpp.commands import (
    TARGETS,
    CommandError,
    build_command,
    combination_advice,
    default_model_path,
    format_scale,
    parse_assignment,
    preset_selection,
    quote_argument,
    vector_arguments,
)

MANIFEST: dict[str, Any] = {
    "model": {
        "name": "SmolLM2-135M-Instruct",
        "source": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "n_layer": 30,
        "n_embd": 576,
    },
    "axes": {
        "language": {
            "classes": ["simple", "ornate"],
            "files": {
                "debias": "lang__debias.gguf",
                "negative": "lang__simple.gguf",
                "positive": "lang__ornate.gguf",
            },
        },
        "optimism": {
            "classes": ["gloomy", "cheerful"],
            "files": {
                "debias": "opt__debias.gguf",
                "negative": "opt__gloomy.gguf",
                "positive": "opt__cheerful.gguf",
            },
        },
        "character_focus": {
            "classes": ["plot", "character"],
            "files": {
                "debias": "char__debias.gguf",
                "negative": "char__plot.gguf",
                "positive": "char__character.gguf",
            },
        },
    },
    "presets": {"vivid": {"language": 0.5, "character_focus": 0.4}},
}


def shell_words(command: str) -> list[str]:
    """The argv a real POSIX shell builds from ``command`` (its first word included)."""
    shell = shutil.which("sh")
    if shell is None:
        pytest.skip("no POSIX shell")
    script = "printf '%s\\0' " + command
    output = subprocess.run([shell, "-c", script], capture_output=True, check=True, text=True)
    return output.stdout.split("\0")[:-1]


def manifest_with(**changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(MANIFEST)
    manifest.update(changes)
    return manifest


# ---------------------------------------------------------------- format_scale


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, "0.5"),
        (1, "1"),
        (1.0, "1"),
        (0.25, "0.25"),
        (-0.35, "-0.35"),
        (10, "10"),
        (100.1, "100.1"),
        (0.0, "0"),
        (-0.0, "0"),
        (-0.001, "0"),
        (0.004, "0"),
        (0.1 + 0.2, "0.3"),
        # exact ties round away from zero
        (0.125, "0.13"),
        (-0.125, "-0.13"),
        (0.375, "0.38"),
        # the double nearest 1.005 is 1.00499999..., nearest 0.285 is 0.28499999...
        (1.005, "1"),
        (0.285, "0.28"),
        # the double nearest 0.005 is 0.005000000000000000104...
        (0.005, "0.01"),
        (-0.005, "-0.01"),
        (0.995, "0.99"),
        (0.9951, "1"),
        (1e20, "100000000000000000000"),
    ],
)
def test_format_scale(value: float, expected: str) -> None:
    assert format_scale(value) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e21, -2e21])
def test_format_scale_refuses_non_finite_and_huge(value: float) -> None:
    with pytest.raises(CommandError, match="^scale must be a finite number of magnitude"):
        format_scale(value)


# ---------------------------------------------------------------- parse_assignment


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("language=+0.6", ("language", 0.6)),
        ("language=-0.35", ("language", -0.35)),
        ("optimism=1", ("optimism", 1.0)),
        ("optimism=.5", ("optimism", 0.5)),
        ("optimism=5.", ("optimism", 5.0)),
        ("optimism=1e-1", ("optimism", 0.1)),
        ("weird name=2E0", ("weird name", 2.0)),
    ],
)
def test_parse_assignment(text: str, expected: tuple[str, float]) -> None:
    assert parse_assignment(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("language", "expected AXIS=SCALE, got 'language' (no '=')"),
        ("=0.5", "expected AXIS=SCALE, got '=0.5' (no axis name before '=')"),
        ("language=", "scale '' for axis 'language' is not a number"),
        ("language=high", "scale 'high' for axis 'language' is not a number"),
        ("language=nan", "scale 'nan' for axis 'language' is not a number"),
        ("language=inf", "scale 'inf' for axis 'language' is not a number"),
        ("language=-Infinity", "scale '-Infinity' for axis 'language' is not a number"),
        ("language= 0.5", "scale ' 0.5' for axis 'language' is not a number"),
        ("language=1_0", "scale '1_0' for axis 'language' is not a number"),
        ("language=0x1", "scale '0x1' for axis 'language' is not a number"),
        ("language=.", "scale '.' for axis 'language' is not a number"),
        ("language=0.5=1", "scale '0.5=1' for axis 'language' is not a number"),
        ("language=1e999", "scale '1e999' for axis 'language' is not a finite number"),
    ],
)
def test_parse_assignment_errors(text: str, message: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_assignment(text)
    assert str(caught.value) == message


# ---------------------------------------------------------------- quote_argument


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("packs/lang__debias.gguf:0.5", "packs/lang__debias.gguf:0.5"),
        ("-m", "-m"),
        ("a+b,c@d%e=f", "a+b,c@d%e=f"),
        ("", "''"),
        ("my packs/x.gguf", "'my packs/x.gguf'"),
        ("it's", "'it'\\''s'"),
        ("$HOME", "'$HOME'"),
        ("~/x", "'~/x'"),
        ("a*b", "'a*b'"),
        ("caf\u00e9", "'caf\u00e9'"),
        ("line\n", "'line\n'"),
    ],
)
def test_quote_argument(argument: str, expected: str) -> None:
    assert quote_argument(argument) == expected


@pytest.mark.parametrize("argument", ["", "a b", "it's", "'", "''", "\"x\" 'y'", "a\nb", "$(x)"])
def test_quote_argument_round_trips_through_a_shell(argument: str) -> None:
    assert shlex.split(quote_argument(argument)) == [argument]
    assert shell_words("x " + quote_argument(argument)) == ["x", argument]


# ---------------------------------------------------------------- vector_arguments


def test_vector_arguments_current_syntax() -> None:
    selection = [("optimism", -0.35), ("language", 0.5), ("character_focus", 0.0)]
    assert vector_arguments(MANIFEST, selection, vector_dir="packs/smol") == [
        "--control-vector",
        "packs/smol/opt__debias.gguf",
        "--control-vector-scaled",
        "packs/smol/opt__gloomy.gguf:0.35",
        "--control-vector",
        "packs/smol/lang__debias.gguf",
        "--control-vector-scaled",
        "packs/smol/lang__ornate.gguf:0.5",
        "--control-vector",
        "packs/smol/char__debias.gguf",
    ]


def test_vector_arguments_legacy_syntax() -> None:
    selection = [("language", 0.5), ("optimism", -0.35)]
    arguments = vector_arguments(MANIFEST, selection, vector_dir="packs", legacy_syntax=True)
    assert arguments == [
        "--control-vector",
        "packs/lang__debias.gguf",
        "--control-vector-scaled",
        "packs/lang__ornate.gguf",
        "0.5",
        "--control-vector",
        "packs/opt__debias.gguf",
        "--control-vector-scaled",
        "packs/opt__gloomy.gguf",
        "0.35",
    ]


@pytest.mark.parametrize("legacy_syntax", [False, True])
def test_scale_of_exactly_one_uses_plain_control_vector(legacy_syntax: bool) -> None:
    selection = [("language", 1.0), ("optimism", -1.0)]
    arguments = vector_arguments(MANIFEST, selection, vector_dir="", legacy_syntax=legacy_syntax)
    assert arguments == [
        "--control-vector",
        "lang__debias.gguf",
        "--control-vector",
        "lang__ornate.gguf",
        "--control-vector",
        "opt__debias.gguf",
        "--control-vector",
        "opt__gloomy.gguf",
    ]


def test_scale_is_rounded_before_choosing_the_file() -> None:
    # 1.004 rounds to 1 (plain option), -0.004 rounds to 0 (debias only), 2.5 stays scaled
    selection = [("language", 1.004), ("optimism", -0.004), ("character_focus", 2.5)]
    assert vector_arguments(MANIFEST, selection, vector_dir="d/") == [
        "--control-vector",
        "d/lang__debias.gguf",
        "--control-vector",
        "d/lang__ornate.gguf",
        "--control-vector",
        "d/opt__debias.gguf",
        "--control-vector",
        "d/char__debias.gguf",
        "--control-vector-scaled",
        "d/char__character.gguf:2.5",
    ]


@pytest.mark.parametrize(
    ("vector_dir", "expected"),
    [
        ("", "lang__debias.gguf"),
        (".", "./lang__debias.gguf"),
        ("/abs/packs/", "/abs/packs/lang__debias.gguf"),
        ("rel/packs", "rel/packs/lang__debias.gguf"),
    ],
)
def test_vector_dir_joining(vector_dir: str, expected: str) -> None:
    assert vector_arguments(MANIFEST, [("language", 0)], vector_dir=vector_dir) == [
        "--control-vector",
        expected,
    ]


def test_empty_selection_gives_no_arguments() -> None:
    assert vector_arguments(MANIFEST, [], vector_dir="packs") == []


def test_unknown_axis_lists_the_valid_ones() -> None:
    with pytest.raises(CommandError) as caught:
        vector_arguments(MANIFEST, [("language", 0.5), ("foo", 0.2)], vector_dir="packs")
    assert str(caught.value) == (
        "unknown axis 'foo' in --set; the pack has: language, optimism, character_focus"
    )


def test_the_same_axis_twice_is_refused() -> None:
    with pytest.raises(CommandError) as caught:
        vector_arguments(MANIFEST, [("language", 0.5), ("language", -0.2)], vector_dir="p")
    assert str(caught.value) == "axis 'language' is given twice; set each axis once"


@pytest.mark.parametrize("scale", [math.nan, math.inf, -1e22])
def test_non_finite_scale_is_refused(scale: float) -> None:
    with pytest.raises(CommandError) as caught:
        vector_arguments(MANIFEST, [("language", scale)], vector_dir="p")
    assert str(caught.value) == (
        "scale for axis 'language' must be a finite number of magnitude below 1e21"
    )


@pytest.mark.parametrize(
    ("vector_dir", "separator"), [("C:/packs", ":"), ("packs,v2", ","), ("a:b,c", ":")]
)
def test_current_syntax_refuses_separator_characters(vector_dir: str, separator: str) -> None:
    with pytest.raises(CommandError) as caught:
        vector_arguments(MANIFEST, [("language", 0.5)], vector_dir=vector_dir)
    assert str(caught.value) == (
        f"control-vector path '{vector_dir}/lang__debias.gguf' contains '{separator}', which "
        "current llama.cpp reads as a separator; rename the file or directory, or use "
        "--legacy-syntax"
    )


def test_current_syntax_checks_only_the_files_it_uses() -> None:
    manifest = copy.deepcopy(MANIFEST)
    manifest["axes"]["language"]["files"]["negative"] = "model:123b-simple.gguf"
    arguments = vector_arguments(manifest, [("language", 0.5)], vector_dir="p")
    assert arguments[-1] == "p/lang__ornate.gguf:0.5"
    with pytest.raises(CommandError, match="contains ':'"):
        vector_arguments(manifest, [("language", -0.5)], vector_dir="p")


def test_legacy_syntax_accepts_separator_characters() -> None:
    arguments = vector_arguments(
        MANIFEST, [("language", 0.5)], vector_dir="C:/a,b", legacy_syntax=True
    )
    assert arguments == [
        "--control-vector",
        "C:/a,b/lang__debias.gguf",
        "--control-vector-scaled",
        "C:/a,b/lang__ornate.gguf",
        "0.5",
    ]


def test_missing_file_in_manifest_is_named() -> None:
    manifest = copy.deepcopy(MANIFEST)
    del manifest["axes"]["optimism"]["files"]["positive"]
    assert vector_arguments(manifest, [("optimism", -0.5)], vector_dir="")[-1] == (
        "opt__gloomy.gguf:0.5"
    )
    with pytest.raises(CommandError) as caught:
        vector_arguments(manifest, [("optimism", 0.5)], vector_dir="")
    assert str(caught.value) == (
        "pack manifest: axes.optimism.files.positive is missing or not a file name"
    )


# ---------------------------------------------------------------- build_command


def test_build_command_single_line() -> None:
    command = build_command(
        MANIFEST,
        [("language", 0.5), ("optimism", -0.35)],
        model_path="/models/smol.gguf",
        vector_dir="packs/smol",
    )
    assert command == (
        "llama-server -m /models/smol.gguf"
        " --control-vector packs/smol/lang__debias.gguf"
        " --control-vector-scaled packs/smol/lang__ornate.gguf:0.5"
        " --control-vector packs/smol/opt__debias.gguf"
        " --control-vector-scaled packs/smol/opt__gloomy.gguf:0.35"
    )


def test_build_command_legacy_with_layer_range_and_other_target() -> None:
    command = build_command(
        MANIFEST,
        [("optimism", 1), ("language", -0.5)],
        target="llama-cli",
        model_path="m.gguf",
        vector_dir="packs",
        legacy_syntax=True,
        layer_range=(1, 29),
    )
    assert command == (
        "llama-cli -m m.gguf"
        " --control-vector packs/opt__debias.gguf"
        " --control-vector packs/opt__cheerful.gguf"
        " --control-vector packs/lang__debias.gguf"
        " --control-vector-scaled packs/lang__simple.gguf 0.5"
        " --control-vector-layer-range 1 29"
    )


def test_build_command_multiline() -> None:
    command = build_command(
        MANIFEST,
        [("language", 0.5)],
        target="llama-completion",
        model_path="m.gguf",
        vector_dir="packs",
        legacy_syntax=True,
        layer_range=(10, 20),
        multiline=True,
    )
    assert command == (
        "llama-completion \\\n"
        "  -m m.gguf \\\n"
        "  --control-vector packs/lang__debias.gguf \\\n"
        "  --control-vector-scaled packs/lang__ornate.gguf 0.5 \\\n"
        "  --control-vector-layer-range 10 20"
    )


def test_build_command_quotes_paths_with_spaces_and_quotes() -> None:
    command = build_command(
        MANIFEST,
        [("language", -0.35)],
        model_path="/my models/Bob's model.gguf",
        vector_dir="my packs",
    )
    assert command == (
        "llama-server -m '/my models/Bob'\\''s model.gguf'"
        " --control-vector 'my packs/lang__debias.gguf'"
        " --control-vector-scaled 'my packs/lang__simple.gguf:0.35'"
    )
    assert shell_words(command) == [
        "llama-server",
        "-m",
        "/my models/Bob's model.gguf",
        "--control-vector",
        "my packs/lang__debias.gguf",
        "--control-vector-scaled",
        "my packs/lang__simple.gguf:0.35",
    ]


def test_build_command_multiline_parses_like_single_line() -> None:
    arguments: dict[str, Any] = {
        "model_path": "a b.gguf",
        "vector_dir": "it's",
        "layer_range": (2, 5),
    }
    selection = [("language", 0.5), ("optimism", 0)]
    single = build_command(MANIFEST, selection, **arguments)
    multi = build_command(MANIFEST, selection, multiline=True, **arguments)
    assert multi.count("\n") == 5
    assert shell_words(multi) == shell_words(single)
    assert shell_words(single) == [
        "llama-server",
        "-m",
        "a b.gguf",
        "--control-vector",
        "it's/lang__debias.gguf",
        "--control-vector-scaled",
        "it's/lang__ornate.gguf:0.5",
        "--control-vector",
        "it's/opt__debias.gguf",
        "--control-vector-layer-range",
        "2",
        "5",
    ]


def test_build_command_model_path_that_looks_like_an_option_stays_on_its_line() -> None:
    command = build_command(MANIFEST, [], model_path="-odd.gguf", vector_dir="", multiline=True)
    assert command == "llama-server \\\n  -m -odd.gguf"


@pytest.mark.parametrize("layer_range", [(0, 5), (5, 4), (1, 30), (-1, 3)])
def test_layer_range_is_checked_against_n_layer(layer_range: tuple[int, int]) -> None:
    with pytest.raises(CommandError) as caught:
        build_command(MANIFEST, [], model_path="m.gguf", vector_dir="", layer_range=layer_range)
    start, end = layer_range
    assert str(caught.value) == (
        f"layer range {start} {end} is invalid; need 1 <= START <= END <= 29 "
        "(the model has 30 layers and block 0 cannot be steered)"
    )


def test_layer_range_bounds_are_accepted_inclusively() -> None:
    command = build_command(MANIFEST, [], model_path="m", vector_dir="", layer_range=(29, 29))
    assert command == "llama-server -m m --control-vector-layer-range 29 29"


def test_layer_range_needs_n_layer_in_the_manifest() -> None:
    manifest = manifest_with(model={"name": "x"})
    with pytest.raises(CommandError, match="model.n_layer is None"):
        build_command(manifest, [], model_path="m", vector_dir="", layer_range=(1, 2))
    # without a layer range n_layer is not needed
    assert build_command(manifest, [], model_path="m", vector_dir="") == "llama-server -m m"


def test_unknown_target_lists_the_valid_ones() -> None:
    with pytest.raises(CommandError) as caught:
        build_command(MANIFEST, [], target="llama-run", model_path="m", vector_dir="")
    assert str(caught.value) == (
        "unknown target 'llama-run'; choose one of: llama-server, llama-cli, llama-completion"
    )
    assert TARGETS == ("llama-server", "llama-cli", "llama-completion")


def test_empty_model_path_is_refused() -> None:
    with pytest.raises(CommandError, match="^model path is empty$"):
        build_command(MANIFEST, [], model_path="", vector_dir="")


def test_build_command_propagates_the_separator_refusal() -> None:
    with pytest.raises(CommandError, match="--legacy-syntax"):
        build_command(MANIFEST, [("language", 0.5)], model_path="m", vector_dir="a:b")


# ---------------------------------------------------------------- presets


def test_preset_selection_keeps_manifest_order() -> None:
    assert preset_selection(MANIFEST, "vivid") == [("language", 0.5), ("character_focus", 0.4)]


def test_preset_selection_feeds_build_command() -> None:
    command = build_command(
        MANIFEST, preset_selection(MANIFEST, "vivid"), model_path="m", vector_dir="p"
    )
    assert command == (
        "llama-server -m m --control-vector p/lang__debias.gguf"
        " --control-vector-scaled p/lang__ornate.gguf:0.5"
        " --control-vector p/char__debias.gguf"
        " --control-vector-scaled p/char__character.gguf:0.4"
    )


def test_unknown_preset_lists_the_presets() -> None:
    manifest = manifest_with(presets={"vivid": {}, "calm": {"optimism": -0.3}})
    with pytest.raises(CommandError) as caught:
        preset_selection(manifest, "loud")
    assert str(caught.value) == "unknown preset 'loud'; the pack has: vivid, calm"


@pytest.mark.parametrize("presets", [{}, None])
def test_unknown_preset_when_there_are_none(presets: Any) -> None:
    manifest = manifest_with(presets=presets)
    with pytest.raises(CommandError) as caught:
        preset_selection(manifest, "vivid")
    assert str(caught.value) == "unknown preset 'vivid'; the pack has no presets"


def test_preset_with_unknown_axis_is_refused() -> None:
    manifest = manifest_with(presets={"odd": {"language": 0.2, "humour": 0.3}})
    with pytest.raises(CommandError) as caught:
        preset_selection(manifest, "odd")
    assert str(caught.value) == (
        "preset 'odd' names unknown axis 'humour'; the pack has: "
        "language, optimism, character_focus"
    )


@pytest.mark.parametrize("scale", ["0.5", True, None])
def test_preset_with_a_non_number_scale_is_refused(scale: Any) -> None:
    manifest = manifest_with(presets={"odd": {"language": scale}})
    with pytest.raises(
        CommandError, match="^pack manifest: presets.odd.language is .*not a number"
    ):
        preset_selection(manifest, "odd")


# ---------------------------------------------------------------- combination_advice


@pytest.mark.parametrize(
    "selection",
    [
        [],
        [("language", 3.0)],  # a single axis is never advised
        [("language", 0.7), ("optimism", -0.7)],  # sqrt(1/2) = 0.7071 > 0.7
        [("language", 0.71), ("optimism", 0.0)],  # only one active axis
        [("language", 0.71), ("optimism", 0.004)],  # 0.004 rounds to 0: one active axis
        [("language", 0.57), ("optimism", 0.2), ("character_focus", -0.5)],  # sqrt(1/3) = 0.577
        [("language", 0.574), ("optimism", 0.1), ("character_focus", 0.1)],  # rounds to 0.57
        # exactly sqrt(1/4) = 0.5 is still safe (the note needs a strictly larger scale)
        [("language", 0.5), ("optimism", -0.5), ("character_focus", 0.5), ("style", 0.5)],
    ],
)
def test_combination_advice_silent(selection: list[tuple[str, float]]) -> None:
    assert combination_advice(selection) is None


def test_combination_advice_two_axes() -> None:
    assert combination_advice([("language", 0.71), ("optimism", -0.2)]) == (
        "note: 2 axes are combined at up to |scale| 0.71; with 2 axes a safe common |scale| "
        "lies between 0.5 and 0.71 (1/n to sqrt(1/n)); lower them if the text degrades"
    )


def test_combination_advice_uses_the_magnitude_of_negative_scales() -> None:
    advice = combination_advice([("language", 0.1), ("optimism", -0.58), ("character_focus", 0.1)])
    assert advice == (
        "note: 3 axes are combined at up to |scale| 0.58; with 3 axes a safe common |scale| "
        "lies between 0.33 and 0.58 (1/n to sqrt(1/n)); lower them if the text degrades"
    )


# ---------------------------------------------------------------- default_model_path


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("/models/SMOL.GGUF", "/models/SMOL.GGUF"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "MODEL.gguf"),
        ("/models/smol.gguf.part", "MODEL.gguf"),
        ("", "MODEL.gguf"),
        (None, "MODEL.gguf"),
    ],
)
def test_default_model_path(source: Any, expected: str) -> None:
    manifest = manifest_with(model={"name": "x", "source": source, "n_layer": 30})
    assert default_model_path(manifest) == expected


def test_default_model_path_without_model_entry() -> None:
    manifest = copy.deepcopy(MANIFEST)
    del manifest["model"]
    assert default_model_path(manifest) == "MODEL.gguf"
