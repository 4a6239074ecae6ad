"""The built-in app's ``GET /`` and ``POST /echo`` as a minimal ASGI app, for uvicorn.

Run: ``uvicorn loadtest.peers.uvicorn_app:app --http h11 --loop uvloop
--no-access-log --port 8080`` (or ``--http httptools``, or ``granian
--interface asgi``: ``compare`` says how).

Same answers as `server.apps.builtin` for what the load generators send:
``GET /`` (and HEAD) the hello, ``POST /echo`` the body back with the
request's content-type (so Locust's validating ``HttpAppUser`` runs against
it unchanged); anything else 404, a known path with the wrong method 405.
No ``/stats``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

HELLO = b"Hello from ringserve\n"
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [_TEXT, (b"content-length", b"%d" % len(HELLO))],
}
_BODY = {"type": "http.response.body", "body": HELLO}
_ALLOWED = {"/": b"GET, HEAD", "/echo": b"POST"}

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _text(send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    headers = [_TEXT, (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    ctype = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    headers = [
        (b"content-type", ctype or b"application/octet-stream"),
        (b"content-length", b"%d" % len(body)),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/" and method in ("GET", "HEAD"):
        await send(_START)
        await send(_BODY)
    elif path == "/echo" and method == "POST":
        await _echo(scope, receive, send)
    elif path in _ALLOWED:
        await _text(send, 405, b"405 Method Not Allowed\n", (b"allow", _ALLOWED[path]))
    else:
        await _text(send, 404, b"404 Not Found\n")
