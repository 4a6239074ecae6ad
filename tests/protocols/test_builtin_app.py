"""The built-in app, called directly and through HttpConnection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.apps.builtin import ALLOWED, BuiltinApp
from server.protocols.http.common import Counters, HttpLimits, Request
from tests.protocols import helpers
from tests.protocols.helpers import (
    DATE_LINE,
    HELLO,
    SERVER_LINE,
    check,
    chunkings,
    errors_of,
    feed,
    http_response,
)

STATS: dict[str, Any] = {
    "backend": "epoll",
    "open_connections": 3,
    "requests": 12,
    "nested": {"b": [1, 2.5, None], "a": "é"},
}


def stats() -> dict[str, Any]:
    return STATS


APP = BuiltinApp(stats)


def request(method: bytes, target: bytes, body: bytes = b"", *headers: tuple[bytes, bytes]):
    return Request(method, target, [(b"host", b"t"), *headers], b"1.1", body)


def raw(method: bytes, target: bytes, *header_lines: bytes, body: bytes = b"") -> bytes:
    lines = b"".join(h + b"\r\n" for h in header_lines)
    if body or method == b"POST":
        lines += b"Content-Length: %d\r\n" % len(body)
    return b"%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n%s" % (method, target, lines, body)


HELLO_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\n"
    b"server: ringserve\r\n"
    b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    b"\r\n"
    b"Hello from ringserve\n"
)
NOT_FOUND_RESPONSE = http_response(
    b"HTTP/1.1 404 Not Found",
    b"content-type: text/plain; charset=utf-8",
    b"content-length: 14",
    SERVER_LINE,
    DATE_LINE,
    body=b"404 Not Found\n",
)


def not_allowed_response(allow: bytes) -> bytes:
    return http_response(
        b"HTTP/1.1 405 Method Not Allowed",
        b"content-type: text/plain; charset=utf-8",
        b"content-length: 23",
        b"allow: " + allow,
        SERVER_LINE,
        DATE_LINE,
        body=b"405 Method Not Allowed\n",
    )


# -- called directly ----------------------------------------------------------


@pytest.mark.parametrize("target", [b"/", b"/?x=1", b"/?"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_hello(method: bytes, target: bytes) -> None:
    resp = APP(request(method, target))
    assert resp.status == 200
    assert resp.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"21"),
    ]
    assert resp.body == HELLO  # HttpConnection leaves it out for HEAD


@pytest.mark.parametrize(
    ("headers", "ctype"),
    [
        (
            [(b"content-type", b"application/json; charset=utf-8")],
            b"application/json; charset=utf-8",
        ),
        ([(b"content-type", b"")], b"application/octet-stream"),
        ([], b"application/octet-stream"),
    ],
)
def test_echo_returns_the_body_and_its_content_type(
    headers: list[tuple[bytes, bytes]], ctype: bytes
) -> None:
    body = b'{"k": "\xc3\xa9"}\x00\xff'
    resp = APP(request(b"POST", b"/echo?x", body, *headers))
    assert resp.status == 200
    assert resp.headers == [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
    assert resp.body is body


def test_echo_of_an_empty_body() -> None:
    resp = APP(request(b"POST", b"/echo"))
    assert (resp.status, resp.headers, resp.body) == (
        200,
        [(b"content-type", b"application/octet-stream"), (b"content-length", b"0")],
        b"",
    )


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_stats_is_the_stats_callable_as_json(method: bytes) -> None:
    resp = APP(request(method, b"/stats?pretty=1"))
    assert resp.status == 200
    assert resp.headers == [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(resp.body)),
    ]
    assert json.loads(resp.body) == STATS
    assert resp.body.endswith(b"}\n")
    assert resp.body == json.dumps(STATS, sort_keys=True).encode() + b"\n"


def test_stats_is_read_on_every_request() -> None:
    calls = []

    def counting() -> dict[str, Any]:
        calls.append(1)
        return {"calls": len(calls)}

    app = BuiltinApp(counting)
    assert json.loads(app(request(b"GET", b"/stats")).body) == {"calls": 1}
    assert json.loads(app(request(b"GET", b"/stats")).body) == {"calls": 2}


@pytest.mark.parametrize(
    "target", [b"/nope", b"/echo/", b"/stats/x", b"//", b"", b"/ECHO", b"/hello?/"]
)
@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE"])
def test_unknown_path_404(method: bytes, target: bytes) -> None:
    resp = APP(request(method, target))
    assert (resp.status, resp.body) == (404, b"404 Not Found\n")
    assert resp.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"14"),
    ]


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        (b"POST", b"/", b"GET, HEAD"),
        (b"PUT", b"/?q", b"GET, HEAD"),
        (b"GET", b"/echo", b"POST"),
        (b"HEAD", b"/echo", b"POST"),
        (b"DELETE", b"/stats", b"GET, HEAD"),
        (b"get", b"/", b"GET, HEAD"),  # methods are case-sensitive
    ],
)
def test_wrong_method_405_with_allow(method: bytes, target: bytes, allow: bytes) -> None:
    resp = APP(request(method, target))
    assert (resp.status, resp.body) == (405, b"405 Method Not Allowed\n")
    assert resp.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"23"),
        (b"allow", allow),
    ]


def test_allowed_table() -> None:
    assert ALLOWED == {b"/": b"GET, HEAD", b"/echo": b"POST", b"/stats": b"GET, HEAD"}


# -- through HttpConnection ---------------------------------------------------


@pytest.mark.usefixtures("http_parser")
def test_hello_over_http() -> None:
    check(APP, raw(b"GET", b"/"), HELLO_RESPONSE, should_close=False, requests=1, errors=0)


@pytest.mark.usefixtures("http_parser")
def test_repeated_hellos_are_identical() -> None:
    """The app shares one header list between responses: nothing may grow it."""
    data = raw(b"GET", b"/") * 3
    check(APP, data, HELLO_RESPONSE * 3, should_close=False, requests=3)
    check(APP, data, HELLO_RESPONSE * 3, should_close=False, requests=3)


@pytest.mark.usefixtures("http_parser")
def test_head_hello_over_http() -> None:
    head_only = HELLO_RESPONSE[: -len(HELLO)]
    check(APP, raw(b"HEAD", b"/"), head_only, should_close=False, requests=1)


@pytest.mark.usefixtures("http_parser")
def test_echo_over_http_keeps_the_content_type() -> None:
    body = b"a,b\r\n1,2\r\n"
    data = raw(b"POST", b"/echo", b"Content-Type: text/csv; charset=latin-1", body=body)
    expected = http_response(
        b"HTTP/1.1 200 OK",
        b"content-type: text/csv; charset=latin-1",
        b"content-length: 10",
        SERVER_LINE,
        DATE_LINE,
        body=body,
    )
    check(APP, data, expected, should_close=False, requests=1)


@pytest.mark.usefixtures("http_parser")
def test_echo_over_http_with_a_chunked_body() -> None:
    data = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: text/plain\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    expected = http_response(
        b"HTTP/1.1 200 OK",
        b"content-type: text/plain",
        b"content-length: 5",
        SERVER_LINE,
        DATE_LINE,
        body=b"abcde",
    )
    check(APP, data, expected, should_close=False, requests=1)


@pytest.mark.usefixtures("http_parser")
def test_stats_over_http_parses_to_the_stats_dict() -> None:
    data = raw(b"GET", b"/stats")
    for name, chunks in chunkings(data, max_cuts=30):
        fed = feed(APP, chunks, name=name)
        head, sep, body = fed.out.partition(b"\r\n\r\n")
        assert sep, name
        assert head == (
            b"HTTP/1.1 200 OK\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"server: ringserve\r\n"
            b"date: Sun, 06 Nov 1994 08:49:37 GMT" % len(body)
        ), name
        assert json.loads(body) == STATS, name


@pytest.mark.usefixtures("http_parser")
def test_head_stats_has_the_get_content_length() -> None:
    get = feed(APP, [raw(b"GET", b"/stats")]).out
    head = feed(APP, [raw(b"HEAD", b"/stats")]).out
    assert head == get.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"


@pytest.mark.usefixtures("http_parser")
def test_stats_reading_the_live_counters() -> None:
    counters = Counters()
    app = BuiltinApp(lambda: {"requests": counters.requests, "errors": errors_of(counters)})
    conn = helpers.HttpConnection(app, HttpLimits(), counters)
    out = conn.receive_data(raw(b"GET", b"/") + raw(b"GET", b"/missing") + raw(b"GET", b"/stats"))
    assert out.startswith(HELLO_RESPONSE + NOT_FOUND_RESPONSE)
    body = out.rpartition(b"\r\n\r\n")[2]
    # The stats request itself is counted after the app returns.
    assert json.loads(body) == {"requests": 2, "errors": 0}
    assert counters.requests == 3


@pytest.mark.usefixtures("http_parser")
def test_404_over_http() -> None:
    check(APP, raw(b"GET", b"/nope"), NOT_FOUND_RESPONSE, should_close=False, requests=1)


@pytest.mark.usefixtures("http_parser")
@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [(b"POST", b"/", b"GET, HEAD"), (b"GET", b"/echo", b"POST"), (b"PUT", b"/stats", b"GET, HEAD")],
)
def test_405_over_http(method: bytes, target: bytes, allow: bytes) -> None:
    data = raw(method, target, body=b"x" if method != b"GET" else b"")
    check(APP, data, not_allowed_response(allow), should_close=False, requests=1, errors=0)


@pytest.mark.usefixtures("http_parser")
def test_every_route_pipelined() -> None:
    data = (
        raw(b"GET", b"/")
        + raw(b"POST", b"/echo", body=b"ping")
        + raw(b"GET", b"/nope")
        + raw(b"DELETE", b"/echo")
        + raw(b"HEAD", b"/")
    )
    echo = http_response(
        b"HTTP/1.1 200 OK",
        b"content-type: application/octet-stream",
        b"content-length: 4",
        SERVER_LINE,
        DATE_LINE,
        body=b"ping",
    )
    expected = (
        HELLO_RESPONSE
        + echo
        + NOT_FOUND_RESPONSE
        + not_allowed_response(b"POST")
        + HELLO_RESPONSE[: -len(HELLO)]
    )
    check(APP, data, expected, should_close=False, requests=5, errors=0)
