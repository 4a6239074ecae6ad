"""common.serialize_head + common.frame_body write exactly what h11 writes.

The serializer is what lets the httptools connection answer without h11, so
it is held against h11 itself: the same response, after the same request,
gives the same bytes and the same close, or is refused by both.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocols.http.common import (
    CHUNKED,
    EMPTY,
    LENGTH,
    PEER_HTTP11,
    PEER_KEEPALIVE,
    UNTIL_CLOSE,
    Refused,
    frame_body,
    serialize_head,
)

TARGETS = {b"CONNECT": b"a:443"}


def via_h11(
    method: bytes, version: bytes, close: bool, status: Any, reason: Any, headers: Any, body: Any
) -> tuple[bytes, bool] | None:
    """What h11 sends for the response (and whether it closes after), or None if it refuses."""
    conn = h11.Connection(h11.SERVER)
    lines = b"Host: a\r\n" + (b"Connection: close\r\n" if close else b"")
    target = TARGETS.get(method, b"/")
    conn.receive_data(b"%s %s HTTP/%s\r\n%s\r\n" % (method, target, version, lines))
    assert type(conn.next_event()) is h11.Request
    assert type(conn.next_event()) is h11.EndOfMessage
    try:
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        if body and method != b"HEAD":
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
    except (h11.LocalProtocolError, TypeError, ValueError, UnicodeError):
        return None
    return out, conn.our_state is not h11.DONE


def via_serializer(
    method: bytes, version: bytes, close: bool, status: Any, reason: Any, headers: Any, body: Any
) -> tuple[bytes, bool] | None:
    variant = (0 if close or version == b"1.0" else PEER_KEEPALIVE) | (
        PEER_HTTP11 if version == b"1.1" else 0
    )
    try:
        head = serialize_head(status, reason, headers, variant)
        return head.head + frame_body(head, body, method), head.close
    except (Refused, TypeError, ValueError, UnicodeError):
        return None


_GOOD_NAMES = [
    b"content-length",
    b"Content-Length",
    b"transfer-encoding",
    b"Transfer-Encoding",
    b"connection",
    b"Connection",
    b"host",
    b"Host",
    b"x-a",
    b"X-B",
]
# sampled_from a list with the good ones repeated: mostly sendable, sometimes not.
_names = st.sampled_from(_GOOD_NAMES * 8 + [b"bad name", b"", b"x:y", "x-str"])
_GOOD_VALUES = [
    b"0",
    b"3",
    b"5",
    b"3, 3",
    b"03",
    b"chunked",
    b"CHUNKED",
    b"close",
    b"keep-alive",
    b"Keep-Alive, Upgrade",
    b"close, x",
    b"",
    b"a b",
    b"\xff",
    b"a\x01",
]
_BAD_VALUES = [
    b"3,4",
    b" 3",
    b"-1",
    b"9" * 21,
    b"gzip",
    b"chunked, gzip",
    b"a\r\nx: y",
    b"a\x00",
    b" lead",
    b"trail ",
    "str",
    "\xe9",
    5,
]
_values = st.one_of(st.sampled_from(_GOOD_VALUES * 6 + _BAD_VALUES), st.binary(max_size=8))
_headers = st.lists(st.tuples(_names, _values), max_size=5)
_status = st.sampled_from(
    [200, 201, 204, 299, 304, 404, 500, 999] * 6
    + [1000, 199, 101, 100, 0, -1, "200", 200.0, True, None]
)
_reason = st.one_of(
    st.sampled_from([b"OK", b"", b"Not Found", b"tab\tok", b"\xff", "OK"] * 4 + [b"a\r\nb"]),
    st.binary(max_size=6),
)
_body = st.sampled_from([b"", b"abc", b"abcde", bytearray(b"abc"), "abc", ""])


@st.composite
def _response(draw: st.DrawFn) -> tuple[Any, Any, Any, Any]:
    """Mostly sendable responses: the body often has its own Content-Length."""
    body = draw(_body)
    headers = draw(_headers)
    if draw(st.booleans()):
        headers = [(n, v) for n, v in headers if str(n).lower() != "content-length"]
        if draw(st.booleans()):
            headers.insert(
                draw(st.integers(0, len(headers))), (b"content-length", b"%d" % len(body))
            )
    return draw(_status), draw(_reason), headers, body


_request = st.tuples(
    st.sampled_from([b"GET", b"HEAD", b"POST", b"CONNECT"]),
    st.sampled_from([b"1.1", b"1.0"]),
    st.booleans(),
)


@settings(
    max_examples=3000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_request, _response())
def test_the_serializer_writes_what_h11_writes(
    request: tuple[bytes, bytes, bool], response: tuple[Any, Any, Any, Any]
) -> None:
    method, version, close = request
    status, reason, headers, body = response
    args = (method, version, close, status, reason, headers, body)
    expected = via_h11(*args)
    got = via_serializer(*args)
    if expected is not None and not _REASON_OK(reason):
        expected = None  # the one thing h11 sends and the serializer refuses (below)
    assert got == expected


def _REASON_OK(reason: Any) -> bool:
    try:
        data = reason.encode("ascii") if isinstance(reason, str) else bytes(reason)
    except (TypeError, UnicodeError):
        return False
    return not any(c in data for c in b"\x00\r\n\x0b\x0c")


@pytest.mark.parametrize(
    "reason", [b"OK\r\nx-injected: 1", b"OK\n", b"O\x00K", b"O\x0bK"], ids=repr
)
def test_a_reason_phrase_h11_would_send_broken_is_refused(reason: bytes) -> None:
    """h11 writes any reason phrase into the status line, a CR/LF too; the serializer
    refuses what h11 would not accept reading a status line (the connections then
    answer a raw 500, tests/protocols/test_http.py)."""
    assert via_h11(b"GET", b"1.1", False, 200, reason, [(b"content-length", b"0")], b"")
    with pytest.raises(Refused):
        serialize_head(200, reason, [(b"content-length", b"0")], PEER_KEEPALIVE | PEER_HTTP11)


@pytest.mark.parametrize(
    ("variant", "headers", "framing", "head"),
    [
        (
            PEER_KEEPALIVE | PEER_HTTP11,
            [(b"content-length", b"3")],
            LENGTH,
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
        ),
        (
            PEER_KEEPALIVE | PEER_HTTP11,
            [(b"x", b"y")],
            CHUNKED,
            b"HTTP/1.1 200 OK\r\nx: y\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (0, [(b"x", b"y")], UNTIL_CLOSE, b"HTTP/1.1 200 OK\r\nx: y\r\nConnection: close\r\n\r\n"),
        (
            PEER_HTTP11,
            [(b"connection", b"Keep-Alive, Upgrade"), (b"host", b"h"), (b"content-length", b"3")],
            LENGTH,
            b"HTTP/1.1 200 OK\r\nhost: h\r\ncontent-length: 3\r\n"
            b"Connection: close\r\nConnection: upgrade\r\n\r\n",
        ),
    ],
)
def test_framing_and_connection_headers(
    variant: int, headers: list[tuple[bytes, bytes]], framing: int, head: bytes
) -> None:
    got = serialize_head(200, b"OK", headers, variant)
    assert (got.head, got.framing) == (head, framing)
    assert got.close is not bool(variant & PEER_KEEPALIVE) or framing == UNTIL_CLOSE


def test_204_and_304_have_no_body_whatever_the_headers() -> None:
    for status in (204, 304):
        head = serialize_head(status, b"", [(b"transfer-encoding", b"chunked")], PEER_HTTP11)
        assert head.framing == EMPTY
        assert frame_body(head, b"", b"GET") == b""
        with pytest.raises(Refused):
            frame_body(head, b"x", b"GET")
