"""The ASGI HTTP spec (2.4) over real sockets, with raw ASGI apps (`tests.asgi.apps`).

Every test runs on both backends and both parsers; responses are compared
byte for byte (the Date value normalized), and what the app saw is what it
noted or answered with.  A server in a thread of this process
(`tests.conftest.serve_in_thread`) checks its teardown: no connection, op,
fd, or asyncio task of the app left behind.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from http import HTTPStatus
from typing import Any

import pytest

from server.apps.asgi import BODY_PAUSE_BYTES
from server.backends.base import OUTPUT_HIGH_WATER_BYTES
from tests.asgi.apps import Control
from tests.asgi.support import (
    APP_500,
    head,
    norm,
    read_exactly,
    read_expected,
    read_until_eof,
    wait_stable,
    whole,
)
from tests.backends.client import (
    HttpReader,
    assert_silent,
    connect,
    exchange,
    pattern,
    read_error_then_eof,
    request,
    sha256,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def scope_of(sock: socket.socket, data: bytes) -> dict[str, Any]:
    (resp,) = exchange(sock, data)
    assert resp.status == 200, resp
    scope: dict[str, Any] = json.loads(resp.body)
    return scope


# -- the scope ---------------------------------------------------------------------------


def test_scope_has_every_field_of_the_spec(make_server) -> None:
    data = (
        b"PATCH /scope?a=1&b=%20x HTTP/1.1\r\n"
        b"Host: test\r\n"
        b"X-Twice: one\r\n"
        b"Content-TYPE: text/x-mine\r\n"
        b"x-twice: two\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with make_server() as srv, connect(srv.address) as s:
        scope = scope_of(s, data)
        client = s.getsockname()
        server = srv.address
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "PATCH",
        "scheme": "http",
        "path": "/scope",
        "raw_path": "/scope",
        "query_string": "a=1&b=%20x",
        "root_path": "",
        # lowercase names, in the order they came, duplicates kept
        "headers": [
            ["host", "test"],
            ["x-twice", "one"],
            ["content-type", "text/x-mine"],
            ["x-twice", "two"],
            ["content-length", "0"],
        ],
        "client": [client[0], client[1]],
        "server": [server[0], server[1]],
        "state": {"started": "yes", "items": [1, 2]},
        "types": {
            "type": "str",
            "asgi": "dict",
            "http_version": "str",
            "method": "str",
            "scheme": "str",
            "path": "str",
            "raw_path": "bytes",
            "query_string": "bytes",
            "root_path": "str",
            "headers": "list",
            "client": "tuple",
            "server": "tuple",
            "state": "dict",
        },
        "header_types": ["bytes,bytes"],
    }


def test_scope_of_an_http_10_request(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(b"GET /scope HTTP/1.0\r\n\r\n")
        body = read_until_eof(s)
    scope = json.loads(body.partition(b"\r\n\r\n")[2])
    assert (scope["http_version"], scope["method"], scope["headers"]) == ("1.0", "GET", [])


def test_path_is_percent_decoded_utf8_and_raw_path_is_not(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        scope = scope_of(s, request("GET", "/scope/a%20b%2Fc%C3%A9%E2%82%AC?x=%2F&y=%C3%A9"))
        absolute = scope_of(s, request("GET", "http://test/scope/abs%20x?q=1"))
    assert scope["path"] == "/scope/a b/c\u00e9\u20ac"
    assert scope["raw_path"] == "/scope/a%20b%2Fc%C3%A9%E2%82%AC"
    assert scope["query_string"] == "x=%2F&y=%C3%A9"  # not decoded
    # the absolute form (RFC 9112 3.2.2): the path is what follows the authority
    assert (absolute["path"], absolute["raw_path"], absolute["query_string"]) == (
        "/scope/abs x",
        "/scope/abs%20x",
        "q=1",
    )


def test_root_path_comes_from_the_option_and_prefixes_the_path(make_server) -> None:
    """--root-path is the mount point a proxy in front strips: the scope's root_path,
    and (as uvicorn and Starlette read the spec) the start of path and raw_path."""
    with make_server(root_path="/api/v1") as srv, connect(srv.address) as s:
        scope = scope_of(s, request("GET", "/scope/x%20y?q"))
    assert scope["root_path"] == "/api/v1"
    assert scope["path"] == "/api/v1/scope/x y"
    assert scope["raw_path"] == "/api/v1/scope/x%20y"
    assert scope["query_string"] == "q"


def test_state_is_a_shallow_copy_of_the_lifespan_state(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        first = scope_of(s, request("GET", "/scope"))
        (mutated,) = exchange(s, request("GET", "/state-mutate"))
        after = scope_of(s, request("GET", "/scope"))
    assert first["state"] == {"started": "yes", "items": [1, 2]}
    assert mutated.body == b"mutated"
    # a key set in one request's state is not in the next one's; a shared value is shared
    assert after["state"] == {"started": "yes", "items": [1, 2, 3]}


# -- request bodies --------------------------------------------------------------------------


def test_a_chunked_upload_arrives_piece_by_piece(make_server, fresh_control: Control) -> None:
    """Each chunk reaches receive() when it arrives, with more_body, then an empty last one."""
    post = b"POST /pieces HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(post + b"5\r\nhello\r\n")
        wait_for(lambda: len(fresh_control.seen("piece")) == 1, what="the first piece")
        s.sendall(b"6\r\n, worl\r\n")
        wait_for(lambda: len(fresh_control.seen("piece")) == 2, what="the second piece")
        s.sendall(b"1\r\nd\r\n")
        wait_for(lambda: len(fresh_control.seen("piece")) == 3, what="the third piece")
        s.sendall(b"0\r\n\r\n")
        (resp,) = exchange(s, b"")
    assert fresh_control.seen("piece") == [
        (b"hello", True),
        (b", worl", True),
        (b"d", True),
        (b"", False),
    ]
    assert resp.status == 200


def test_a_big_body_arrives_in_pieces_in_order(make_server) -> None:
    body = pattern(3 << 20, 7)
    with make_server(max_body_bytes=4 << 20) as srv, connect(srv.address) as s:
        sender = threading.Thread(target=s.sendall, args=(request("POST", "/body", body),))
        sender.start()
        resp = HttpReader(s).read_response(timeout=30)
        sender.join(10)
    info = json.loads(resp.body)
    assert info["len"] == len(body)
    assert info["sha256"] == sha256(body)  # in order: a misplaced piece cannot hash equal
    messages = info["messages"]
    assert len(messages) > 1
    assert all(more for _, more in messages[:-1]) and not messages[-1][1]
    assert sum(n for n, _ in messages) == len(body)


def test_receive_after_the_last_piece_waits_for_the_disconnect(
    make_server, fresh_control: Control
) -> None:
    """Once more_body was False, the next receive() is http.disconnect, when it comes:
    no second http.request."""
    with make_server() as srv:
        with connect(srv.address) as s:
            s.sendall(request("POST", "/disconnect", b"abc"))
            wait_for(lambda: fresh_control.seen("message"), what="the body")
            assert_silent(s, 0.2)
            assert fresh_control.seen("message") == [("http.request", b"abc", False)]
        wait_for(lambda: fresh_control.seen("disconnected"), what="http.disconnect")
    assert fresh_control.seen("message") == [
        ("http.request", b"abc", False),
        ("http.disconnect", None, None),
    ]


class CountingSender(threading.Thread):
    """sendall() in 64 KiB pieces, counting what the kernel took."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.sent = sock, data, 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            view = memoryview(self.data)
            while self.sent < len(view):
                self.sent += self.sock.send(view[self.sent : self.sent + 65536])
        except BaseException as exc:
            self.error = exc


