"""A raw ASGI 3 app answering what the built-in app answers: ``GET /`` and ``POST /echo``.

Run it on ringserve (either backend, either parser)::

    python -m server --app examples.asgi_hello:app --backend uring --http httptools

or on uvicorn or granian (``python -m uvicorn examples.asgi_hello:app``,
``python -m granian --interface asgi examples.asgi_hello:app``).
``loadtest.compare`` serves it on every ASGI peer (its builtin workload) and
on ours too with ``--app asgi``.

Same answers as `server.apps.builtin` for what the load generators send:
``GET /`` (and HEAD) the hello with the same headers, ``POST /echo`` the
body back with the request's content-type (so Locust's validating
``HttpAppUser`` runs against it unchanged); anything else 404, a known path
with the wrong method 405.  No ``/stats``.  It takes part in the lifespan
protocol (it has nothing to set up), so it starts under every ``--lifespan``.
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


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"]  # lifespan.startup or lifespan.shutdown
        await send({"type": f"{kind}.complete"})
        if kind == "lifespan.shutdown":
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
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
