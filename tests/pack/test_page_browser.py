"""The command-line page in a real headless browser (Debian's chromium, driven by Playwright).

The page's JavaScript must print exactly what cvgen.llamacpp.commands prints: the main test drives the
page's own controls over many seeded random selections and compares the command, the error
and the combination advice with Python's, string for string.

Without chromium or playwright these tests skip, unless CVGEN_REQUIRE_BROWSER=1 (set by
scripts/test.sh, so CI fails instead). Screenshots go to the test's tmp dir, and also to
$CVGEN_ARTIFACTS when it is set.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from manifests import HOSTILE, hostile_manifest, run, sample_manifest, write_manifest

from cvgen.llamacpp.commands import (
    TARGETS,
    CommandError,
    build_command,
    combination_advice,
    format_scale,
    parse_assignment,
    preset_selection,
    quote_argument,
)
from cvgen.pack.names import PAGE_NAME

SELECTIONS = 64
SEED = 20261124
# scale texts: exact ±1 and 0, ties and near-ties of the 2-decimal rounding, every number form
SCALE_TEXTS = [
    "1",
    "-1",
    "0",
    "-0",
    "0.125",
    "-0.125",
    "1.005",
    "0.285",
    "-0.004",
    "0.005",
    "0.995",
    "+0.5",
    ".5",
    "-.35",
    "0.71",
    "0.7",
    "-0.707",
    "1e-1",
    "2.5E0",
    "1.",
    "-1.00",
    "0.999",
    "12",
]
BAD_SCALE_TEXTS = ["abc", "1e999", " 1", "0x10", "", "1e21", "-2e21"]
MODEL_PATHS = ["/models/pico llama.Q4_1.gguf", "m.gguf", '/models/it\'s "here".gguf']
VECTOR_DIRS = ["", ".", "/srv/my packs/", "/srv/packs", "rel dir", "ü/ß", "/srv/a:b", "/srv/a,b"]


class Tab:
    """One page in a fresh browser context that records console errors and every request."""

    def __init__(self, browser: Any, page_file: Path, *, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.set_default_timeout(5000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.url = page_file.resolve().as_uri()
        self.page.goto(self.url)

    def text(self, selector: str) -> str:
        return str(self.page.text_content(selector))

    def shown(self, selector: str) -> str | None:
        """The element's text, or None when it is hidden."""
        if self.page.is_hidden(selector):
            return None
        return self.text(selector)

    def close(self) -> None:
        """Close, after checking that nothing failed and nothing was fetched."""
        assert self.errors == []
        assert set(self.requests) == {self.url}
        self.context.close()


def make_pack(folder: Path, manifest: dict[str, Any], *extra: str) -> Path:
    write_manifest(folder, manifest)
    for axis in manifest["axes"].values():
        for name in axis["files"].values():
            (folder / name).write_bytes(b"")
    result = run("html", str(folder), *extra)
    assert result.exit_code == 0, result.output
    return folder / PAGE_NAME


