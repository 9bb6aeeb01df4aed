"""The command-line page without a browser (cvgen.pack.page), and the preset commands.

The page's behaviour in a real browser is tested in test_html_browser.py.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from manifests import hostile_manifest, run, sample_manifest, write_manifest

from cvgen.llamacpp.commands import build_command
from cvgen.pack.errors import PackError
from cvgen.pack.manifest import load_manifest, parse_manifest
from cvgen.pack.names import PAGE_NAME
from cvgen.pack.page import embed_json, page_defaults, render_page, serve_data, write_page


def embedded_data(page: str) -> dict[str, Any]:
    blocks = re.findall(
        r'<script type="application/json" id="cvgen-data">(.*?)</script>', page, re.S
    )
    assert len(blocks) == 1
    return json.loads(blocks[0])


# ---------------------------------------------------------------- embedding


def test_embed_json_cannot_close_the_script_and_reads_back() -> None:
    data = {"a</script><!--b": ["x > y && z", "\u2028\u2029", "日本語"]}
    text = embed_json(data)
    assert not set("<>&\u2028\u2029") & set(text)
    assert "\\u003c/script\\u003e\\u003c!--b" in text and "\\u2028\\u2029" in text
    assert "日本語" in text  # non-ASCII stays as UTF-8
    assert json.loads(text) == data


def test_embed_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        embed_json({"x": float("nan")})


def test_page_is_one_self_contained_file() -> None:
    manifest = sample_manifest()
    page = render_page(
        parse_manifest(manifest, "pack.json"), model_path="m.gguf", vector_dir="/v", pack_label="/p"
    )
    assert not re.search(r"\{\{[A-Z_]+\}\}", page)  # every template marker filled
    # no external resource of any kind
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page
    # exactly two scripts: the JSON data and the builder, which the CSP allows by its hash
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert [attributes for attributes, _ in scripts] == [
        ' type="application/json" id="cvgen-data"',
        "",
    ]
    style = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(style) == 1

    def digest(text: str) -> str:
        return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert csp is not None
    assert csp.group(1).startswith("default-src 'none'; ")
    assert f"script-src '{digest(scripts[1][1])}'" in csp.group(1)
    assert f"style-src '{digest(style[0])}'" in csp.group(1)
    data = embedded_data(page)
    assert data["manifest"] == manifest
    assert data["defaults"] == {"model_path": "m.gguf", "vector_dir": "/v", "pack": "/p"}


def test_hostile_text_reaches_the_page_only_as_escaped_data() -> None:
    manifest = hostile_manifest()
    page = render_page(
        parse_manifest(manifest, "pack.json"), model_path="m.gguf", vector_dir="/v", pack_label="/p"
    )
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<img" not in page and "<!-- comment" not in page and "<b>" not in page
    assert (
        "<title>Modèle «&lt;script&gt;window.__pwned = 1&lt;/script&gt;» &#39;q&#39; &quot;qq&quot;"
        in page
    )
    assert embedded_data(page)["manifest"] == manifest


# ---------------------------------------------------------------- the page cvgen serve answers

SERVE = {"model": "smollm2", "auth": True, "max_tokens": 256}


def _page(serve: Any = None, **keywords: Any) -> str:
    return render_page(
        parse_manifest(sample_manifest(), "pack.json"),
        model_path="m.gguf",
        vector_dir="/v",
        pack_label="/p",
        **({"serve": serve} if serve is not None else keywords),
    )


def _policy(page: str) -> str:
    found = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert found is not None
    return found.group(1)


def test_without_serve_the_page_is_the_static_page_and_connects_nowhere() -> None:
    static = _page()
    assert _page(serve=None) == static == _page(**{"serve": None})
    assert "serve" not in embedded_data(static)
    assert "connect-src" not in static and "fetch(" not in static and "try-run" not in static
    assert _policy(static).startswith("default-src 'none'; ")  # no connection is allowed


def test_with_serve_the_page_embeds_it_and_may_connect_to_its_own_origin() -> None:
    static, served = _page(), _page(serve=SERVE)
    data = embedded_data(served)
    assert data == {**embedded_data(static), "serve": SERVE}
    policy = _policy(served)
    # the same policy (for other hashes) plus connections to the page's own origin
    unhashed = re.sub(r"'sha256-[^']+'", "'HASH'", policy)
    assert unhashed == re.sub(r"'sha256-[^']+'", "'HASH'", _policy(static)) + "; connect-src 'self'"
    assert policy.startswith("default-src 'none'; ")
    # still two scripts, the second (builder + panel) allowed by its hash; no external resource
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", served, re.S)
    assert len(scripts) == 2 and "function TryPanel" in scripts[1][1]
    digest = base64.b64encode(hashlib.sha256(scripts[1][1].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    style = re.findall(r"<style>(.*?)</style>", served, re.S)
    digest = base64.b64encode(hashlib.sha256(style[0].encode()).digest()).decode()
    assert ".try-columns" in style[0] and f"style-src 'sha256-{digest}'" in policy
    assert not re.search(r"\b(src|href)\s*=", served) and "http://" not in served


@pytest.mark.parametrize(
    ("serve", "message"),
    [
        ({"model": "m", "auth": False}, "serve: expected the keys ['auth', 'max_tokens', 'model']"),
        ({**SERVE, "key": "secret"}, "serve: expected the keys"),
        ({**SERVE, "model": ""}, "serve.model: '' is not a non-empty model id"),
        ({**SERVE, "auth": "yes"}, "serve.auth: 'yes' is not true or false"),
        ({**SERVE, "max_tokens": 0}, "serve.max_tokens: 0 is not an integer >= 1"),
        ({**SERVE, "max_tokens": True}, "serve.max_tokens: True is not an integer >= 1"),
    ],
)
def test_serve_data_refuses_what_the_panel_cannot_use(serve: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        serve_data(serve)
    assert str(caught.value).startswith(message)
    with pytest.raises(ValueError):
        _page(serve=serve)


# ---------------------------------------------------------------- refusals


def _broken(path: str, value: Any) -> dict[str, Any]:
    manifest = sample_manifest()
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return manifest


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("model.n_layer", "6", "field 'model.n_layer' is '6', expected an integer >= 2"),
        ("model.n_layer", True, "field 'model.n_layer' is True, expected an integer >= 2"),
        ("axes", {}, "field 'axes' is missing, empty or not an object"),
        (
            "axes.optimism.classes",
            ["gloomy"],
            "field 'axes.optimism.classes' is ['gloomy'], expected two non-empty names",
        ),
        (
            "axes.optimism.files.negative",
            KeyError,
            "field 'axes.optimism.files.negative' is None, expected a file name",
        ),
        (
            "axes.language.safe_scale.positive",
            0,
            "field 'axes.language.safe_scale.positive' is 0, expected a positive number",
        ),
        (
            "axes.language.safe_scale",
            1.5,
            "field 'axes.language.safe_scale' is 1.5, expected an object",
        ),
        (
            "presets.vivid-dialogue",
            {"nope": 1},
            "preset 'vivid-dialogue' names unknown axis 'nope'; the pack has: language, "
            "optimism, dialogue, tense",
        ),
        (
            "presets.vivid-dialogue",
            {"language": "1"},
            "presets.vivid-dialogue.language is 1, not a number",
        ),
        ("llama_cpp.commit", 12, "field 'llama_cpp.commit' is 12, expected a string"),
    ],
)
def test_cvgen_html_refuses_bad_fields_in_one_line_and_writes_nothing(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    pack = write_manifest(tmp_path / "pack", _broken(path, value))
    result = run("html", str(pack))
    assert result.exit_code == 1
    assert result.output == f"Error: {pack / 'pack.json'}: {message}\n"
    assert not (pack / PAGE_NAME).exists()
    assert sorted(p.name for p in pack.iterdir()) == ["pack.json"]


def test_cvgen_html_refuses_a_folder_that_is_not_a_pack(tmp_path: Path) -> None:
    result = run("html", str(tmp_path))
    assert result.exit_code == 1 and "not a cvgen pack (no pack.json)" in result.output


# ---------------------------------------------------------------- cvgen html


def test_cvgen_html_writes_the_page_with_its_defaults(tmp_path: Path) -> None:
    pack = write_manifest(tmp_path / "my pack", sample_manifest())
    result = run("html", str(pack))
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {pack / PAGE_NAME}: 4 axes, 1 preset\n"
    data = embedded_data((pack / PAGE_NAME).read_text(encoding="utf-8"))
    assert data["defaults"] == {
        "model_path": "/models/pico llama.Q4_1.gguf",
        "vector_dir": str(pack.resolve()),
        "pack": str(pack.resolve()),
    }
    result = run("html", str(pack), "--model-path", "/m/x.gguf", "--vector-dir", "vectors")
    assert result.exit_code == 0
    assert page_defaults(pack / PAGE_NAME) == {"model_path": "/m/x.gguf", "vector_dir": "vectors"}
    assert [p.name for p in sorted(pack.iterdir())] == [PAGE_NAME, "pack.json"]


def test_generate_writes_the_page_into_the_pack(pico_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    result = run(
        "generate",
        "--model",
        str(pico_llama),
        "--axis",
        "language",
        "--samples",
        "4",
        "--tau",
        "0",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    page = (out / PAGE_NAME).read_text(encoding="utf-8")
    data = embedded_data(page)
    assert data["manifest"] == load_manifest(out).to_json()
    assert data["defaults"] == {
        "model_path": "MODEL.gguf",
        "vector_dir": str(out),
        "pack": str(out),
    }
    assert "Open `index.html` in a browser" in (out / "README.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------- presets


def test_preset_add_list_remove_and_commands(tmp_path: Path) -> None:
    pack = write_manifest(tmp_path / "pack", sample_manifest())
    for name in sample_manifest()["axes"]["tense"]["files"].values():
        (pack / name).write_bytes(b"")
    assert run("html", str(pack), "--vector-dir", "/srv/vectors").exit_code == 0
    result = run(
        "preset", "add", str(pack), "calm past", "--set", "tense=-1", "--set", "optimism=+.25"
    )
    assert result.exit_code == 0, result.output
    assert result.output == "preset 'calm past': tense=-1 optimism=0.25\n"
    manifest = load_manifest(pack).to_json()
    assert list(manifest["presets"]["calm past"].items()) == [("tense", -1.0), ("optimism", 0.25)]
    # the page was rewritten with the new preset, keeping its vector folder
    page = (pack / PAGE_NAME).read_text(encoding="utf-8")
    assert embedded_data(page)["manifest"]["presets"] == manifest["presets"]
    assert page_defaults(pack / PAGE_NAME)["vector_dir"] == "/srv/vectors"
    # cvgen commands --preset prints the preset, in its order
    for name in ("m-optimism__debias.gguf", "m-optimism__cheerful.gguf", "m-optimism__gloomy.gguf"):
        (pack / name).write_bytes(b"")
    printed = run("commands", str(pack), "--preset", "calm past", "--target", "llama-cli")
    expected = build_command(
        manifest,
        [("tense", -1.0), ("optimism", 0.25)],
        target="llama-cli",
        model_path="/models/pico llama.Q4_1.gguf",
        vector_dir=str(pack),
    )
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == expected + "\n"
    assert printed.stderr.startswith("note: 2 axes are combined at up to |scale| 1;")
    listed = run("preset", "list", str(pack))
    assert (
        listed.output
        == "vivid-dialogue: dialogue=0.4 language=0.5\ncalm past: tense=-1 optimism=0.25\n"
    )
    assert (
        run("preset", "remove", str(pack), "vivid-dialogue").output
        == "removed preset 'vivid-dialogue'\n"
    )
    assert load_manifest(pack).preset_names() == ["calm past"]
    assert list(embedded_data((pack / PAGE_NAME).read_text())["manifest"]["presets"]) == [
        "calm past"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["x", "--set", "nope=1"],
            "unknown axis 'nope' in --set; the pack has: language, optimism, dialogue, tense",
        ),
        (["x", "--set", "tense=abc"], "scale 'abc' for axis 'tense' is not a number"),
        (["x", "--set", "tense=1e999"], "scale '1e999' for axis 'tense' is not a finite number"),
        (["x", "--set", "tense"], "expected AXIS=SCALE, got 'tense' (no '=')"),
        (
            ["x", "--set", "tense=1", "--set", "tense=2"],
            "axis 'tense' is given twice; set each axis once",
        ),
        (
            ["vivid-dialogue", "--set", "tense=1"],
            "preset 'vivid-dialogue' already exists; pass --replace to overwrite it",
        ),
        ([" x", "--set", "tense=1"], "preset name ' x' is invalid"),
        (["", "--set", "tense=1"], "preset name '' is invalid"),
        (["a\tb", "--set", "tense=1"], "is invalid: use 1 to 80 characters"),
    ],
)
def test_preset_add_refuses_bad_input_and_changes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    pack = write_manifest(tmp_path / "pack", sample_manifest())
    before = (pack / "pack.json").read_bytes()
    result = run("preset", "add", str(pack), *args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1
    assert (pack / "pack.json").read_bytes() == before
    assert sorted(p.name for p in pack.iterdir()) == ["pack.json"]


def test_preset_replace_and_remove_unknown(tmp_path: Path) -> None:
    pack = write_manifest(tmp_path / "pack", sample_manifest())
    result = run("preset", "add", str(pack), "vivid-dialogue", "--set", "tense=0.3", "--replace")
    assert result.exit_code == 0
    assert load_manifest(pack).presets == {"vivid-dialogue": {"tense": 0.3}}
    result = run("preset", "remove", str(pack), "nope")
    assert result.output == "Error: unknown preset 'nope'; the pack has: vivid-dialogue\n"


def test_preset_add_keeps_a_page_the_manifest_would_break_unchanged(tmp_path: Path) -> None:
    manifest = sample_manifest()
    pack = write_manifest(tmp_path / "pack", manifest)
    write_page(pack)
    broken = copy.deepcopy(manifest)
    broken["axes"]["language"]["safe_scale"] = {"negative": -1, "positive": 1}
    write_manifest(pack, broken)
    before = {p.name: p.read_bytes() for p in pack.iterdir()}
    result = run("preset", "add", str(pack), "y", "--set", "tense=0.3")
    assert result.exit_code == 1 and "safe_scale.negative' is -1" in result.output
    assert {p.name: p.read_bytes() for p in pack.iterdir()} == before


def test_write_page_refuses_through_pack_error(tmp_path: Path) -> None:
    pack = write_manifest(tmp_path / "pack", _broken("model.n_layer", 1))
    with pytest.raises(PackError, match=r"pack\.json: field 'model\.n_layer' is 1"):
        write_page(pack)
