"""The gate in front of `cvgen serve`'s app, an ASGI middleware that looks at a request before
anything parses it: the API key (a bearer token, or HTTP Basic with the key as password, which
is how a browser sends it to the page; compared in constant time), requests made by another
site's page (a foreign `Origin`, or on loopback a `Host` that is not a loopback name, as a
DNS-rebinding page sends), and the body's size (refused from its Content-Length, and counted
while it is read when there is none). Refusals are OpenAI's error object (`error_response`).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(
    status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    """OpenAI's error object with `status`."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


class Guard:
    """The API key (a bearer token, or HTTP Basic with the key as password, which is how a
    browser sends it to the page) and the body bound, before the app sees a request."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, loopback: bool):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value for key, value in scope["headers"]}
        refusal = self._foreign(headers)
        if refusal is not None:
            await error_response(403, refusal[1], param=refusal[0], kind="forbidden")(
                scope, receive, send
            )
            return
        if self.api_key is not None and not self._authorised(headers.get("authorization")):
            page = scope.get("path") == "/"
            response = error_response(
                401,
                "authorization: a missing or wrong API key; send 'Authorization: Bearer KEY'",
                param="authorization",
                kind="authentication_error",
            )
            if page:  # the browser asks for the key (any user name, the key as password)
                response.headers["WWW-Authenticate"] = 'Basic realm="cvgen serve"'
            await response(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _foreign(self, headers: dict[str, bytes]) -> tuple[str, str] | None:
        """(field, why) for a request another site's page made: an `Origin` that is not this
        server's own, or (on loopback) a `Host` that is not a loopback name, which is what a
        DNS-rebinding page sends. None for everything else."""
        host = headers.get("host", b"").decode("latin-1")
        if self.loopback and _host_name(host) not in LOOPBACK_NAMES:
            return "host", f"host: '{host}' is not this loopback server's name"
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin.decode("latin-1"))
            if parts.scheme not in ("http", "https") or parts.netloc != host:
                return "origin", "origin: another site's page may not use this server"
        return None

    def _authorised(self, header: bytes | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.decode("latin-1").partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        assert self.api_key is not None
        return hmac.compare_digest(value.encode(), self.api_key.encode())

    def _bounded(self, receive: Receive) -> Receive:
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        return bounded

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, f"body: larger than {self.max_body_bytes} bytes (--max-body-bytes)", param="body"
        )
        await response(scope, receive, send)


LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


def _host_name(host: str) -> str:
    """The name in a Host header, without its port (and an IPv6 address's brackets)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BodyTooLarge(Exception):
    """A chunked body went past the bound while being read."""
