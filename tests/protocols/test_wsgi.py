"""WsgiAdapter (PEP 3333) checked by wsgiref.validate, and load_app.

Every app called through the adapter here is wrapped in
``wsgiref.validate.validator`` unless it breaks PEP 3333 on purpose; its
warnings are errors, and so is an iterable it finds unclosed.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest
from flask import Flask, jsonify, request
from werkzeug.exceptions import InternalServerError, MethodNotAllowed, NotFound

from server.apps.wsgi import WsgiAdapter, load_app
from server.protocols.http.common import Request
from tests.protocols.helpers import (
    APP_ERROR_500,
    DATE_LINE,
    SERVER_LINE,
    check,
    chunkings,
    connect,
    errors_of,
    feed,
    http_response,
)

pytestmark = [
    pytest.mark.filterwarnings("error::wsgiref.validate.WSGIWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.usefixtures("http_parser"),  # each test on both parsers
]


def adapt(app: Any, *, validate: bool = True) -> WsgiAdapter:
    return WsgiAdapter(validator(app) if validate else app, "testserver", 8080)


def req(method: bytes, target: bytes, *headers: tuple[bytes, bytes], body: bytes = b"") -> Request:
    return Request(method, target, [(b"host", b"example.com"), *headers], b"1.1", body)


def raw(method: bytes, target: bytes, *header_lines: bytes, body: bytes = b"") -> bytes:
    lines = b"".join(h + b"\r\n" for h in header_lines)
    if body:
        lines += b"Content-Length: %d\r\n" % len(body)
    return b"%s %s HTTP/1.1\r\nHost: example.com\r\n%s\r\n%s" % (method, target, lines, body)


def text_app(body: bytes, status: str = "200 OK") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app


# -- the environ ---------------------------------------------------------------


def test_environ_exactly() -> None:
    adapter = WsgiAdapter(text_app(b""), "testserver", 8080)
    env = adapter.environ(
        Request(
            b"POST",
            b"/a%20b/%C3%A9/x%2Fy?x=1&y=%20&z",
            [
                (b"host", b"example.com"),
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", b"7"),
                (b"x-multi", b"a"),
                (b"user-agent", b"t/1"),
                (b"x-multi", b"b"),
                (b"x-latin", b"caf\xe9"),
                (b"x-multi", b"c, d"),
            ],
            b"1.1",
            b"k=v&w=1",
        )
    )
    body = env.pop("wsgi.input")
    assert body.read() == b"k=v&w=1"
    assert env.pop("wsgi.errors") is sys.stderr
    assert env == {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/a b/\xc3\xa9/x/y",  # unquoted bytes, as latin-1
        "QUERY_STRING": "x=1&y=%20&z",  # as sent
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": "7",
        "HTTP_HOST": "example.com",
        "HTTP_USER_AGENT": "t/1",
        "HTTP_X_MULTI": "a,b,c, d",
        "HTTP_X_LATIN": "caf\xe9",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def test_environ_without_body_or_query() -> None:
    adapter = WsgiAdapter(text_app(b""), "h", 1, multiprocess=True)
    env = adapter.environ(Request(b"GET", b"/", [], b"1.0", b""))
    assert env["PATH_INFO"] == "/"
    assert env["QUERY_STRING"] == ""
    assert env["CONTENT_LENGTH"] == ""
    assert "CONTENT_TYPE" not in env
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.input"].read() == b""
    assert not [k for k in env if k.startswith("HTTP_")]


def test_content_length_is_the_real_body_length() -> None:
    """A chunked body has no Content-Length header; a declared one is not trusted."""
    adapter = WsgiAdapter(text_app(b""), "h", 1)
    chunked = Request(b"POST", b"/", [(b"transfer-encoding", b"chunked")], b"1.1", b"abc")
    env = adapter.environ(chunked)
    assert env["CONTENT_LENGTH"] == "3"
    assert env["HTTP_TRANSFER_ENCODING"] == "chunked"
    assert "HTTP_CONTENT_LENGTH" not in env


def test_environs_are_fresh_per_request() -> None:
    adapter = WsgiAdapter(text_app(b""), "h", 1)
    one = adapter.environ(req(b"GET", b"/1", (b"x-a", b"1")))
    one["mutated"] = True
    two = adapter.environ(req(b"GET", b"/2"))
    assert "mutated" not in two
    assert "HTTP_X_A" not in two


# -- simple apps under the validator -------------------------------------------


def test_get_with_query_string() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [environ["PATH_INFO"].encode("latin-1"), b"?", environ["QUERY_STRING"].encode()]

    resp = adapt(app)(req(b"GET", b"/search?q=a+b&n=%31"))
    assert resp.status == 200
    assert resp.headers == [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"content-length", b"19"),
    ]
    assert resp.body == b"/search?q=a+b&n=%31"


def form_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(length)
    start_response(
        "201 Created",
        [("Content-Type", environ.get("CONTENT_TYPE", "application/octet-stream"))],
    )
    return [data.upper()]


def test_post_body_via_wsgi_input() -> None:
    resp = adapt(form_app)(
        req(
            b"POST",
            b"/f",
            (b"content-type", b"text/csv"),
            (b"content-length", b"7"),
            body=b"a,b\n1,2",
        )
    )
    assert (resp.status, resp.headers, resp.body) == (
        201,
        [(b"Content-Type", b"text/csv"), (b"content-length", b"7")],
        b"A,B\n1,2",
    )


def test_post_over_http() -> None:
    data = raw(b"POST", b"/f", b"Content-Type: text/csv", body=b"a,b\n1,2")
    expected = http_response(
        b"HTTP/1.1 201 Created",
        b"Content-Type: text/csv",
        b"content-length: 7",
        SERVER_LINE,
        DATE_LINE,
        body=b"A,B\n1,2",
    )
    check(adapt(form_app), data, expected, should_close=False, requests=1, errors=0)


def test_request_headers_become_http_keys() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        keys = {k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))}
        return [json.dumps(keys, sort_keys=True).encode()]

    data = raw(
        b"PUT",
        b"/h",
        b"Accept: text/html",
        b"X-Forwarded-For: 10.0.0.1",
        b"Content-Type: application/json",
        b"x-forwarded-for: 10.0.0.2",
        b"Accept: application/json",
        body=b"{}",
    )
    conn, counters = connect(adapt(app))
    out = conn.receive_data(data)
    assert out.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    assert json.loads(out.partition(b"\r\n\r\n")[2]) == {
        "CONTENT_LENGTH": "2",
        "CONTENT_TYPE": "application/json",
        "HTTP_ACCEPT": "text/html,application/json",
        "HTTP_HOST": "example.com",
        "HTTP_X_FORWARDED_FOR": "10.0.0.1,10.0.0.2",
    }
    assert (counters.requests, errors_of(counters)) == (1, 0)


def test_response_header_values_are_latin1() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Name", "caf\xe9")])
        return [b""]

    resp = adapt(app)(req(b"GET", b"/"))
    assert resp.headers == [
        (b"Content-Type", b"text/plain"),
        (b"X-Name", b"caf\xe9"),
        (b"content-length", b"0"),
    ]


def test_app_content_length_is_kept_not_doubled() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"o", b"k"]

    resp = adapt(app)(req(b"GET", b"/"))
    assert resp.headers == [(b"Content-Type", b"text/plain"), (b"Content-Length", b"2")]
    assert resp.body == b"ok"


def test_status_code_is_parsed_from_the_status_line() -> None:
    resp = adapt(text_app(b"gone", "410 Gone"))(req(b"GET", b"/"))
    assert (resp.status, resp.body) == (410, b"gone")


BODYLESS = {
    "204": ("204 No Content", [], b"GET"),
    "304": ("304 Not Modified", [], b"GET"),
    "HEAD": ("200 OK", [("Content-Type", "text/plain")], b"HEAD"),
}


@pytest.mark.parametrize(("status", "headers", "method"), BODYLESS.values(), ids=BODYLESS.keys())
def test_no_content_length_is_invented_for_bodyless_responses(
    status: str, headers: list[tuple[str, str]], method: bytes
) -> None:
    """The adapter adds no ``content-length: 0`` when the app sends none (it once did).

    RFC 9110 8.6: a server MUST NOT send Content-Length in a 1xx or 204
    response, nor in a 304 or HEAD response unless it equals the length of
    the content a GET would get (unknown here, and not 0 in general).
    """

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, headers)
        return []

    resp = adapt(app)(req(method, b"/"))
    assert resp.headers == [(k.encode(), v.encode()) for k, v in headers]
    assert resp.body == b""


# -- write(), iterables and close() ------------------------------------------


def test_write_callable_then_iterable() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"")
        write(b"twice, ")
        return [b"then ", b"", b"returned"]

    resp = adapt(app)(req(b"GET", b"/"))
    assert resp.body == b"written twice, then returned"
    assert resp.headers[-1] == (b"content-length", b"28")


class ClosingBody:
    """A response iterable with close(); it records what happened to it."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = 0
        self.iterated = 0

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                raise ValueError("broken body")
            self.iterated += 1
            yield chunk

    def close(self) -> None:
        self.closed += 1


