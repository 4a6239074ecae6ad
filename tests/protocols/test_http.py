"""HttpConnection: HTTP/1.1 bytes in, bytes out, no sockets, on both parsers.

Every test runs once with H11Connection and once with HttptoolsConnection
(the ``http_parser`` fixture), and expects the same bytes from both.  Most
tests go through `check`, which feeds the input whole, one byte at a
time, cut in two at every offset and in thirds, and asserts the exact output
bytes and end state for each.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocols.http import common as http_common
from server.protocols.http.common import Counters, HttpLimits, Request, Response
from tests.protocols import helpers
from tests.protocols.helpers import (
    APP_ERROR_500,
    CONTINUE,
    DATE_LINE,
    EPOCH,
    RAW_500,
    SERVER_LINE,
    cached_date,
    check,
    chunkings,
    connect,
    error_response,
    errors_of,
    feed,
    http_response,
    response_cache,
)

pytestmark = pytest.mark.usefixtures("http_parser")

# -- a test app and request/response builders ---------------------------------


def app(request: Request) -> Response:
    """Answers with what it saw; ``/boom`` raises."""
    if request.target == b"/boom":
        raise RuntimeError("boom")
    content = b"%s %s HTTP/%s\n%s" % (
        request.method,
        request.target,
        request.http_version,
        request.body,
    )
    return Response(
        200, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(content))], content
    )


def answer(
    method: bytes, target: bytes, body: bytes = b"", *extra: bytes, version: bytes = b"1.1"
) -> bytes:
    """The exact bytes HttpConnection sends for `app`'s answer; `extra`: header lines h11 adds."""
    content = b"%s %s HTTP/%s\n%s" % (method, target, version, body)
    return http_response(
        b"HTTP/1.1 200 OK",
        b"content-type: text/plain",
        b"content-length: %d" % len(content),
        SERVER_LINE,
        DATE_LINE,
        *extra,
        body=b"" if method == b"HEAD" else content,
    )


def get(target: bytes = b"/", *headers: bytes, method: bytes = b"GET") -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return b"%s %s HTTP/1.1\r\nHost: example.com\r\n%s\r\n" % (method, target, lines)


def post_head(target: bytes, length: int, *headers: bytes) -> bytes:
    return get(target, b"Content-Length: %d" % length, *headers, method=b"POST")


def post(target: bytes, body: bytes, *headers: bytes) -> bytes:
    return post_head(target, len(body), *headers) + body


def chunked_head(target: bytes, *headers: bytes) -> bytes:
    return get(target, b"Transfer-Encoding: chunked", *headers, method=b"POST")


