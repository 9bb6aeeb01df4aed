"""The gate before the app, driven as ASGI without a server: the key (bearer or HTTP Basic),
another site's page (Origin, and Host on loopback), and the body's size."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from cvgen.serve.guard import BodyTooLarge, Guard, _host_name

KEY = "s3cret"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, then answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def call(
    headers: dict[str, str],
    body: list[bytes] | None = None,
    *,
    path: str = "/v1/models",
    loopback: bool = True,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON or text, headers) of one request through the guard."""
    guard = Guard(_app, api_key=KEY, max_body_bytes=100, loopback=loopback)
    chunks = list(body or [b""])
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"]
    text = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    answer_headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    try:
        return status, json.loads(text), answer_headers
    except json.JSONDecodeError:
        return status, text, answer_headers


HOST = {"Host": "127.0.0.1:8080"}
BEARER = {**HOST, "Authorization": f"Bearer {KEY}"}


def test_the_key_as_bearer_or_as_basic_password_and_nothing_else() -> None:
    assert call(BEARER)[0] == 200
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    assert call({**HOST, "Authorization": f"Basic {basic}"})[0] == 200
    for header in (f"Bearer {KEY}x", f"Token {KEY}", "Basic !!!", "", f"Bearer  {KEY[:-1]}"):
        status, reply, answer = call({**HOST, "Authorization": header})
        assert status == 401 and reply["error"]["param"] == "authorization"
        assert "www-authenticate" not in answer  # only the page asks a browser for the key
    status, _, answer = call(HOST, path="/")
    assert status == 401 and answer["www-authenticate"] == 'Basic realm="cvgen serve"'


def test_another_site_s_page_is_refused() -> None:
    assert call({**BEARER, "Origin": "http://127.0.0.1:8080"})[0] == 200
    for origin in ("http://elsewhere.example", "null", "http://127.0.0.1:9999"):
        status, reply, _ = call({**BEARER, "Origin": origin})
        assert (status, reply["error"]["param"]) == (403, "origin"), origin
    rebound = {**BEARER, "Host": "elsewhere.example:8080"}
    status, reply, _ = call(rebound)
    assert (status, reply["error"]["param"]) == (403, "host")
    assert call(rebound, loopback=False)[0] == 200  # a server on another address: any name
    for host in ("localhost:8080", "[::1]:8080", "127.0.0.1"):
        assert call({**BEARER, "Host": host})[0] == 200, host
    assert [_host_name(h) for h in ("[::1]:80", "localhost", "a.b:1", "::1")] == [
        "::1",
        "localhost",
        "a.b",
        "::1",
    ]


def test_a_body_over_the_bound_is_refused_by_its_length_or_while_read() -> None:
    assert call({**BEARER, "Content-Length": "100"}, [b"x" * 100]) == (200, 100, {})
    status, reply, _ = call({**BEARER, "Content-Length": "101"}, [b"x" * 101])
    assert (status, reply["error"]["param"]) == (413, "body")
    with pytest.raises(BodyTooLarge):  # no length given: counted as read (the app answers 413)
        call(BEARER, [b"x" * 60, b"x" * 60])