def test_an_app_that_does_not_read_stops_the_server_reading(
    make_server, fresh_control: Control
) -> None:
    """Backpressure: while the app does not call receive(), the server stops reading the
    body (the client's send blocks); when it reads, everything arrives, in order."""
    body = pattern(48 << 20, 3)
    with make_server(max_body_bytes=64 << 20) as srv, connect(srv.address, timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        gate = fresh_control.gate("g")
        sender = CountingSender(s, request("POST", "/read-after/g", body))
        sender.start()
        assert gate.reached.wait(10)
        sent = wait_stable(lambda: sender.sent)
        read = srv.stats()["bytes_in"]
        assert sender.is_alive() and sent < len(body) // 2, (sent, len(body))
        # what the server read is bounded by its pause mark plus what was in flight
        assert read < len(body) // 4, read
        gate.open()
        resp = HttpReader(s).read_response(timeout=30)
        sender.join(10)
        assert sender.error is None
    info = json.loads(resp.body)
    assert (info["len"], info["sha256"]) == (len(body), sha256(body))
    assert len(body) > BODY_PAUSE_BYTES


# -- 100 Continue ---------------------------------------------------------------------------


def test_100_continue_is_sent_when_the_app_first_calls_receive(
    make_server, fresh_control: Control
) -> None:
    with make_server() as srv, connect(srv.address) as s:
        gate = fresh_control.gate("c")
        s.sendall(
            b"POST /read-after/c HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        assert gate.reached.wait(10)
        assert_silent(s, 0.3)  # the app has not asked for the body: no 100 yet
        gate.open()
        assert read_exactly(s, len(CONTINUE)) == CONTINUE
        s.sendall(b"hello")
        reader = HttpReader(s)
        resp = reader.read_response()
        assert json.loads(resp.body) == {"sha256": sha256(b"hello"), "len": 5}
        assert not reader.buf
        # keep-alive: the next request on the same connection
        (again,) = exchange(s, request("GET", "/no-read"))
        assert again.body == b"not read"


@pytest.mark.parametrize("later", [False, True], ids=["at-once", "after-a-wait"])
def test_no_100_continue_for_an_app_that_answers_without_reading(make_server, later: bool) -> None:
    """The response goes out alone, says it closes, and the connection closes: the unread
    body is never framed as requests (RFC 9110 10.1.1)."""
    target = b"/no-read?sleep=0" if later else b"/no-read"  # sleep: answered from the loop
    smuggled = request("GET", "/scope")
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(
            b"POST " + target + b" HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(smuggled)
        )
        expected = whole(b"HTTP/1.1 200 OK", b"not read", close=True)
        assert read_expected(s, expected) == expected
        # a client that sends the body anyway: never read as a request
        s.sendall(smuggled)
        assert read_until_eof(s) == b""
        stats = srv.stats()
    assert stats["requests"] == 1


def test_100_continue_for_an_app_that_reads_in_its_first_step(make_server) -> None:
    """receive() in the step that saw the head (inside that read): the 100 goes out after
    the read, once it is known no body byte came with the head."""
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        assert read_exactly(s, len(CONTINUE)) == CONTINUE
        s.sendall(b"hello")
        expected = whole(b"HTTP/1.1 200 OK", b"hello")
        assert read_expected(s, expected) == expected
        assert_silent(s, 0.2)


def test_no_100_continue_when_the_body_came_with_the_head(make_server) -> None:
    """A client that did not wait: the body is there before the app asks for it, so
    no 100 (as for the synchronous apps)."""
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        expected = whole(b"HTTP/1.1 200 OK", b"hello")
        assert read_expected(s, expected) == expected
        assert_silent(s, 0.2)


@pytest.mark.parametrize("later", [False, True], ids=["at-once", "after-a-wait"])
def test_a_body_answered_early_is_not_read_as_requests(make_server, later: bool) -> None:
    """An app that answers a POST without reading its body, on a keep-alive connection
    that already served a request: the body, which holds a request, is never run.

    At once (in the step that saw the head, before the body was framed): the response
    says it closes, and the connection closes.  After a wait (the body, sent with the
    head, was framed meanwhile and dropped): the connection goes on."""
    smuggled = request("GET", "/scope")
    target = "/no-read?sleep=0" if later else "/no-read"
    with make_server() as srv, connect(srv.address) as s:
        (first,) = exchange(s, request("GET", "/no-read"))
        assert first.body == b"not read"
        s.sendall(request("POST", target, smuggled))
        if later:
            expected = whole(b"HTTP/1.1 200 OK", b"not read")
            assert read_expected(s, expected) == expected
            (again,) = exchange(s, request("GET", "/no-read"))
            assert again.body == b"not read"
            s.shutdown(socket.SHUT_WR)
            assert read_until_eof(s) == b""
        else:
            assert norm(read_until_eof(s)) == whole(b"HTTP/1.1 200 OK", b"not read", close=True)
        stats = srv.stats()
    assert stats["requests"] == (3 if later else 2)


def test_a_body_answered_before_it_arrives_on_a_second_request_closes(
    make_server, fresh_control: Control
) -> None:
    """The second request of a connection is answered (after a wait) before its body
    arrives: the response says it closes, and the body that follows is not a second run
    of the app (the framing's "request done" is per request)."""
    with make_server() as srv, connect(srv.address) as s:
        (first,) = exchange(s, request("GET", "/no-read"))
        assert first.body == b"not read"
        s.sendall(b"POST /no-read?sleep=0 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        expected = whole(b"HTTP/1.1 200 OK", b"not read", close=True)
        assert read_expected(s, expected) == expected
        with contextlib.suppress(OSError):
            s.sendall(b"hello")
        assert read_until_eof(s) == b""
        stats = srv.stats()
    assert stats["requests"] == 2


def test_a_request_without_a_body_gets_one_empty_message(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        get, head_request, empty_post = exchange(
            s,
            request("GET", "/body") + request("DELETE", "/body") + request("POST", "/body"),
            3,
        )
    for resp in (get, head_request, empty_post):
        info = json.loads(resp.body)
        assert info["messages"] == [[0, False]], info
        assert info["sha256"] == sha256(b"")


# -- streamed responses ----------------------------------------------------------------------


def test_a_streamed_response_is_chunked_on_http_11(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", "/stream?n=3&size=5") + request("GET", "/stream?n=2&size=1"))
        expected = (
            head(b"HTTP/1.1 200 OK", b"content-type: text/plain", b"Transfer-Encoding: chunked")
            + b"5\r\n00000\r\n5\r\n11111\r\n5\r\n22222\r\n0\r\n\r\n"
        )
        second = (
            head(b"HTTP/1.1 200 OK", b"content-type: text/plain", b"Transfer-Encoding: chunked")
            + b"1\r\n0\r\n1\r\n1\r\n0\r\n\r\n"
        )
        assert read_expected(s, expected + second) == expected + second
        assert_silent(s, 0.1)


def test_a_streamed_response_with_content_length_is_sent_as_is(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", "/stream?n=3&size=4&cl=") + request("GET", "/no-read"))
        expected = (
            head(b"HTTP/1.1 200 OK", b"content-type: text/plain", b"content-length: 12")
            + b"000011112222"
        )
        then = whole(b"HTTP/1.1 200 OK", b"not read")
        assert read_expected(s, expected + then) == expected + then


@pytest.mark.parametrize("declared", ["13", "11"], ids=["short", "long"])
def test_a_streamed_body_that_breaks_its_content_length_closes(make_server, declared) -> None:
    """Fewer bytes than declared: the peer could not frame what follows, so the
    connection closes after them; more: the extra piece is refused, then the close."""
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", f"/stream?n=3&size=4&cl={declared}"))
        data = read_until_eof(s)
        stats = srv.stats()
    start = head(
        b"HTTP/1.1 200 OK", b"content-type: text/plain", b"content-length: " + declared.encode()
    )
    assert norm(data) == start + (b"000011112222" if declared == "13" else b"00001111")
    assert stats["app_errors"] == 1


def test_a_streamed_response_to_http_10_ends_with_the_close(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(b"GET /stream?n=2&size=3 HTTP/1.0\r\n\r\n")
        data = read_until_eof(s)
    assert norm(data) == (
        head(b"HTTP/1.1 200 OK", b"content-type: text/plain", b"Connection: close") + b"000111"
    )


def test_head_responses_have_no_body(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(
            request("HEAD", "/stream?n=3&size=5")
            + request("HEAD", "/stream?n=3&size=5&cl=")
            + request("HEAD", "/no-read")
            + request("GET", "/no-read")
        )
        expected = (
            head(b"HTTP/1.1 200 OK", b"content-type: text/plain", b"Transfer-Encoding: chunked")
            + head(b"HTTP/1.1 200 OK", b"content-type: text/plain", b"content-length: 15")
            + head(b"HTTP/1.1 200 OK", b"content-type: text/plain", b"content-length: 8")
            + whole(b"HTTP/1.1 200 OK", b"not read")
        )
        assert read_expected(s, expected) == expected
        assert_silent(s, 0.1)


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_204_and_304_have_no_body(make_server, status: int, stream: bool) -> None:
    target = f"/status/{status}" + ("?stream" if stream else "")
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", target) + request("GET", "/no-read"))
        expected = head(
            b"HTTP/1.1 %d %s" % (status, {204: b"No Content", 304: b"Not Modified"}[status])
        )
        then = whole(b"HTTP/1.1 200 OK", b"not read")
        assert read_expected(s, expected + then) == expected + then


# -- send() and the drain ----------------------------------------------------------------------


def test_send_waits_for_the_drain_of_a_client_that_does_not_read(
    make_server, fresh_control: Control
) -> None:
    """A multi-MB response streamed in a tight loop to a client that reads nothing: send()
    blocks (the app's progress stops near the high-water mark, not at the end); it goes on,
    and completes, as the client reads."""
    total = 24 << 20
    with make_server() as srv, connect(srv.address, rcvbuf=65536) as s:
        s.sendall(request("GET", "/big?mb=24"))
        wait_for(lambda: fresh_control.progress.get("big", 0) > 0, what="the stream to start")
        stuck = wait_stable(lambda: fresh_control.progress.get("big", 0))
        assert stuck < total // 4, stuck
        assert not fresh_control.seen("big.done")
        reader = HttpReader(s)
        resp = reader.read_response(timeout=60)
        assert len(resp.body) == total and resp.body.count(b"x") == total
        wait_for(lambda: fresh_control.seen("big.done"), what="the app to finish")
    assert total > OUTPUT_HIGH_WATER_BYTES


# -- http.disconnect ---------------------------------------------------------------------------


@pytest.mark.parametrize("partial", [False, True], ids=["body-read", "mid-body"])
def test_disconnect_reaches_an_app_waiting_in_receive(
    make_server, fresh_control: Control, partial: bool
) -> None:
    data = (
        b"POST /disconnect HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"
        if partial
        else request("GET", "/disconnect")
    )
    with make_server() as srv:
        with connect(srv.address) as s:
            s.sendall(data)
            wait_for(lambda: fresh_control.seen("message"), what="the first message")
        wait_for(lambda: fresh_control.seen("disconnected"), what="http.disconnect")
        first = (b"abc", True) if partial else (b"", False)
        assert fresh_control.seen("message") == [
            ("http.request", *first),
            ("http.disconnect", None, None),
        ]


def test_receive_after_the_response_is_a_disconnect(make_server, fresh_control: Control) -> None:
    with make_server() as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("GET", "/after-response"))
        assert resp.body == b"done"
        wait_for(lambda: fresh_control.seen("after-response"), what="the app's receive()")
        assert fresh_control.seen("after-response") == [({"type": "http.disconnect"},)]
        (again,) = exchange(s, request("GET", "/no-read"))  # the connection goes on
        assert again.body == b"not read"


@pytest.mark.parametrize("what", ["body", "trailers"])
def test_send_after_the_response_completed_raises(
    make_server, fresh_control: Control, what: str
) -> None:
    """A body message after the last one, or trailers (no trailers extension in the
    scope: a clean refusal): send() raises RuntimeError, the response on the wire is
    the complete one alone, and the connection goes on."""
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", f"/send-after-complete?what={what}"))
        # no content-length from the app: chunked, as uvicorn frames it
        expected = (
            head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + b"8\r\ncomplete\r\n0\r\n\r\n"
        )
        assert read_expected(s, expected) == expected
        wait_for(lambda: fresh_control.seen("late-send"), what="the late send()")
        message = (
            "the response is already complete"
            if what == "body"
            else "expected 'http.response.body', got 'http.response.trailers'"
        )
        assert fresh_control.seen("late-send") == [(message,)]
        (again,) = exchange(s, request("GET", "/no-read"))
        assert again.body == b"not read"
        assert_silent(s, 0.1)
    assert "extensions" not in scope_of_once(srv_factory=make_server)


def scope_of_once(srv_factory: Any) -> dict[str, Any]:
    with srv_factory() as srv, connect(srv.address) as s:
        return scope_of(s, request("GET", "/scope"))


def test_send_after_the_client_left_raises_an_oserror(make_server, fresh_control: Control) -> None:
    with make_server() as srv:
        with connect(srv.address) as s:
            s.sendall(request("GET", "/send-after-disconnect"))
            expected = head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + b"5\r\nfirst\r\n"
            assert read_expected(s, expected) == expected
        wait_for(lambda: fresh_control.seen("send-raised"), what="send() after the disconnect")
    assert fresh_control.seen("send-raised") == [("ClientDisconnected", True)]


# -- apps that fail ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/raise-before",
        "/raise-before?sleep=0",
        "/raise-after-start",
        "/no-response",
        "/no-response?sleep=0",
        "/double-start",
        "/body-before-start",
    ],
)
def test_an_app_that_fails_before_its_response_gets_a_500_and_a_close(
    make_server, target: str, caplog
) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", target) + request("GET", "/no-read"))
        data = read_until_eof(s)
        stats = srv.stats()
    assert norm(data) == APP_500
    assert (stats["requests"], stats["app_errors"], stats["client_errors"]) == (1, 1, 0)


@pytest.mark.parametrize("sleep", ["", "?sleep=0"], ids=["at-once", "after-a-wait"])
def test_an_app_that_fails_mid_stream_gets_its_connection_closed(make_server, sleep) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", "/raise-mid-stream" + sleep) + request("GET", "/no-read"))
        data = read_until_eof(s)
        stats = srv.stats()
    # what was sent stays sent; no last chunk, so the client sees a truncated body
    assert (
        norm(data) == head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + b"7\r\npartial\r\n"
    )
    assert stats["app_errors"] == 1


def test_a_start_after_the_body_began_closes(make_server, fresh_control: Control) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", "/start-after-body"))
        data = read_until_eof(s)
    assert (
        norm(data) == head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + b"7\r\npartial\r\n"
    )
    assert fresh_control.seen("refused") == [
        ("expected 'http.response.body', got 'http.response.start'",)
    ]


# -- pipelining, keep-alive ------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_while_apps_suspend(make_server) -> None:
    requests = [
        request("GET", "/p/a"),
        request("GET", "/p/b?sleep=0.02"),
        request("GET", "/p/c"),
        request("POST", "/p/d?sleep=0", b"body-d"),
        request("GET", "/p/e?sleep=0.01"),
        request("POST", "/p/f", b"body-f"),
    ]
    names = [b"a", b"b", b"c", b"d:body-d", b"e", b"f:body-f"]
    expected = b"".join(whole(b"HTTP/1.1 200 OK", name) for name in names)
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(b"".join(requests))
        assert read_expected(s, expected) == expected
        assert_silent(s, 0.1)
        assert srv.stats()["requests"] == len(requests)


def test_two_pipelined_requests_then_shut_wr_are_both_answered(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(request("GET", "/p/a?sleep=0.02") + request("GET", "/p/b?sleep=0"))
        s.shutdown(socket.SHUT_WR)
        data = read_until_eof(s)
    assert norm(data) == whole(b"HTTP/1.1 200 OK", b"a") + whole(b"HTTP/1.1 200 OK", b"b")


def test_keep_alive_serves_many_requests_on_one_connection(make_server) -> None:
    with make_server() as srv, connect(srv.address) as s:
        for i in range(20):
            target = f"/p/n{i}" + ("?sleep=0" if i % 2 else "")
            (resp,) = exchange(s, request("GET", target))
            assert resp.body == b"n%d" % i
        # counted once written: the client may read it first
        wait_for(lambda: srv.stats()["requests"] == 20, what="20 requests counted")
        assert srv.stats()["accepted"] == 1


# -- timeouts and limits, as for the other apps -------------------------------------------


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(make_server) -> None:
    with make_server(timeout_keep_alive=0.3) as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("GET", "/p/x?sleep=0"))
        assert resp.body == b"x"
        t0 = time.monotonic()
        assert read_until_eof(s) == b""
        assert time.monotonic() - t0 >= 0.25


def test_a_stalled_body_gets_408_and_the_app_a_disconnect(
    make_server, fresh_control: Control
) -> None:
    with make_server(timeout_read=0.3) as srv, connect(srv.address) as s:
        s.sendall(b"POST /disconnect HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        read_error_then_eof(s, 408, "Request Timeout")
        wait_for(lambda: fresh_control.seen("disconnected"), what="http.disconnect")
        stats = srv.stats()
    assert stats["timeouts"] == 1


def test_an_app_working_longer_than_the_timeouts_is_not_cut(make_server) -> None:
    with make_server(timeout_read=0.3, timeout_keep_alive=0.3) as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("GET", "/sleep?s=1.2"))
        assert resp.body == b"slept"
        stats = srv.stats()
    assert stats["timeouts"] == 0


def test_a_head_that_trickles_gets_408(make_server) -> None:
    with make_server(timeout_header=0.5, timeout_read=5) as srv, connect(srv.address) as s:
        deadline = time.monotonic() + 10
        s.sendall(b"GET /p/x HTTP/1.1\r\n")
        try:  # a header line every 50 ms (each within the read timeout) until the answer
            while time.monotonic() < deadline and not select.select([s], [], [], 0.05)[0]:
                s.sendall(b"X: y\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() < deadline, "no answer to a trickling head"
        reader = HttpReader(s)
        resp = reader.read_response(timeout=10)
    assert resp.status == 408 and resp.closes


def test_a_body_over_the_limit_is_413_before_the_app(make_server, fresh_control: Control) -> None:
    with make_server(max_body_bytes=100) as srv, connect(srv.address) as s:
        s.sendall(request("POST", "/disconnect", b"x" * 101))
        read_error_then_eof(s, 413, HTTPStatus(413).phrase)
    assert fresh_control.http_events() == []  # the app never ran


def test_a_chunked_body_over_the_limit_is_413_and_the_app_hears_of_it(
    make_server, fresh_control: Control
) -> None:
    with make_server(max_body_bytes=100) as srv, connect(srv.address) as s:
        s.sendall(b"POST /disconnect HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        wait_for(lambda: fresh_control.seen("waiting"), what="the app")
        s.sendall(b"65\r\n" + b"x" * 101 + b"\r\n0\r\n\r\n")
        read_error_then_eof(s, 413, HTTPStatus(413).phrase)
        wait_for(lambda: fresh_control.seen("disconnected"), what="http.disconnect")
        stats = srv.stats()
    assert (stats["client_errors"], stats["app_errors"]) == (1, 0)


def test_a_head_over_the_limit_is_431(make_server) -> None:
    with make_server(max_header_bytes=1024) as srv, connect(srv.address) as s:
        s.sendall(b"GET /p/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
        read_error_then_eof(s, 431, "Request Header Fields Too Large")


def test_a_malformed_request_is_400(make_server, fresh_control: Control) -> None:
    with make_server() as srv, connect(srv.address) as s:
        s.sendall(b"GET /p/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!")
        read_error_then_eof(s, 400, "Bad Request")
    assert fresh_control.http_events() == []