def chunked_body(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def ends(*requests: bytes) -> list[int]:
    """Offsets of the last byte of each request when they are sent back to back."""
    offsets, total = [], 0
    for r in requests:
        total += len(r)
        offsets.append(total - 1)
    return offsets


GET = get()
GET_ANSWER = answer(b"GET", b"/")


# -- the date header ----------------------------------------------------------


def test_date_header_is_formatted_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.5]
    monkeypatch.setattr(http_common, "time", SimpleNamespace(time=lambda: now[0]))
    date = http_common.DateHeader()
    first = date.get()
    assert first == (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT")
    now[0] = 0.99
    assert date.get() is first  # cached within the second
    now[0] = 1.0
    assert date.get() == (b"date", b"Thu, 01 Jan 1970 00:00:01 GMT")


def test_pinned_clock_gives_the_rfc_example_date() -> None:
    assert http_common.date_header.get() == (b"date", DATE_LINE[6:])


# -- the response cache -------------------------------------------------------


def test_a_repeated_response_reuses_one_validated_event() -> None:
    first, _ = connect(app)
    second, _ = connect(app)
    assert first.receive_data(GET) == GET_ANSWER
    (event,) = response_cache().entries.values()
    assert second.receive_data(GET) == GET_ANSWER
    assert list(response_cache().entries.values()) == [event]
    assert first.receive_data(get(b"/other")) == answer(b"GET", b"/other")
    assert len(response_cache().entries) == 2  # another content-length


def test_the_response_cache_is_emptied_when_the_date_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn, _ = connect(app)
    assert conn.receive_data(GET) == GET_ANSWER
    monkeypatch.setattr(http_common, "time", SimpleNamespace(time=lambda: EPOCH + 1.0))
    later = GET_ANSWER.replace(DATE_LINE, b"date: Sun, 06 Nov 1994 08:49:38 GMT")
    assert conn.receive_data(GET) == later
    (event,) = response_cache().entries.values()
    assert cached_date(event) == b"Sun, 06 Nov 1994 08:49:38 GMT"


def test_unhashable_app_headers_are_answered_and_not_cached() -> None:
    def listy(request: Request) -> Response:
        return Response(200, [[b"content-length", b"2"]], b"ok")  # type: ignore[list-item]

    conn, _ = connect(listy)
    expected = http_response(
        b"HTTP/1.1 200 OK", b"content-length: 2", SERVER_LINE, DATE_LINE, body=b"ok"
    )
    assert conn.receive_data(GET) == expected
    assert conn.receive_data(GET) == expected
    assert response_cache().entries == {}


def test_the_response_cache_is_bounded() -> None:
    def tagged(request: Request) -> Response:
        return Response(204, [(b"x-target", request.target)], b"")

    def expected(target: bytes) -> bytes:
        return http_response(
            b"HTTP/1.1 204 No Content", b"x-target: " + target, SERVER_LINE, DATE_LINE
        )

    conn, _ = connect(tagged)
    n = http_common.RESPONSE_CACHE_MAX + 44
    for i in range(n):
        assert conn.receive_data(get(b"/%d" % i)) == expected(b"/%d" % i)
    assert len(response_cache().entries) == http_common.RESPONSE_CACHE_MAX
    last = b"/%d" % (n - 1)  # not kept, still answered
    assert conn.receive_data(get(last)) == expected(last)


# -- keep-alive and pipelining ------------------------------------------------


def test_get_is_answered_and_the_connection_kept_alive() -> None:
    expected = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/plain\r\n"
        b"content-length: 15\r\n"
        b"server: ringserve\r\n"
        b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"\r\n"
        b"GET / HTTP/1.1\n"
    )
    assert expected == GET_ANSWER
    check(
        app,
        GET,
        expected,
        should_close=False,
        requests=1,
        errors=0,
        emitted_at=ends(GET),  # nothing before the request is complete
    )


def test_app_sees_the_request() -> None:
    seen: list[Request] = []

    def recorder(request: Request) -> Response:
        seen.append(request)
        return Response(204)

    data = get(b"/p/a?q=1&r=%20", b"X-Custom: Some Value", b"x-custom: again")
    data += post(b"/up", b"body bytes", b"Content-Type: text/plain")
    data += b"GET /old HTTP/1.0\r\n\r\n"
    for name, chunks in chunkings(data, max_cuts=40):
        seen.clear()
        fed = feed(recorder, chunks, name=name)
        assert fed.conn.should_close is True  # the HTTP/1.0 request closes
        assert [(r.method, r.target, r.http_version, r.body) for r in seen] == [
            (b"GET", b"/p/a?q=1&r=%20", b"1.1", b""),
            (b"POST", b"/up", b"1.1", b"body bytes"),
            (b"GET", b"/old", b"1.0", b""),
        ], name
        # h11 lowercases header names and keeps values and repeats as sent.
        assert list(seen[0].headers) == [
            (b"host", b"example.com"),
            (b"x-custom", b"Some Value"),
            (b"x-custom", b"again"),
        ]
        assert list(seen[1].headers) == [
            (b"host", b"example.com"),
            (b"content-length", b"10"),
            (b"content-type", b"text/plain"),
        ]
        assert list(seen[2].headers) == []


def test_two_requests_on_one_keepalive_connection() -> None:
    conn, counters = connect(app)
    assert conn.receive_data(get(b"/one")) == answer(b"GET", b"/one")
    assert conn.should_close is False
    assert counters.requests == 1
    assert conn.receive_data(post(b"/two", b"2")) == answer(b"POST", b"/two", b"2")
    assert conn.should_close is False
    assert (counters.requests, errors_of(counters)) == (2, 0)


PIPELINE = [
    get(b"/a"),
    post(b"/b", b"hello"),
    chunked_head(b"/c") + chunked_body(b"wor", b"ld"),
    get(b"/d", method=b"HEAD"),
    get(b"/e"),
]
PIPELINE_ANSWERS = [
    answer(b"GET", b"/a"),
    answer(b"POST", b"/b", b"hello"),
    answer(b"POST", b"/c", b"world"),
    answer(b"HEAD", b"/d"),
    answer(b"GET", b"/e"),
]


