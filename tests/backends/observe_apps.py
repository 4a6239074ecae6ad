"""Apps that say who they think the client is (proxy headers, access log tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def wsgi_who(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``REMOTE_ADDR REMOTE_PORT wsgi.url_scheme``; /boom raises."""
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    if environ["PATH_INFO"] == "/bad":  # a header the server refuses to send: its 500
        start_response("200 OK", [("X-Bad", "a\r\nb")])
        return [b"never sent"]
    body = " ".join(
        [
            environ.get("REMOTE_ADDR", "-"),
            environ.get("REMOTE_PORT", "-"),
            environ["wsgi.url_scheme"],
        ]
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


async def asgi_who(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``host port scheme`` of the scope; /stream answers in two chunks, unsized."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"defgh"})
        return
    if scope["path"] == "/bad":  # a header the server refuses to send: its 500
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nb")]}
        )
        await send({"type": "http.response.body", "body": b"never sent"})
        return
    client = scope["client"]
    host, port = client if client else ("-", "-")
    body = f"{host} {port} {scope['scheme']}".encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