def save_screenshot(tab: Tab, path: Path) -> Path:
    tab.page.screenshot(path=str(path), full_page=True)
    artifacts = os.environ.get("CVGEN_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path


# ---------------------------------------------------------------- the equality test


class Expected:
    """Python's view of one selection: the command or the error, and the advice."""

    def __init__(
        self, manifest: dict[str, Any], axes: list[tuple[str, str]], options: dict[str, Any]
    ) -> None:
        self.command: str | None = None
        self.error: str | None = None
        self.advice: str | None = None
        try:
            selection = [parse_assignment(f"{axis}={text}") for axis, text in axes]
        except CommandError as exc:
            self.error = str(exc)
            return
        try:  # the page shows no note for scales it cannot even format
            self.advice = combination_advice(selection)
        except CommandError:
            self.advice = None
        try:
            self.command = build_command(manifest, selection, **options)
        except CommandError as exc:
            self.error = str(exc)


def _change_options(
    tab: Tab, rng: random.Random, n_layer: int, options: dict[str, Any]
) -> dict[str, Any]:
    """Change each option through its control with probability 0.4; return all options."""
    page = tab.page
    options = dict(options)
    if rng.random() < 0.4:
        options["target"] = rng.choice(TARGETS)
        page.select_option("#target", options["target"])
    if rng.random() < 0.4:
        options["legacy_syntax"] = rng.random() < 0.5
        page.check("#syntax-legacy" if options["legacy_syntax"] else "#syntax-current")
    if rng.random() < 0.4:
        options["multiline"] = not options["multiline"]
        page.set_checked("#multiline", options["multiline"])
    if rng.random() < 0.4:
        options["model_path"] = rng.choice(MODEL_PATHS) if rng.random() < 0.95 else ""
        page.fill("#model-path", options["model_path"])
    if rng.random() < 0.4:
        options["vector_dir"] = rng.choice(
            VECTOR_DIRS[:6] if rng.random() < 0.85 else VECTOR_DIRS[6:]
        )
        page.fill("#vector-dir", options["vector_dir"])
    if rng.random() < 0.4:
        if rng.random() < 0.5:
            start = rng.randint(1, n_layer - 1)
            end = rng.randint(start, n_layer - 1) if rng.random() < 0.9 else rng.randint(0, start)
            page.check("#layer-range-on")
            page.fill("#layer-start", str(start))
            page.fill("#layer-end", str(end))
            options["layer_range"] = (start, end)
        else:
            page.uncheck("#layer-range-on")
            options["layer_range"] = None
    return options


def _slider_by_keyboard(tab: Tab, index: int, rng: random.Random) -> str:
    """Move axis `index`'s slider with the keyboard; return the scale field's new text."""
    slider = f"#axis-{index}-slider"
    tab.page.focus(slider)
    key = rng.choice(["Home", "End", "ArrowRight", "ArrowLeft", "PageUp"])
    for _ in range(rng.randint(1, 4) if key.startswith("Arrow") else 1):
        tab.page.keyboard.press(key)
    text = tab.page.input_value(f"#axis-{index}-scale")
    assert text == tab.page.input_value(slider)
    return text


def _check_cli_equivalent(tab: Tab, command: str) -> None:
    """The `cvgen commands ...` line the page shows prints the page's command."""
    words = shlex.split(tab.text("#cli-equivalent"))
    assert words[:2] == ["cvgen", "commands"]
    printed = run(*words[1:])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == command + "\n"


def test_page_commands_equal_python_over_random_selections(browser: Any, tmp_path: Path) -> None:
    manifest = sample_manifest()
    tab = Tab(browser, make_pack(tmp_path / "pack", manifest))
    names = list(manifest["axes"])
    rng = random.Random(SEED)
    order = names[:]
    options: dict[str, Any] = {  # the page's defaults
        "target": "llama-server",
        "legacy_syntax": False,
        "multiline": False,
        "model_path": manifest["model"]["source"],
        "vector_dir": str((tmp_path / "pack").resolve()),
        "layer_range": None,
    }
    compared = 0
    seen = {
        "command": 0,
        "error": 0,
        "advice": 0,
        "preset": 0,
        "slider": 0,
        "multiline": 0,
        "layers": 0,
        "cli": 0,
    }
    for _ in range(SELECTIONS):
        if rng.random() < 0.15:
            preset = rng.choice(list(manifest["presets"]))
            tab.page.select_option("#preset", preset)
            chosen = preset_selection(manifest, preset)
            order = [axis for axis, _ in chosen] + [a for a in names if a not in dict(chosen)]
            texts = {
                axis: tab.page.input_value(f"#axis-{names.index(axis)}-scale") for axis in names
            }
            assert all(float(texts[axis]) == scale for axis, scale in chosen)
            enabled = {axis for axis, _ in chosen}
            seen["preset"] += 1
        else:
            texts, enabled = {}, set()
            for index, axis in enumerate(names):
                roll = rng.random()
                if roll < 0.2:
                    texts[axis] = _slider_by_keyboard(tab, index, rng)
                    seen["slider"] += 1
                else:
                    pool = BAD_SCALE_TEXTS if roll > 0.96 else SCALE_TEXTS
                    texts[axis] = rng.choice(pool + [repr(round(rng.uniform(-1.6, 1.6), 3))])
                    tab.page.fill(f"#axis-{index}-scale", texts[axis])
                on = rng.random() < 0.6
                tab.page.set_checked(f"#axis-{index}-enable", on)
                if on:
                    enabled.add(axis)
        options = _change_options(tab, rng, manifest["model"]["n_layer"], options)
        expected = Expected(manifest, [(a, texts[a]) for a in order if a in enabled], options)
        got_command = tab.shown("#command") or None
        got_error = tab.shown("#command-error")
        assert (got_command, got_error) == (expected.command, expected.error), options
        assert tab.shown("#advice") == expected.advice
        assert tab.page.is_disabled("#copy") == (expected.command is None)
        if expected.command is not None and enabled:
            _check_cli_equivalent(tab, expected.command)
            seen["cli"] += 1
        compared += 1
        seen["command"] += expected.command is not None
        seen["error"] += expected.error is not None
        seen["advice"] += expected.advice is not None
        seen["multiline"] += options["multiline"] and expected.command is not None
        seen["layers"] += options["layer_range"] is not None
    tab.close()
    print(f"page == cvgen.llamacpp.commands for {compared} selections compared; {seen}")
    assert compared == SELECTIONS >= 50
    # the random walk reached every kind of case
    assert all(count >= 3 for count in seen.values()) and seen["command"] >= 32, seen


def test_slider_ends_are_the_calibrated_maximum_else_1_5(browser: Any, tmp_path: Path) -> None:
    manifest = sample_manifest()
    tab = Tab(browser, make_pack(tmp_path / "pack", manifest))
    ends = {}
    for index in (0, 1):
        tab.page.focus(f"#axis-{index}-slider")
        ends[index] = []
        for key in ("End", "Home"):
            tab.page.keyboard.press(key)
            ends[index].append(tab.page.input_value(f"#axis-{index}-scale"))
    assert ends == {0: ["1.25", "-0.8"], 1: ["1.5", "-1.5"]}
    # past the calibrated maximum, the axis says so
    tab.page.fill("#axis-0-scale", "1.3")
    assert tab.shown("#axis-0-warning") == "above the calibrated safe maximum 1.25 for ornate"
    tab.page.fill("#axis-0-scale", "-0.8")
    assert tab.shown("#axis-0-warning") is None
    tab.close()


def test_js_number_and_quoting_rules_match_python(browser: Any, tmp_path: Path) -> None:
    tab = Tab(browser, make_pack(tmp_path / "pack", sample_manifest()))
    rng = random.Random(SEED)
    values = [0.125, 1.005, 0.285, -0.004, 0.005, -0.0, 2.5, 1e20, 123.455, 0.0049999999]
    values += [rng.uniform(-3, 3) for _ in range(300)]
    values += [round(rng.uniform(-3, 3), 3) for _ in range(300)]
    values += [math.ldexp(rng.random(), rng.randint(-20, 60)) for _ in range(100)]
    got = tab.page.evaluate("vs => vs.map(v => window.cvgenBuilder.formatScale(v))", values)
    assert got == [format_scale(v) for v in values]
    arguments = ["", "a b", "it's", "x'y'z", "plain/path.gguf", "a:b,c", "ü", "$HOME", "a\nb", "*"]
    got = tab.page.evaluate("xs => xs.map(x => window.cvgenBuilder.quoteArgument(x))", arguments)
    assert got == [quote_argument(a) for a in arguments]
    tab.close()


# ---------------------------------------------------------------- presets, keyboard, copy


def test_preset_on_the_page_prints_what_cvgen_commands_prints(browser: Any, tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    tab = Tab(browser, make_pack(pack, sample_manifest()))
    result = run("preset", "add", str(pack), "calm", "--set", "tense=-1", "--set", "optimism=0.3")
    assert result.exit_code == 0
    tab.page.reload()
    options = tab.page.eval_on_selector_all("#preset option", "os => os.map(o => o.textContent)")
    assert options == ["(custom selection)", "vivid-dialogue", "calm"]
    for preset in ("vivid-dialogue", "calm"):
        tab.page.select_option("#preset", preset)
        for target in TARGETS:
            tab.page.select_option("#target", target)
            printed = run("commands", str(pack.resolve()), "--preset", preset, "--target", target)
            assert printed.exit_code == 0, printed.output
            assert tab.text("#command") + "\n" == printed.stdout
        assert (
            tab.text("#preset-summary")
            == {
                "vivid-dialogue": "vivid-dialogue: dialogue 0.4, language 0.5",
                "calm": "calm: tense -1, optimism 0.3",
            }[preset]
        )
    # editing an axis by hand leaves the preset
    tab.page.fill("#axis-3-scale", "-0.9")
    assert tab.page.input_value("#preset") == ""
    tab.close()


def test_keyboard_only_use_and_copy(browser: Any, tmp_path: Path) -> None:
    manifest = sample_manifest()
    tab = Tab(browser, make_pack(tmp_path / "pack", manifest))
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = tab.page
    # every control has a label
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !(e.tagName === 'BUTTON' && e.textContent.trim()))
        .map(e => e.id)"""
    )
    assert unlabelled == []
    # Tab from the preset menu reaches the first axis's checkbox, slider and scale field
    page.focus("#preset")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "axis-0-enable"
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "axis-0-slider"
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "axis-0-scale"
    page.keyboard.press("ArrowUp")
    page.keyboard.press("Shift+ArrowUp")
    assert page.input_value("#axis-0-scale") == "0.14"
    expected = build_command(
        manifest,
        [("language", 0.14)],
        target="llama-server",
        model_path="/models/pico llama.Q4_1.gguf",
        vector_dir=str((tmp_path / "pack").resolve()),
    )
    assert tab.text("#command") == expected
    page.focus("#copy")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('copy-status').textContent !== ''")
    assert tab.text("#copy-status") == "Copied."
    assert page.evaluate("navigator.clipboard.readText()") == expected
    tab.close()


def test_combination_guidance_highlights_axes_over_sqrt_1_over_n(
    browser: Any, tmp_path: Path
) -> None:
    tab = Tab(browser, make_pack(tmp_path / "pack", sample_manifest()))
    page = tab.page
    page.fill("#axis-0-scale", "0.7")
    page.fill("#axis-1-scale", "-0.5")
    assert tab.shown("#guidance") == (
        "2 axes active: a safe common |scale| lies between 1/n = 0.5 and sqrt(1/n) = 0.71."
    )
    assert tab.shown("#advice") is None
    page.fill("#axis-0-scale", "0.71")  # rounds to 0.71 > sqrt(1/2) = 0.7071...
    assert tab.shown("#advice") == combination_advice([("language", 0.71), ("optimism", -0.5)])
    over = page.eval_on_selector_all(".axis.over", "rows => rows.map(r => r.id)")
    assert over == ["axis-0"]
    page.uncheck("#axis-1-enable")
    assert tab.shown("#guidance") is None and tab.shown("#advice") is None
    tab.close()


# ---------------------------------------------------------------- hostile text, layout


def shell_words(command: str) -> list[str]:
    """The argv that a real POSIX shell builds from `command`."""
    script = "printf '%s\\0' " + command.replace("\\\n", "")
    output = subprocess.run(["sh", "-c", script], capture_output=True, check=True, text=True)
    return output.stdout.split("\0")[:-1]


def test_hostile_names_are_shown_inertly_and_paths_quoted(browser: Any, tmp_path: Path) -> None:
    manifest = hostile_manifest()
    vector_dir = '/srv/my packs/it\'s "here" ü'
    page_file = make_pack(tmp_path / "pack", manifest, "--vector-dir", vector_dir)
    tab = Tab(browser, page_file)
    page = tab.page
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('script').length") == 2
    assert page.evaluate("document.querySelectorAll('img, i, b').length") == 0
    axis = next(iter(name for name in manifest["axes"] if HOSTILE in name))
    index = list(manifest["axes"]).index(axis)
    assert tab.text(f"#axis-{index} .axis-name") == axis
    assert tab.text(f"#axis-{index}-negative") == manifest["axes"][axis]["classes"][0]
    assert tab.text(f"#axis-{index}-positive") == "orné 'fleuri' 日本語"
    assert tab.text("#model-title") == manifest["model"]["name"]
    assert tab.text("[data-fact='architecture']") == manifest["model"]["hint"]
    assert tab.text("[data-fact='llama.cpp commit']") == "<b>abc</b>"
    assert page.title() == f"{manifest['model']['name']}: llama.cpp command builder (cvgen)"
    preset = next(iter(manifest["presets"]))
    page.select_option("#preset", preset)
    command = tab.text("#command")
    expected = build_command(
        manifest,
        preset_selection(manifest, preset),
        target="llama-server",
        model_path=manifest["model"]["source"],
        vector_dir=vector_dir,
    )
    assert command == expected
    words = shell_words(command)
    assert words[:3] == ["llama-server", "-m", "/models/pico llama.Q4_1.gguf"]
    assert words[3:5] == ["--control-vector", f"{vector_dir}/m-language__debias.gguf"]
    assert words[6] == f"{vector_dir}/m-language__simple.gguf:0.5"
    assert page.evaluate("window.__pwned") is None
    save_screenshot(tab, tmp_path / "hostile-desktop.png")
    tab.close()


@pytest.mark.parametrize(("width", "name"), [(1280, "desktop"), (320, "narrow")])
def test_screenshots_and_no_sideways_scroll(
    browser: Any, tmp_path: Path, width: int, name: str
) -> None:
    tab = Tab(browser, make_pack(tmp_path / "pack", sample_manifest()), width=width)
    tab.page.select_option("#preset", "vivid-dialogue")
    tab.page.fill("#axis-1-scale", "-0.6")
    tab.page.check("#layer-range-on")
    tab.page.check("#multiline")
    assert tab.shown("#advice") is not None
    overflow = tab.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow == 0
    shot = save_screenshot(tab, tmp_path / f"page-{name}-{width}.png")
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    tab.close()


def test_page_data_round_trips_through_the_browser(browser: Any, tmp_path: Path) -> None:
    manifest = hostile_manifest()
    tab = Tab(browser, make_pack(tmp_path / "pack", manifest))
    embedded = tab.page.evaluate("document.getElementById('cvgen-data').textContent")
    assert json.loads(embedded)["manifest"] == manifest
    assert tab.page.evaluate("JSON.parse(document.getElementById('cvgen-data').textContent)")[
        "manifest"
    ] == json.loads(json.dumps(manifest))
    tab.close()


def test_page_works_from_a_static_http_host(browser: Any, tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    manifest = sample_manifest()
    page_file = make_pack(tmp_path / "pack", manifest)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(page_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = browser.new_context()
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        url = f"http://127.0.0.1:{server.server_port}/{PAGE_NAME}"
        page.goto(url)
        page.fill("#axis-2-scale", "-0.3")
        expected = build_command(
            manifest,
            [("dialogue", -0.3)],
            model_path=manifest["model"]["source"],
            vector_dir=str(page_file.parent.resolve()),
        )
        assert page.text_content("#command") == expected
        assert requests == [url]
        context.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1e21", "scale for axis 'optimism' must be a finite number of magnitude below 1e21"),
        ("1e999", "scale '1e999' for axis 'optimism' is not a finite number"),
        ("0,5", "scale '0,5' for axis 'optimism' is not a number"),
    ],
)
def test_unusable_scales_show_python_s_error(
    browser: Any, tmp_path: Path, text: str, message: str
) -> None:
    tab = Tab(browser, make_pack(tmp_path / "pack", sample_manifest()))
    tab.page.fill("#axis-0-scale", "0.9")
    tab.page.fill("#axis-1-scale", text)
    with pytest.raises(CommandError) as caught:
        selection = [("language", 0.9), parse_assignment(f"optimism={text}")]
        build_command(sample_manifest(), selection, model_path="m", vector_dir="")
    assert str(caught.value) == message
    assert tab.shown("#command-error") == message and tab.shown("#command") is None
    assert tab.shown("#advice") is None and tab.page.is_disabled("#copy")
    tab.close()  # no uncaught script error


def test_the_address_keeps_the_selection_for_a_reload_or_a_link(
    browser: Any, tmp_path: Path
) -> None:
    manifest = sample_manifest()
    page_file = make_pack(tmp_path / "pack", manifest)
    tab = Tab(browser, page_file)
    tab.page.fill("#axis-3-scale", "-0.45")
    tab.page.fill("#axis-0-scale", "1")
    tab.page.select_option("#target", "llama-cli")
    tab.page.check("#syntax-legacy")
    tab.page.fill("#vector-dir", "/srv/my packs")
    tab.page.check("#layer-range-on")
    tab.page.fill("#layer-start", "2")
    tab.page.check("#multiline")
    command = tab.text("#command")
    assert command == build_command(
        manifest,
        [("language", 1.0), ("tense", -0.45)],
        target="llama-cli",
        model_path=manifest["model"]["source"],
        vector_dir="/srv/my packs",
        legacy_syntax=True,
        layer_range=(2, 4),
        multiline=True,
    )
    link = tab.page.url
    assert link.startswith(tab.url + "#a=language&s=1&a=tense&s=-0.45&target=llama-cli")
    tab.close()
    again = Tab(browser, page_file)
    again.page.goto(link)
    assert again.text("#command") == command
    # a link naming unknown axes or targets is ignored, not an error
    again.page.goto(tab.url + "#a=%3Cscript%3E&s=1&a=optimism&s=0.2&target=rm")
    again.page.reload()
    assert again.text("#command") == build_command(
        manifest,
        [("optimism", 0.2)],
        model_path=manifest["model"]["source"],
        vector_dir=str(page_file.parent.resolve()),
    )
    assert again.page.evaluate("window.__pwned") is None
    again.close()


def test_the_suggested_scale_buttons_print_what_cvgen_commands_prints(
    browser: Any, tmp_path: Path
) -> None:
    pack = tmp_path / "pack"
    manifest = sample_manifest()
    manifest["axes"]["language"]["suggested_scale"] = {
        "negative": 0.75,
        "positive": 1.125,
        "calibrated": True,
    }
    tab = Tab(browser, make_pack(pack, manifest))
    labels = tab.page.eval_on_selector_all(
        "#axis-0 button.suggested", "bs => bs.map(b => b.textContent)"
    )
    assert labels == ["suggested -0.75", "suggested 1.13"]
    # an axis that was never calibrated has no buttons
    assert tab.page.eval_on_selector_all("#axis-1 button.suggested", "bs => bs.length") == 0
    for role, sign in (("positive", "+"), ("negative", "-")):
        tab.page.click(f"#axis-0 button.suggested.{role}")
        printed = run(
            "commands", str(pack.resolve()), "--set", f"language={sign}", "--target", TARGETS[0]
        )
        assert printed.exit_code == 0, printed.output
        assert tab.text("#command") + "\n" == printed.stdout
    assert tab.page.input_value("#axis-0-scale") == "-0.75"
    tab.close()


def test_the_method_fact_names_each_axiss_own_method_under_auto(
    browser: Any, tmp_path: Path
) -> None:
    manifest = sample_manifest()
    assert manifest["settings"]["method"] == "cross_covariance"
    tab = Tab(browser, make_pack(tmp_path / "named", manifest))
    assert tab.text("[data-fact='method']") == "cross_covariance"
    tab.close()
    manifest["settings"]["method"] = "auto"
    names = list(manifest["axes"])
    for name in names:
        manifest["axes"][name]["method"] = "cross-covariance"
    manifest["axes"][names[1]]["method"] = "mean-diff"
    tab = Tab(browser, make_pack(tmp_path / "auto", manifest))
    parts = [f"{name}: {manifest['axes'][name]['method']}" for name in names]
    assert tab.text("[data-fact='method']") == f"auto ({', '.join(parts)})"
    tab.close()