def test_iterable_close_is_called_once() -> None:
    body = ClosingBody([b"a", b"", b"b", b"c"])

    def app(environ: dict[str, Any], start_response: Any) -> ClosingBody:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    resp = adapt(app)(req(b"GET", b"/"))
    assert resp.body == b"abc"
    assert (body.iterated, body.closed) == (4, 1)


def test_iterable_close_is_called_when_iteration_fails() -> None:
    body = ClosingBody([b"a", b"b"], fail_after=1)

    def app(environ: dict[str, Any], start_response: Any) -> ClosingBody:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    with pytest.raises(ValueError, match="broken body"):
        adapt(app)(req(b"GET", b"/"))
    assert body.closed == 1

    body = ClosingBody([b"a", b"b"], fail_after=1)
    check(adapt(app), raw(b"GET", b"/"), APP_ERROR_500, should_close=False, requests=1, errors=1)


def test_generator_app_with_lazy_start_response() -> None:
    """start_response may be called on the first iteration (PEP 3333)."""
    events: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        try:
            start_response("200 OK", [("Content-Type", "text/plain")])
            events.append("started")
            yield b"lazy "
            yield b"body"
        finally:
            events.append("finally")

    resp = adapt(app)(req(b"GET", b"/"))
    assert (resp.status, resp.body) == (200, b"lazy body")
    assert events == ["started", "finally"]