def test_pipelined_requests_are_answered_in_order() -> None:
    check(
        app,
        b"".join(PIPELINE),
        b"".join(PIPELINE_ANSWERS),
        should_close=False,
        requests=5,
        errors=0,
        emitted_at=ends(*PIPELINE),
    )


def test_pipelined_leftover_waits_for_the_rest() -> None:
    second = post(b"/b", b"hello")
    for cut in range(1, len(second)):
        conn, counters = connect(app)
        assert conn.receive_data(GET + second[:cut]) == GET_ANSWER
        assert conn.busy is True  # part of the next request is in
        assert conn.should_close is False
        assert conn.receive_data(second[cut:]) == answer(b"POST", b"/b", b"hello")
        assert counters.requests == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(b"".join(PIPELINE))), max_size=10))
def test_pipeline_cut_anywhere_gives_the_same_bytes(cuts: list[int]) -> None:
    data = b"".join(PIPELINE)
    bounds = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    fed = feed(app, chunks)
    assert fed.out == b"".join(PIPELINE_ANSWERS)
    assert (fed.counters.requests, errors_of(fed.counters)) == (5, 0)


# -- closing: HTTP/1.0, Connection: close -------------------------------------


def test_http10_request_is_answered_then_closed() -> None:
    request = b"GET /old HTTP/1.0\r\n\r\n"
    expected = answer(b"GET", b"/old", b"", b"Connection: close", version=b"1.0")
    check(app, request, expected, should_close=True, busy=False, requests=1, errors=0)
    # A request pipelined after it is never read.
    check(app, request + GET, expected, should_close=True, busy=False, requests=1)


def test_http10_keepalive_is_not_supported() -> None:
    request = b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    expected = answer(b"GET", b"/old", b"", b"Connection: close", version=b"1.0")
    check(app, request, expected, should_close=True, busy=False, requests=1)


def test_connection_close_request() -> None:
    request = get(b"/bye", b"Connection: close")
    expected = answer(b"GET", b"/bye", b"", b"Connection: close")
    check(app, request, expected, should_close=True, busy=False, requests=1, errors=0)
    check(app, request + GET, expected, should_close=True, busy=False, requests=1)


# -- request bodies -----------------------------------------------------------


def test_content_length_body() -> None:
    request = post(b"/up", b"hello world", b"Content-Type: text/plain")
    check(
        app,
        request,
        answer(b"POST", b"/up", b"hello world"),
        should_close=False,
        requests=1,
        emitted_at=ends(request),
    )


def test_empty_content_length_body() -> None:
    check(app, post(b"/up", b""), answer(b"POST", b"/up"), should_close=False, requests=1)


def test_chunked_body_with_extension_and_trailer() -> None:
    body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    request = chunked_head(b"/up") + body
    check(
        app,
        request,
        answer(b"POST", b"/up", b"hello world"),
        should_close=False,
        requests=1,
        errors=0,
        emitted_at=ends(request),
    )


# -- Expect: 100-continue -----------------------------------------------------

EXPECT_HEAD = post_head(b"/up", 5, b"Expect: 100-continue")
EXPECT_ANSWER = answer(b"POST", b"/up", b"hello")


def test_100_continue_after_the_head_then_the_response() -> None:
    conn, counters = connect(app)
    assert conn.receive_data(EXPECT_HEAD) == CONTINUE
    assert (conn.busy, conn.should_close) == (True, False)
    assert conn.receive_data(b"hel") == b""  # sent once only
    assert conn.receive_data(b"lo") == EXPECT_ANSWER
    assert (counters.requests, errors_of(counters)) == (1, 0)


def test_100_continue_only_when_a_read_ends_with_the_head() -> None:
    """A client that already sends its body is not told to go on."""
    data = EXPECT_HEAD + b"hello"
    for name, chunks in chunkings(data):
        fed = feed(app, chunks, name=name)
        head_alone = any(b"".join(chunks[: i + 1]) == EXPECT_HEAD for i in range(len(chunks) - 1))
        assert fed.out == (CONTINUE if head_alone else b"") + EXPECT_ANSWER, name
        if name == "bytewise":
            assert [i for i, o in enumerate(fed.outputs) if o] == [
                len(EXPECT_HEAD) - 1,
                *ends(data),
            ]
            assert fed.outputs[len(EXPECT_HEAD) - 1] == CONTINUE


