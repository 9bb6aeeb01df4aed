"""The pack's command-line builder: one self-contained static page, `PACK/index.html`.

The page is built from three package files under `cvgen/pack/static/` (the HTML template, the CSS and
the JavaScript), inlined into one file with the pack's manifest embedded as JSON. It needs no
network (a Content-Security-Policy with the hashes of its own style and script forbids every
other source) and works from `file://` or any static host. Its JavaScript mirrors
`cvgen.llamacpp.commands` rule for rule, so the page prints exactly what `cvgen commands` prints for the
same selection; `tests/test_html_browser.py` checks that in a real browser.

Display text taken from the manifest (names, classes, descriptions, the model hint) may hold
anything: the page sets it with `textContent` only. Fields the command logic relies on (axis
classes and files, `model.n_layer`, `safe_scale`, presets) were checked when the manifest was
read (`cvgen.pack.manifest.parse_manifest`, the one validation every command shares), and a bad
one was refused with a one-line `PackError` naming the file, field and value.

`cvgen serve` answers `GET /` with the same page plus a "try it" panel (`render_page(...,
serve={...})`): the panel's script and style (`try.js`, `try.css`) are appended to the builder's,
the embedded data gains a `serve` key, and the policy allows `connect-src 'self'`, so the
panel can post the builder's selection to the server's `/v1/chat/completions`. Without
`serve` none of that is in the page: it holds no code that connects anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from cvgen import __version__
from cvgen.llamacpp.commands import default_model_path
from cvgen.pack.manifest import load_manifest, save_manifest, write_text_atomically
from cvgen.pack.names import PAGE_NAME
from cvgen.pack.records import PackManifest

__all__ = [
    "PAGE_NAME",
    "embed_json",
    "page_defaults",
    "render_page",
    "save_manifest_and_page",
    "serve_data",
    "write_page",
]

_MARKER = re.compile(r"\{\{([A-Z_]+)\}\}")
_DATA_BLOCK = re.compile(
    r'<script type="application/json" id="cvgen-data">(.*?)</script>', re.DOTALL
)
_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _page_file(name: str) -> str:
    return (resources.files("cvgen.pack") / "static" / name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """`data` as JSON that is safe inside `<script type="application/json">`: `<`, `>`, `&`,
    U+2028 and U+2029 are written as `\\uXXXX` escapes (JSON.parse reads them back), so no
    value can close the script element or open a comment. NaN and infinities are refused."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda match: _JSON_ESCAPES[match.group(0)], text)


def _escape_text(text: str) -> str:
    """HTML-escape text for element content and attribute values."""
    for raw, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.replace(raw, escaped)
    return text.replace("'", "&#39;")


def _csp_hash(content: str) -> str:
    digest = hashlib.sha256(content.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def serve_data(serve: Mapping[str, Any]) -> dict[str, Any]:
    """The `serve` entry of a served page's data, checked: `{"model": model id (non-empty
    text), "auth": whether the server asks for a key (bool), "max_tokens": the largest
    completion a request may ask (int >= 1)}`. Any other key, or a value of the wrong type, is
    a `ValueError` naming the field."""
    expected = {"model", "auth", "max_tokens"}
    if set(serve) != expected:
        raise ValueError(
            f"serve: expected the keys {sorted(expected)}, got {sorted(map(str, serve))}"
        )
    model, auth, max_tokens = serve["model"], serve["auth"], serve["max_tokens"]
    if not isinstance(model, str) or model == "":
        raise ValueError(f"serve.model: {model!r} is not a non-empty model id")
    if not isinstance(auth, bool):
        raise ValueError(f"serve.auth: {auth!r} is not true or false")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"serve.max_tokens: {max_tokens!r} is not an integer >= 1")
    return {"model": model, "auth": auth, "max_tokens": max_tokens}


def render_page(
    manifest: PackManifest,
    *,
    model_path: str,
    vector_dir: str,
    pack_label: str,
    serve: Mapping[str, Any] | None = None,
) -> str:
    """The whole page for `manifest`, as one HTML string.

    `model_path` and `vector_dir` fill the page's fields at first; `pack_label` is the pack
    path the page shows in its `cvgen commands PACK ...` equivalent. `serve` (see
    `serve_data`) makes the page `cvgen serve` answers: with the "try it" panel, which may
    connect to the page's own origin. Without it the page connects nowhere.
    """
    style = _page_file("style.css")
    script = _page_file("builder.js")
    data: dict[str, Any] = {
        "manifest": manifest.to_json(),
        "defaults": {"model_path": model_path, "vector_dir": vector_dir, "pack": pack_label},
        "generator": f"cvgen {__version__}",
    }
    connect = ""
    if serve is not None:
        data["serve"] = serve_data(serve)
        style += _page_file("try.css")
        script += _page_file("try.js")
        connect = "; connect-src 'self'"
    model_name = manifest.model.name or "a model"
    values = {
        "STYLE": style,
        "SCRIPT": script,
        "STYLE_HASH": _csp_hash(style),
        "SCRIPT_HASH": _csp_hash(script),
        "CONNECT": connect,
        "DATA": embed_json(data),
        "TITLE": _escape_text(f"{model_name}: llama.cpp command builder (cvgen)"),
        "MODEL_NAME": _escape_text(model_name),
        "GENERATOR": _escape_text(f"cvgen {__version__}"),
    }
    return _MARKER.sub(lambda match: values[match.group(1)], _page_file("index.html.template"))


def page_defaults(page: Path) -> dict[str, str]:
    """The `model_path` and `vector_dir` that an existing page opens with, read from its
    embedded data, so that rewriting it (after a preset change) keeps them; `{}` when the
    page is missing or unreadable."""
    try:
        found = _DATA_BLOCK.search(Path(page).read_text(encoding="utf-8"))
        defaults = json.loads(found.group(1))["defaults"] if found else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(defaults, dict):
        return {}
    return {
        key: defaults[key]
        for key in ("model_path", "vector_dir")
        if isinstance(defaults.get(key), str)
    }


def write_page(
    pack: Path,
    manifest: PackManifest | None = None,
    *,
    model_path: str | None = None,
    vector_dir: str | None = None,
) -> Path:
    """Write `PACK/index.html` atomically and return its path.

    `manifest` defaults to the pack's `pack.json`; `model_path` to the pack's `.gguf` source
    (else `MODEL.gguf`); `vector_dir` to the pack's absolute path.
    """
    pack = Path(pack)
    if manifest is None:
        manifest = load_manifest(pack)
    data = manifest.to_json()
    absolute = str(pack.expanduser().resolve())
    text = render_page(
        manifest,
        model_path=model_path if model_path is not None else default_model_path(data),
        vector_dir=vector_dir if vector_dir is not None else absolute,
        pack_label=absolute,
    )
    path = pack / PAGE_NAME
    write_text_atomically(path, text)
    return path


def save_manifest_and_page(pack: Path, manifest: PackManifest) -> None:
    """Rewrite `PACK/pack.json` and the page (keeping the page's model path and vector
    folder); the page is rendered first, so a failure there changes nothing."""
    absolute = str(Path(pack).expanduser().resolve())
    defaults = page_defaults(Path(pack) / PAGE_NAME)
    page = render_page(
        manifest,
        model_path=defaults.get("model_path", default_model_path(manifest.to_json())),
        vector_dir=defaults.get("vector_dir", absolute),
        pack_label=absolute,
    )
    save_manifest(pack, manifest)
    write_text_atomically(Path(pack) / PAGE_NAME, page)