def test_generator_close_reaches_the_app() -> None:
    """The adapter calls close() on what the app returned (a generator: its close)."""
    calls: list[str] = []

    class Gen:
        def __init__(self) -> None:
            self._gen = (c for c in (b"x", b"y"))

        def __iter__(self) -> Iterator[bytes]:
            return self

        def __next__(self) -> bytes:
            return next(self._gen)

        def close(self) -> None:
            calls.append("close")
            self._gen.close()

    def app(environ: dict[str, Any], start_response: Any) -> Gen:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Gen()

    assert adapt(app)(req(b"GET", b"/")).body == b"xy"
    assert calls == ["close"]


# -- start_response edge cases -------------------------------------------------


def test_start_response_with_exc_info_replaces_the_status() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise KeyError("lookup")
        except KeyError:
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"try later"]

    resp = adapt(app)(req(b"GET", b"/"))
    assert (resp.status, resp.headers, resp.body) == (
        503,
        [(b"Content-Type", b"text/plain"), (b"content-length", b"9")],
        b"try later",
    )
    expected = http_response(
        b"HTTP/1.1 503 Service Unavailable",
        b"Content-Type: text/plain",
        b"content-length: 9",
        SERVER_LINE,
        DATE_LINE,
        body=b"try later",
    )
    check(adapt(app), raw(b"GET", b"/"), expected, should_close=False, requests=1, errors=0)


def test_start_response_with_exc_info_first_call() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            raise KeyError("early")
        except KeyError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"early failure"]

    resp = adapt(app)(req(b"GET", b"/"))
    assert (resp.status, resp.body) == (500, b"early failure")