def test_100_continue_with_a_chunked_body() -> None:
    conn, _ = connect(app)
    assert conn.receive_data(chunked_head(b"/up", b"Expect: 100-continue")) == CONTINUE
    assert conn.receive_data(chunked_body(b"he", b"llo")) == EXPECT_ANSWER


def test_100_continue_at_exactly_the_body_limit() -> None:
    conn, _ = connect(app, HttpLimits(max_body_bytes=5))
    assert conn.receive_data(EXPECT_HEAD) == CONTINUE
    assert conn.receive_data(b"hello") == EXPECT_ANSWER


def test_no_100_continue_when_content_length_exceeds_the_limit() -> None:
    limits = HttpLimits(max_body_bytes=4)
    conn, counters = connect(app, limits)
    assert conn.receive_data(EXPECT_HEAD) == error_response(413)
    assert (conn.should_close, conn.busy) == (True, False)
    assert (counters.requests, errors_of(counters)) == (0, 1)
    assert conn.receive_data(b"hello") == b""
    check(
        app,
        EXPECT_HEAD + b"hello",
        error_response(413),
        should_close=True,
        busy=False,
        requests=0,
        errors=1,
        emitted_at=[len(EXPECT_HEAD) - 1],
        limits=limits,
    )


def test_100_continue_in_a_pipeline() -> None:
    conn, counters = connect(app)
    assert conn.receive_data(GET + EXPECT_HEAD) == GET_ANSWER + CONTINUE
    assert conn.receive_data(b"hello") == EXPECT_ANSWER
    assert counters.requests == 2


# -- HEAD ---------------------------------------------------------------------


def test_head_sends_the_get_headers_and_no_body() -> None:
    request = get(b"/h", method=b"HEAD")
    expected = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/plain\r\n"
        b"content-length: 17\r\n"  # len(b"HEAD /h HTTP/1.1\n"): the app's body, not sent
        b"server: ringserve\r\n"
        b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"\r\n"
    )
    check(app, request, expected, should_close=False, requests=1)
    # The next response follows at once: no body bytes went out.
    check(app, request + GET, expected + GET_ANSWER, should_close=False, requests=2)


# -- malformed requests -------------------------------------------------------

MALFORMED = {
    "not http": (b"garbage\r\n\r\n", 400),
    "binary junk": (b"\x00\x01\x02\r\n\r\n", 400),
    "no Host in HTTP/1.1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    "NUL in a value": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    "bad content-length": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400),
    "conflicting content-lengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    "bad chunk size": (chunked_head(b"/") + b"zz\r\nhello\r\n0\r\n\r\n", 400),
    # llhttp refuses a request whose codings do not end in chunked (RFC 9112
    # 6.3: 400), where h11 would answer 501; see test_parsers_agree.py.
    "unknown transfer-coding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    "unknown transfer-coding before chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
}


