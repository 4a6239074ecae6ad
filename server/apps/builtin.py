"""The built-in app: a hello, an echo endpoint and live statistics.

- ``GET /`` (and HEAD): a short hello;
- ``POST /echo``: the request body, back;
- ``GET /stats``: backend and server counters as JSON;
- other paths 404; a known path with the wrong method 405 with ``Allow``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from server.protocols.http.common import Request, Response, split_target

HELLO = b"Hello from ringserve\n"
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_JSON = (b"content-type", b"application/json")
_HELLO_RESPONSE_HEADERS = [_TEXT, (b"content-length", b"%d" % len(HELLO))]

ALLOWED: dict[bytes, bytes] = {b"/": b"GET, HEAD", b"/echo": b"POST", b"/stats": b"GET, HEAD"}


def _text(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> Response:
    return Response(status, [_TEXT, (b"content-length", b"%d" % len(body)), *extra], body)


class BuiltinApp:
    """Args:
    stats: returns the statistics served at /stats.
    """

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def __call__(self, request: Request) -> Response:
        path, _ = split_target(request.target)
        method = request.method
        if path == b"/":
            if method in (b"GET", b"HEAD"):
                return Response(200, _HELLO_RESPONSE_HEADERS, HELLO)
        elif path == b"/echo":
            if method == b"POST":
                body = request.body
                ctype = next((v for k, v in request.headers if k == b"content-type"), None)
                headers = [(b"content-type", ctype or b"application/octet-stream")]
                headers.append((b"content-length", b"%d" % len(body)))
                return Response(200, headers, body)
        elif path == b"/stats":
            if method in (b"GET", b"HEAD"):
                body = json.dumps(self._stats(), sort_keys=True).encode() + b"\n"
                return Response(200, [_JSON, (b"content-length", b"%d" % len(body))], body)
        else:
            return _text(404, b"404 Not Found\n")
        return _text(405, b"405 Method Not Allowed\n", (b"allow", ALLOWED[path]))
