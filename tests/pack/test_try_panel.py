"""The page's "try it" panel in a real headless browser (Debian's chromium, driven by Playwright).

The panel exists only in the page `cvgen serve` answers (`render_page(..., serve={...})`). Here a
tiny fake server on 127.0.0.1 plays `cvgen serve`: it answers `/` with that page and streams
`/v1/chat/completions` as Server-Sent Events whose text echoes the `control_vectors` it received,
so the tests can see what the page sent. It skips like test_page_browser.py without a browser.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from manifests import sample_manifest
from test_page_browser import Tab, make_pack

from cvgen.pack.manifest import parse_manifest
from cvgen.pack.page import render_page

SERVE = {"model": "pico-llama", "auth": False, "max_tokens": 200}
PIECE = 9  # characters per streamed piece
TIMEOUT = 5.0


def echo_text(body: dict[str, Any]) -> str:
    """What the fake server streams back for a request `body`."""
    vectors = json.dumps(body["control_vectors"], separators=(",", ":"))
    prompt = body["messages"][0]["content"]
    return f"vectors {vectors}; {body['max_tokens']} tokens; prompt: {prompt}"


def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    data = {"object": "chat.completion.chunk", "model": SERVE["model"], "choices": [choice]}
    return f"data: {json.dumps(data)}\n\n".encode()


class QuietServer(http.server.ThreadingHTTPServer):
    """Says nothing when a client goes away mid-stream (an aborted run)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class FakeServer:
    """`cvgen serve`'s page and its streaming endpoint, on a free port, in one thread.

    A steered request with a |scale| above 1 is refused with a 400, as the real server refuses
    a scale beyond an axis's safe scale. While `gate` is clear, every stream stops after its
    first pieces and waits (at most TIMEOUT seconds) for it."""

    def __init__(self, page: str) -> None:
        self.page = page.encode()
        self.bodies: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.http = QuietServer(("127.0.0.1", 0), self.handler())
        self.url = f"http://127.0.0.1:{self.http.server_port}/"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(server.page)))
                self.end_headers()
                self.wfile.write(server.page)

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                server.bodies.append(body)
                server.answer(self, body)

        return Handler

    def answer(self, handler: http.server.BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        too_far = [axis for axis, scale in body["control_vectors"].items() if abs(scale) > 1]
        if too_far:
            axis = too_far[0]
            scale = body["control_vectors"][axis]
            message = f"control_vectors.{axis}: scale {scale} is beyond its safe scale 1"
            error = json.dumps({"error": {"message": message, "param": f"control_vectors.{axis}"}})
            handler.send_response(400)
            handler.send_header("Content-Type", "application/json")
            handler.end_headers()
            handler.wfile.write(error.encode())
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        text = echo_text(body)
        pieces = [text[start : start + PIECE] for start in range(0, len(text), PIECE)]
        handler.wfile.write(chunk({"role": "assistant"}))
        for number, piece in enumerate(pieces):
            if number == 2:
                self.gate.wait(TIMEOUT)
            handler.wfile.write(chunk({"content": piece}))
            handler.wfile.flush()
        finish = "length" if body["max_tokens"] < 50 else "stop"
        handler.wfile.write(chunk({}, finish) + b"data: [DONE]\n\n")
        handler.wfile.flush()

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(TIMEOUT)


def served_page(**serve: Any) -> str:
    return render_page(
        parse_manifest(sample_manifest(), "pack.json"),
        model_path="/models/pico llama.Q4_1.gguf",
        vector_dir="/srv/pack",
        pack_label="/srv/pack",
        serve={**SERVE, **serve},
    )


@pytest.fixture()
def served(browser: Any) -> Iterator[tuple[FakeServer, Any, list[str]]]:
    """The fake server, and a tab on its page that records every request and script error."""
    with FakeServer(served_page()) as server:
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        context.set_default_timeout(TIMEOUT * 1000)
        page = context.new_page()
        errors: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
        page.goto(server.url)
        yield server, page, requests
        context.close()
        assert errors == []


def wait_until(page: Any, expression: str) -> None:
    """Poll `expression` from here until it is true (at most TIMEOUT seconds). Playwright's own
    wait_for_function polls with eval() inside the page, which the page's policy forbids."""
    deadline = time.monotonic() + TIMEOUT
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {TIMEOUT} s: {expression}"
        time.sleep(0.02)


def wait_finished(page: Any, column: str) -> None:
    status = f"document.getElementById('try-{column}-status').textContent.startsWith('finished')"
    wait_until(page, f"{status} || !document.getElementById('try-{column}-error').hidden")


# ---------------------------------------------------------------- tests


def test_from_a_file_there_is_no_panel_and_no_request(browser: Any, tmp_path: Path) -> None:
    tab = Tab(browser, make_pack(tmp_path / "pack", sample_manifest()))
    tab.page.fill("#axis-0-scale", "0.6")
    assert tab.page.query_selector("#try") is None
    assert tab.page.evaluate("window.cvgenTry") is None
    assert "connect-src" not in tab.page.content()
    # even a script that tries to connect is stopped by the page's policy
    refused = tab.page.evaluate("fetch('http://127.0.0.1:9/x').then(() => 'sent', e => e.name)")
    assert refused == "TypeError"
    tab.errors = [e for e in tab.errors if "Content Security Policy" not in e]
    tab.close()  # checks that the only request was the file itself


def test_run_streams_the_selection_and_the_unsteered_model_side_by_side(
    served: tuple[FakeServer, Any, list[str]],
) -> None:
    server, page, requests = served
    assert page.is_visible("#try") and page.is_hidden(".try-columns")
    page.fill("#axis-0-scale", "0.6")
    page.fill("#axis-3-scale", "-0.45")
    page.fill("#try-prompt", "Describe the sea <b>at</b> dawn.")
    page.fill("#try-max-tokens", "40")
    assert page.text_content("#try-selection") == (
        "Run compares language=+0.6, tense=-0.45 with the unsteered model."
    )
    server.gate.clear()  # hold the streams after their first pieces
    page.click("#try-run")
    wait_until(
        page,
        "['steered', 'unsteered'].every(c =>"
        " document.getElementById('try-' + c + '-text').textContent.length === 2 * 9)",
    )
    assert page.text_content("#try-steered-status") == "streaming…"
    server.gate.set()
    for column in ("steered", "unsteered"):
        wait_finished(page, column)
    steered, unsteered = sorted(server.bodies, key=lambda body: body["control_vectors"] == {})
    assert steered == {
        "model": "pico-llama",
        "messages": [{"role": "user", "content": "Describe the sea <b>at</b> dawn."}],
        "max_tokens": 40,
        "temperature": 0,
        "stream": True,
        "control_vectors": {"language": 0.6, "tense": -0.45},
    }
    assert unsteered == {**steered, "control_vectors": {}}
    assert page.text_content("#try-steered-label") == "language=+0.6, tense=-0.45"
    assert page.text_content("#try-unsteered-label") == "unsteered"
    assert page.text_content("#try-steered-text") == echo_text(steered)
    assert page.text_content("#try-unsteered-text") == echo_text(unsteered)
    assert page.evaluate("document.querySelectorAll('#try b').length") == 0  # text, not markup
    status = page.text_content("#try-unsteered-status")
    assert status.startswith("finished: length (the max tokens were reached) · ")
    endpoint = f"POST {server.url}v1/chat/completions"
    assert requests == [f"GET {server.url}", endpoint, endpoint]


def test_a_preset_runs_as_the_builder_shows_it_and_a_refusal_is_shown(
    served: tuple[FakeServer, Any, list[str]],
) -> None:
    server, page, _ = served
    page.select_option("#preset", "vivid-dialogue")
    page.click("#try-run")
    wait_finished(page, "steered")
    wait_finished(page, "unsteered")
    sent = sorted((body["control_vectors"] for body in server.bodies), key=len)
    assert sent == [{}, {"dialogue": 0.4, "language": 0.5}]
    assert list(sent[1]) == ["dialogue", "language"]  # in the preset's order, as the command
    assert page.text_content("#try-steered-label") == "dialogue=+0.4, language=+0.5"
    assert page.text_content("#try-steered-status").startswith("finished: stop · ")
    # a scale the server refuses: its message in the steered column; the other one still runs
    page.fill("#axis-1-scale", "-1.3")
    page.click("#try-run")
    wait_finished(page, "steered")
    wait_finished(page, "unsteered")
    assert page.text_content("#try-steered-error") == (
        "The server refused the request (HTTP 400): "
        "control_vectors.optimism: scale -1.3 is beyond its safe scale 1"
    )
    assert page.text_content("#try-steered-text") == ""
    assert page.is_hidden("#try-unsteered-error")
    assert page.text_content("#try-unsteered-text").startswith("vectors {}; 96 tokens; ")
    # what the panel refuses before sending anything
    count = len(server.bodies)
    for field, value, message in [
        ("#try-max-tokens", "201", "Max tokens must be a whole number from 1 to 200."),
        ("#axis-1-scale", "abc", "Fix the selection first: scale 'abc' for axis 'optimism' is"),
    ]:
        page.fill("#try-max-tokens", "20")
        page.fill(field, value)
        page.click("#try-run")
        assert page.text_content("#try-error").startswith(message)
    assert len(server.bodies) == count


def test_a_new_run_aborts_the_one_before(served: tuple[FakeServer, Any, list[str]]) -> None:
    server, page, _ = served
    page.fill("#axis-2-scale", "0.3")
    server.gate.clear()
    page.fill("#try-prompt", "first")
    page.click("#try-run")
    wait_until(page, "document.getElementById('try-steered-text').textContent.length > 0")
    page.fill("#try-prompt", "second")
    page.fill("#axis-2-scale", "-0.2")
    page.click("#try-run")  # while the first run's streams are held mid-way
    server.gate.set()  # now they may go on; the page no longer listens to them
    for column in ("steered", "unsteered"):
        wait_finished(page, column)
    assert page.text_content("#try-steered-label") == "dialogue=-0.2"
    assert page.text_content("#try-steered-text").endswith("; prompt: second")
    assert "first" not in page.text_content("#try-unsteered-text")
    assert [body["messages"][0]["content"] for body in server.bodies].count("second") == 2


def test_a_server_that_is_gone_is_an_error_in_the_panel(
    served: tuple[FakeServer, Any, list[str]],
) -> None:
    server, page, _ = served
    page.fill("#axis-0-scale", "0.5")
    server.http.shutdown()
    server.http.server_close()
    page.click("#try-run")
    wait_finished(page, "steered")
    assert page.text_content("#try-steered-error").startswith("Could not reach the server: ")