@pytest.mark.parametrize(("data", "status"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_an_error_and_a_close(data: bytes, status: int) -> None:
    check(
        app,
        data + GET,  # whatever follows is never read
        error_response(status),
        should_close=True,
        busy=False,
        requests=0,
        errors=1,
    )


def test_malformed_request_after_a_good_one() -> None:
    check(
        app,
        GET + b"garbage\r\n\r\n",
        GET_ANSWER + error_response(400),
        should_close=True,
        busy=False,
        requests=1,
        errors=1,
    )


# -- limits: 431, 413 ---------------------------------------------------------

SMALL_HEADERS = HttpLimits(max_header_bytes=256)
BIG_HEADER = b"X-Big: " + b"a" * 300


def test_header_block_too_large_431() -> None:
    """The head grows past max_header_bytes before it is complete: 431."""
    head_start = b"GET / HTTP/1.1\r\nHost: example.com\r\n" + BIG_HEADER
    check(
        app,
        head_start,
        error_response(431),
        should_close=True,
        busy=False,
        requests=0,
        errors=1,
        emitted_at=[256],  # the first byte over the limit
        limits=SMALL_HEADERS,
    )


def test_complete_oversized_head_in_one_read_431() -> None:
    """A complete head over max_header_bytes in one read gets 431, not a 200.

    h11 checks max_incomplete_event_size only while the event is incomplete,
    so a head that arrives whole would get past it if the limit were left to h11.
    """
    request = get(b"/", BIG_HEADER)
    assert len(request) > SMALL_HEADERS.max_header_bytes
    check(
        app,
        request,
        error_response(431),
        should_close=True,
        busy=False,
        requests=0,
        errors=1,
        limits=SMALL_HEADERS,
    )


SMALL_BODY = HttpLimits(max_body_bytes=10)


def test_content_length_over_the_limit_413_before_the_body() -> None:
    head = post_head(b"/up", 11)
    conn, counters = connect(app, SMALL_BODY)
    assert conn.receive_data(head) == error_response(413)  # no body byte needed
    assert (conn.should_close, conn.busy, counters.requests, errors_of(counters)) == (
        True,
        False,
        0,
        1,
    )
    check(
        app,
        head + b"x" * 11 + GET,
        error_response(413),
        should_close=True,
        busy=False,
        requests=0,
        errors=1,
        emitted_at=[len(head) - 1],
        limits=SMALL_BODY,
    )


def test_content_length_at_the_limit_is_served() -> None:
    check(
        app,
        post(b"/up", b"x" * 10),
        answer(b"POST", b"/up", b"x" * 10),
        should_close=False,
        requests=1,
        errors=0,
        limits=SMALL_BODY,
    )


def test_chunked_body_over_the_limit_413_while_counting() -> None:
    head = chunked_head(b"/up")
    data = head + chunked_body(b"123456", b"78901") + GET
    check(
        app,
        data,
        error_response(413),
        should_close=True,
        busy=False,
        requests=0,
        errors=1,
        # one byte at a time, h11 hands over each body byte: the 11th is too many
        emitted_at=[len(head + b"6\r\n123456\r\n5\r\n7890")],
        limits=SMALL_BODY,
    )


def test_chunked_body_at_the_limit_is_served() -> None:
    check(
        app,
        chunked_head(b"/up") + chunked_body(b"123456", b"7890"),
        answer(b"POST", b"/up", b"1234567890"),
        should_close=False,
        requests=1,
        errors=0,
        limits=SMALL_BODY,
    )


def test_transfer_encoding_with_content_length_closes_after_the_response() -> None:
    """RFC 9112 6.1: the server closes after a request with both TE and CL.

    h11 frames it by Transfer-Encoding and would keep the connection open, so
    the pipelined request after it (a smuggling vector) would be answered too.
    """
    smuggler = (
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    fed = feed(app, [smuggler + get(b"/smuggled")])
    assert fed.out.count(b"HTTP/1.1 ") == 1
    assert b"/smuggled" not in fed.out
    assert fed.conn.should_close is True


# -- busy, timeouts, stop_keepalive -------------------------------------------

PARTIAL = {
    "partial head": b"GET / HTTP/1.1\r\nHost: exa",
    "head without the blank line": b"GET / HTTP/1.1\r\nHost: example.com\r\n",
    "partial content-length body": post_head(b"/up", 5) + b"hel",
    "head, body not started": post_head(b"/up", 5),
    "waiting after 100 Continue": EXPECT_HEAD,
    "partial chunked body": chunked_head(b"/up") + b"5\r\nhel",
    "pipelined leftover": GET + b"GET /next HTT",
}


def test_fresh_connection_is_idle() -> None:
    conn, _ = connect(app)
    assert (conn.busy, conn.should_close) == (False, False)


@pytest.mark.parametrize("data", PARTIAL.values(), ids=PARTIAL.keys())
def test_partial_request_is_busy(data: bytes) -> None:
    for name, chunks in chunkings(data, max_cuts=20):
        fed = feed(app, chunks, name=name)
        assert (fed.conn.busy, fed.conn.should_close) == (True, False), name


@pytest.mark.parametrize("data", PARTIAL.values(), ids=PARTIAL.keys())
def test_timed_out_while_busy_408_and_close(data: bytes) -> None:
    conn, counters = connect(app)
    before = conn.receive_data(data)
    requests = counters.requests
    assert conn.busy is True
    assert conn.timed_out() == error_response(408)
    assert conn.should_close is True
    assert (counters.requests, errors_of(counters)) == (requests, 1)
    assert conn.receive_data(b"lo" + GET) == b""  # nothing more is read
    assert before in (b"", CONTINUE, GET_ANSWER)


def test_pending_head_numbers_the_head_being_read() -> None:
    conn, _ = connect(app)
    assert conn.pending_head() == 0  # nothing received
    assert conn.receive_data(GET[:7]) == b""
    assert conn.pending_head() == 1
    assert conn.receive_data(GET[7:]) == GET_ANSWER
    assert conn.pending_head() == 0  # answered, idle
    assert conn.receive_data(GET + GET[:5]) == GET_ANSWER  # the third head begins
    assert conn.pending_head() == 3
    assert conn.receive_data(GET[5:]) == GET_ANSWER
    assert conn.pending_head() == 0


def test_pending_head_is_zero_while_a_body_is_read() -> None:
    """--header-timeout bounds the head; a slow body is the idle timeout's."""
    conn, _ = connect(app)
    assert conn.receive_data(post_head(b"/b", 5) + b"he") == b""
    assert (conn.busy, conn.pending_head()) == (True, 0)


def test_pending_head_is_zero_once_closing() -> None:
    conn, _ = connect(app)
    assert conn.receive_data(GET[:9]) == b""
    assert conn.pending_head() == 1
    assert conn.timed_out() == error_response(408)
    assert conn.pending_head() == 0


def test_timed_out_while_idle_is_silent_and_closes() -> None:
    conn, counters = connect(app)
    assert conn.timed_out() == b""
    assert (conn.should_close, conn.busy) == (True, False)
    assert errors_of(counters) == 0
    assert conn.receive_data(GET) == b""
    assert counters.requests == 0


# After each of these, the connection is between requests: not busy.
ANSWERED = {
    "GET": (GET, GET_ANSWER),
    "POST content-length": (post(b"/b", b"hello"), answer(b"POST", b"/b", b"hello")),
    "POST chunked": (PIPELINE[2], PIPELINE_ANSWERS[2]),
    "HEAD": (PIPELINE[3], PIPELINE_ANSWERS[3]),
    "pipeline": (b"".join(PIPELINE), b"".join(PIPELINE_ANSWERS)),
    "app raised": (get(b"/boom"), APP_ERROR_500),
}


@pytest.mark.parametrize(("data", "expected"), ANSWERED.values(), ids=ANSWERED.keys())
def test_not_busy_after_the_response(data: bytes, expected: bytes) -> None:
    """busy is False after a keep-alive response even when no further byte was read.

    h11 leaves both sides DONE until the next receive_data returns PAUSED, so a
    ``busy`` that tested ``their_state is not IDLE`` would stay True.
    """
    check(app, data, expected, should_close=False, busy=False)


def test_timed_out_after_a_response_is_silent() -> None:
    """For the same reason: an idle keep-alive connection gets no 408 and counts no error."""
    conn, counters = connect(app)
    assert conn.receive_data(GET) == GET_ANSWER
    assert conn.timed_out() == b""
    assert conn.should_close is True
    assert (counters.requests, errors_of(counters)) == (1, 0)


def test_stop_keepalive_after_a_response_closes_at_once() -> None:
    """For the same reason: shutdown does not wait for a connection with nothing to answer."""
    conn, _ = connect(app)
    assert conn.receive_data(GET) == GET_ANSWER
    conn.stop_keepalive()
    assert conn.should_close is True


def test_stop_keepalive_on_a_fresh_connection_closes_at_once() -> None:
    conn, counters = connect(app)
    conn.stop_keepalive()
    assert (conn.should_close, conn.busy) == (True, False)
    assert conn.receive_data(GET) == b""
    assert counters.requests == 0


def test_drain_after_a_response_waits_for_the_next_request_and_closes_after_it() -> None:
    """A retiring worker's drain: the client may have sent its next request already, so
    the idle connection stays open, and that request's answer carries the close."""
    conn, counters = connect(app)
    assert conn.receive_data(GET) == GET_ANSWER
    conn.drain()
    assert (conn.should_close, conn.busy) == (False, False)
    assert conn.receive_data(GET + get(b"/never")) == answer(
        b"GET", b"/", b"", b"connection: close"
    )
    assert (conn.should_close, conn.busy) == (True, False)
    assert counters.requests == 2


@pytest.mark.parametrize("cut", [None, 5, len(GET) - 1])
def test_drain_of_a_fresh_or_busy_connection_answers_one_request(cut: int | None) -> None:
    conn, counters = connect(app)
    if cut is not None:
        assert conn.receive_data(GET[:cut]) == b""
        assert conn.busy is True
    conn.drain()
    assert conn.should_close is False
    assert conn.receive_data(GET[cut or 0 :]) == answer(b"GET", b"/", b"", b"connection: close")
    assert (conn.should_close, counters.requests) == (True, 1)


@pytest.mark.parametrize("cut", [5, len(GET) - 1, len(GET) - 2])
def test_stop_keepalive_while_busy_answers_with_connection_close(cut: int) -> None:
    conn, counters = connect(app)
    assert conn.receive_data(GET[:cut]) == b""
    assert conn.busy is True
    conn.stop_keepalive()
    assert conn.should_close is False  # the request in progress is answered first
    # The rest, and a pipelined request that is never answered.
    assert conn.receive_data(GET[cut:] + get(b"/never")) == answer(
        b"GET", b"/", b"", b"connection: close"
    )
    assert (conn.should_close, conn.busy) == (True, False)
    assert counters.requests == 1


def test_stop_keepalive_while_waiting_after_100_continue() -> None:
    conn, _ = connect(app)
    assert conn.receive_data(EXPECT_HEAD) == CONTINUE
    conn.stop_keepalive()
    assert conn.should_close is False
    assert conn.receive_data(b"hello") == answer(b"POST", b"/up", b"hello", b"connection: close")
    assert conn.should_close is True


def test_stop_keepalive_with_an_http10_request_in_progress() -> None:
    conn, _ = connect(app)
    assert conn.receive_data(b"GET / HTTP/1.0\r\n") == b""
    conn.stop_keepalive()
    # h11 writes its own Connection: close in place of the server's.
    assert conn.receive_data(b"\r\n") == answer(
        b"GET", b"/", b"", b"Connection: close", version=b"1.0"
    )
    assert conn.should_close is True


# -- EOF and data after close -------------------------------------------------


def test_eof_on_a_fresh_connection() -> None:
    conn, counters = connect(app)
    assert conn.receive_data(b"") == b""
    assert (conn.should_close, conn.busy) == (True, False)
    assert (counters.requests, errors_of(counters)) == (0, 0)


def test_eof_after_a_response() -> None:
    conn, counters = connect(app)
    assert conn.receive_data(GET) == GET_ANSWER
    assert conn.receive_data(b"") == b""
    assert (conn.should_close, conn.busy) == (True, False)
    assert (counters.requests, errors_of(counters)) == (1, 0)


def test_eof_after_a_pipelined_response_in_the_same_read() -> None:
    fed = feed(app, [GET, b""])
    assert fed.out == GET_ANSWER
    assert (fed.conn.should_close, fed.conn.busy) == (True, False)


@pytest.mark.parametrize("data", PARTIAL.values(), ids=PARTIAL.keys())
def test_eof_mid_request_gets_400_and_close(data: bytes) -> None:
    """The peer half-closed mid-request: h11 reports a protocol error, answered with 400."""
    conn, counters = connect(app)
    before = conn.receive_data(data)
    requests = counters.requests
    assert conn.receive_data(b"") == error_response(400)
    assert (conn.should_close, conn.busy) == (True, False)
    assert (counters.requests, errors_of(counters)) == (requests, 1)
    assert before in (b"", CONTINUE, GET_ANSWER)


@pytest.mark.parametrize(
    "closing",
    [
        get(b"/bye", b"Connection: close"),
        b"GET /old HTTP/1.0\r\n\r\n",
        b"garbage\r\n\r\n",
        post_head(b"/up", 11),  # 413 with SMALL_BODY
        b"",  # EOF
    ],
)
def test_data_after_should_close_is_ignored(closing: bytes) -> None:
    conn, counters = connect(app, SMALL_BODY)
    conn.receive_data(closing)
    assert conn.should_close is True
    state = (counters.requests, errors_of(counters))
    for data in (GET, b"garbage\r\n\r\n", b""):
        assert conn.receive_data(data) == b""
        assert (conn.should_close, conn.busy) == (True, False)
    assert (counters.requests, errors_of(counters)) == state


# -- app failures -------------------------------------------------------------


def test_app_raising_gets_500_and_keeps_the_connection() -> None:
    check(
        app,
        get(b"/boom"),
        APP_ERROR_500,
        should_close=False,
        requests=1,
        errors=1,
    )
    # The connection goes on with the next request.
    check(
        app,
        get(b"/boom") + GET,
        APP_ERROR_500 + GET_ANSWER,
        should_close=False,
        requests=2,
        errors=1,
    )


BAD_RESPONSES = {
    "space in a header name": Response(200, [(b"bad name", b"v"), (b"content-length", b"0")]),
    "CRLF in a header value": Response(
        200, [(b"x-split", b"a\r\nx-injected: 1"), (b"content-length", b"0")]
    ),
    "status below 200": Response(99, [(b"content-length", b"0")]),
    "informational status": Response(101, [(b"content-length", b"0")]),
    "body longer than content-length": Response(200, [(b"content-length", b"1")], b"abc"),
    "body shorter than content-length": Response(200, [(b"content-length", b"9")], b"abc"),
    "conflicting content-lengths": Response(
        200, [(b"content-length", b"3"), (b"content-length", b"4")], b"abc"
    ),
}


@pytest.mark.parametrize("bad", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_app_response_h11_refuses_gets_raw_500_and_close(bad: Response) -> None:
    check(
        lambda request: bad,
        GET,
        RAW_500,
        should_close=True,
        busy=False,
        requests=1,
        errors=1,
    )


@pytest.mark.parametrize("bad", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_app_response_h11_refuses_with_a_request_pipelined_behind(bad: Response) -> None:
    """One raw 500, then nothing, even for the body-length cases.

    There h11 fails in ``send(Data/EndOfMessage)`` and its states become
    ERROR/MUST_CLOSE; were _handle_events to keep reading, the pipelined bytes
    would raise "Got data when expecting EOF" and a second, raw ``400 Bad
    Request`` would follow the 500 (errors counted twice)."""
    check(
        lambda request: bad,
        GET + get(b"/never"),
        RAW_500,
        should_close=True,
        busy=False,
        requests=1,
        errors=1,
    )


def bad_on_second(request: Request) -> Response:
    if request.target == b"/bad":
        return BAD_RESPONSES["space in a header name"]
    return app(request)


def test_refused_response_keeps_the_earlier_pipelined_response() -> None:
    """The responses already produced in this receive_data call survive a refused one.

    An ``out.clear()`` in HttpConnection._respond once dropped them all."""
    check(
        bad_on_second,
        GET + get(b"/bad"),
        GET_ANSWER + RAW_500,
        should_close=True,
        busy=False,
        requests=2,
        errors=1,
    )


def test_refused_response_in_a_later_read() -> None:
    conn, counters = connect(bad_on_second)
    assert conn.receive_data(GET) == GET_ANSWER
    assert conn.receive_data(get(b"/bad")) == RAW_500
    assert conn.should_close is True
    assert (counters.requests, errors_of(counters)) == (2, 1)


# -- framing h11 chooses when the app gives no content-length -----------------


def test_no_content_length_http11_is_chunked() -> None:
    def no_length(request: Request) -> Response:
        return Response(200, [], b"abc")

    expected = http_response(
        b"HTTP/1.1 200 OK",
        SERVER_LINE,
        DATE_LINE,
        b"Transfer-Encoding: chunked",
        body=b"3\r\nabc\r\n0\r\n\r\n",
    )
    check(no_length, GET, expected, should_close=False, requests=1)
    expected10 = http_response(
        b"HTTP/1.1 200 OK", SERVER_LINE, DATE_LINE, b"Connection: close", body=b"abc"
    )
    check(no_length, b"GET / HTTP/1.0\r\n\r\n", expected10, should_close=True, requests=1)


def test_unknown_status_has_an_empty_reason() -> None:
    check(
        lambda request: Response(299, [(b"content-length", b"0")]),
        GET,
        http_response(b"HTTP/1.1 299 ", b"content-length: 0", SERVER_LINE, DATE_LINE),
        should_close=False,
        requests=1,
    )


def test_counters_are_shared_between_connections() -> None:
    counters = Counters()
    one = helpers.HttpConnection(app, HttpLimits(), counters)
    two = helpers.HttpConnection(app, HttpLimits(), counters)
    one.receive_data(GET)
    two.receive_data(get(b"/boom"))
    two.receive_data(b"garbage\r\n\r\n")
    assert (counters.requests, errors_of(counters)) == (2, 2)