def test_start_response_with_exc_info_after_output_reraises() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise KeyError("late")
        except KeyError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"unreachable"]

    with pytest.raises(KeyError, match="late"):
        adapt(app)(req(b"GET", b"/"))
    check(adapt(app), raw(b"GET", b"/"), APP_ERROR_500, should_close=False, requests=1, errors=1)


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b""]

    with pytest.raises(AssertionError, match="twice"):
        adapt(app, validate=False)(req(b"GET", b"/"))
    check(
        adapt(app, validate=False),
        raw(b"GET", b"/"),
        APP_ERROR_500,
        should_close=False,
        requests=1,
        errors=1,
    )


@pytest.mark.parametrize("result", [[b"body"], []], ids=["with body", "empty"])
def test_app_that_never_calls_start_response(result: list[bytes]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return result

    with pytest.raises(RuntimeError, match="start_response"):
        adapt(app, validate=False)(req(b"GET", b"/"))
    # Through HttpConnection: a 500, counted, and the connection goes on.
    ok = adapt(text_app(b"fine"), validate=False)
    check(
        lambda r: ok(r) if r.target == b"/ok" else adapt(app, validate=False)(r),
        raw(b"GET", b"/") + raw(b"GET", b"/ok"),
        APP_ERROR_500
        + http_response(
            b"HTTP/1.1 200 OK",
            b"Content-Type: text/plain",
            b"content-length: 4",
            SERVER_LINE,
            DATE_LINE,
            body=b"fine",
        ),
        should_close=False,
        requests=2,
        errors=1,
    )


def test_app_raising_before_returning() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise LookupError("no")

    check(adapt(app), raw(b"GET", b"/"), APP_ERROR_500, should_close=False, requests=1, errors=1)


# -- Flask ---------------------------------------------------------------------


def make_flask() -> Flask:
    app = Flask("ringserve_test")

    @app.get("/")
    def index() -> str:
        return "hello"

    @app.get("/json")
    def as_json() -> Any:
        return jsonify(a=1, b=[1, 2], q=request.args.get("q"))

    @app.post("/echo")
    def echo() -> Any:
        return request.get_data(), 201, {"Content-Type": request.content_type or "x/y"}

    @app.get("/items/<int:n>")
    def item(n: int) -> Any:
        return {"n": n, "multi": request.headers.get("X-Multi")}

    @app.get("/fail")
    def fail() -> str:
        raise RuntimeError("flask view failed")

    return app


FLASK_APP = make_flask()
FLASK = adapt(FLASK_APP)


def flask_response(status: bytes, ctype: bytes, body: bytes, *extra: bytes) -> bytes:
    return http_response(
        b"HTTP/1.1 " + status,
        b"Content-Type: " + ctype,
        *extra,
        b"Content-Length: %d" % len(body),
        SERVER_LINE,
        DATE_LINE,
        body=body,
    )


HTML = b"text/html; charset=utf-8"
FLASK_CASES = {
    "index": (raw(b"GET", b"/"), flask_response(b"200 OK", HTML, b"hello")),
    "json": (
        raw(b"GET", b"/json?q=x%20y"),
        flask_response(b"200 OK", b"application/json", b'{"a":1,"b":[1,2],"q":"x y"}\n'),
    ),
    "post echo": (
        raw(b"POST", b"/echo", b"Content-Type: text/csv", body=b"a,b"),
        flask_response(b"201 CREATED", b"text/csv", b"a,b"),
    ),
    "route converter, joined headers": (
        raw(b"GET", b"/items/7", b"X-Multi: a", b"X-Multi: b"),
        flask_response(b"200 OK", b"application/json", b'{"multi":"a,b","n":7}\n'),
    ),
    "404 from flask": (
        raw(b"GET", b"/nope"),
        flask_response(b"404 NOT FOUND", HTML, NotFound().get_body().encode()),
    ),
    "405 from flask": (
        raw(b"DELETE", b"/json"),
        flask_response(
            b"405 METHOD NOT ALLOWED",
            HTML,
            MethodNotAllowed().get_body().encode(),
            b"Allow: GET, HEAD, OPTIONS",
        ),
    ),
    "500 from flask": (
        raw(b"GET", b"/fail"),
        flask_response(
            b"500 INTERNAL SERVER ERROR", HTML, InternalServerError().get_body().encode()
        ),
    ),
    # Werkzeug's own (upper-case) reason phrases pass through, as with gunicorn.
    # Flask gives HEAD the GET length and no body.
    "HEAD": (raw(b"HEAD", b"/"), flask_response(b"200 OK", HTML, b"hello")[: -len(b"hello")]),
}


@pytest.fixture
def quiet_flask_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """/fail is meant to fail: keep Flask from logging its traceback."""
    monkeypatch.setattr(FLASK_APP.logger, "disabled", True)


def sorted_allow(out: bytes) -> bytes:
    """Werkzeug lists Allow from a set: its order changes with the hash seed."""
    return re.sub(
        rb"Allow: ([^\r]*)", lambda m: b"Allow: " + b", ".join(sorted(m[1].split(b", "))), out
    )


def check_flask(data: bytes, expected: bytes, requests: int) -> None:
    for name, chunks in chunkings(data, max_cuts=60):
        fed = feed(FLASK, chunks, name=name)
        assert sorted_allow(fed.out) == expected, name
        assert fed.conn.should_close is False, name
        assert (fed.counters.requests, errors_of(fed.counters)) == (requests, 0), name


@pytest.mark.usefixtures("quiet_flask_errors")
@pytest.mark.parametrize(("data", "expected"), FLASK_CASES.values(), ids=FLASK_CASES.keys())
def test_flask_app(data: bytes, expected: bytes) -> None:
    check_flask(data, expected, requests=1)


@pytest.mark.usefixtures("quiet_flask_errors")
def test_flask_app_pipelined() -> None:
    data = b"".join(d for d, _ in FLASK_CASES.values())
    expected = b"".join(e for _, e in FLASK_CASES.values())
    check_flask(data, expected, requests=len(FLASK_CASES))


def test_flask_json_body_parses() -> None:
    conn, _ = connect(FLASK)
    out = conn.receive_data(raw(b"GET", b"/json?q=%C3%A9"))
    assert json.loads(out.partition(b"\r\n\r\n")[2]) == {"a": 1, "b": [1, 2], "q": "é"}


# -- load_app ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["json", "json:", ":dumps", "", ":"])
def test_load_app_bad_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="module:callable"):
        load_app(spec)


