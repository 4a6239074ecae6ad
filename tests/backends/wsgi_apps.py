"""WSGI applications the backend suite serves with Config(app="tests.backends.wsgi_apps:...").

- ``app``: a plain PEP 3333 callable, no framework;
- ``flask_app``: the same routes in Flask.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

ENVIRON_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
)

# Calls of close() on the streamed response, so a test can see PEP 3333's rule kept.
closed: list[str] = []


class _Streamed:
    """An iterable response with close(), and no Content-Length from the app."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._parts)

    def close(self) -> None:
        closed.append("streamed")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/":
        body = b"Hello from a plain WSGI app\n"
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    if path.startswith("/environ"):
        info = {k: environ.get(k) for k in ENVIRON_KEYS}
        info["headers"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        info["wsgi.version"] = list(environ["wsgi.version"])
        body = json.dumps(info, sort_keys=True).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/echo" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/stream":
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Custom", "yes")])
        return _Streamed([b"one,", b"", b"two,", b"three"])
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/boom":
        raise RuntimeError("the app failed")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page: " + path.encode("latin-1")]


def _make_flask_app() -> Any:
    from flask import Flask, jsonify, request

    flask_app = Flask(__name__)

    @flask_app.get("/")
    def hello() -> str:
        return "Hello from Flask\n"

    @flask_app.get("/hello/<name>")
    def hello_name(name: str) -> Any:
        return jsonify(name=name, query=request.args.to_dict(), agent=request.user_agent.string)

    @flask_app.post("/echo")
    def echo() -> Any:
        return request.get_data(), 200, {"Content-Type": "application/octet-stream"}

    @flask_app.post("/json")
    def add() -> Any:
        data = request.get_json()
        return jsonify(sum=sum(data["numbers"]))

    @flask_app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the flask view failed")

    return flask_app


def __getattr__(name: str) -> Any:
    # Flask is imported only when the Flask app is asked for.
    if name == "flask_app":
        value = _make_flask_app()
        globals()["flask_app"] = value
        return value
    raise AttributeError(name)


def sleepy_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/slow`` blocks its thread (as a database call would); anything else answers at once."""
    import time

    if environ["PATH_INFO"] == "/slow":
        time.sleep(1.5)
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
