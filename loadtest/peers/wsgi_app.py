"""The built-in app's ``GET /`` and ``POST /echo`` as a minimal WSGI app.

What ``compare --app wsgi`` serves on every server that can run WSGI: ours
(``python -m server --app loadtest.peers.wsgi_app:app``), ``uvloop-h11``
(``--app`` the same) and ``granian --interface wsgi``, which serves it in
the builtin workload too.  Same answers as `server.apps.builtin` and
``examples.asgi_hello`` for what the load generators send: ``GET /`` (and HEAD) the
hello with the same headers, ``POST /echo`` the body back with the
request's content-type; anything else 404, a known path with the wrong
method 405.  No ``/stats``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

HELLO = b"Hello from ringserve\n"
_TEXT = ("content-type", "text/plain; charset=utf-8")
_HELLO_HEADERS = [_TEXT, ("content-length", str(len(HELLO)))]
_ALLOWED = {"/": "GET, HEAD", "/echo": "POST"}

StartResponse = Callable[..., Any]


def _text(start_response: StartResponse, status: str, body: bytes, *extra: tuple[str, str]):
    start_response(status, [_TEXT, ("content-length", str(len(body))), *extra])
    return [body]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
    if path == "/" and method in ("GET", "HEAD"):
        start_response("200 OK", _HELLO_HEADERS)
        return [HELLO]
    if path == "/echo" and method == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        ctype = environ.get("CONTENT_TYPE") or "application/octet-stream"
        start_response("200 OK", [("content-type", ctype), ("content-length", str(len(body)))])
        return [body]
    if path in _ALLOWED:
        return _text(start_response, "405 Method Not Allowed", b"405 Method Not Allowed\n",
                     ("allow", _ALLOWED[path]))  # fmt: skip
    return _text(start_response, "404 Not Found", b"404 Not Found\n")