def test_load_app_missing_module() -> None:
    with pytest.raises(ImportError):
        load_app("ringserve_no_such_module_xyz:app")
    with pytest.raises(ImportError):
        load_app("json.no_such_submodule:app")


@pytest.mark.parametrize("spec", ["json:no_such_attr", "json:JSONEncoder.no_such_attr"])
def test_load_app_missing_attribute(spec: str) -> None:
    with pytest.raises(ValueError, match="has no attribute"):
        load_app(spec)


@pytest.mark.parametrize("spec", ["json:__name__", "os:sep", "json:JSONEncoder.item_separator"])
def test_load_app_not_callable(spec: str) -> None:
    with pytest.raises(ValueError, match="is not callable"):
        load_app(spec)


def test_load_app_finds_callables() -> None:
    assert load_app("json:dumps") is json.dumps
    assert load_app("json:JSONEncoder.encode") is json.JSONEncoder.encode
    import os.path

    assert load_app("os.path:join") is os.path.join


def test_load_app_from_a_module_file_and_serve_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ringserve_test_wsgi_mod.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'loaded']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ringserve_test_wsgi_mod", raising=False)
    app = load_app("ringserve_test_wsgi_mod:application")
    expected = http_response(
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/plain",
        b"content-length: 6",
        SERVER_LINE,
        DATE_LINE,
        body=b"loaded",
    )
    check(adapt(app), raw(b"GET", b"/"), expected, should_close=False, requests=1)
    sys.modules.pop("ringserve_test_wsgi_mod", None)
