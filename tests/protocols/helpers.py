"""Helpers for the sans-IO protocol tests, in the style of h11's ``tests/test_io.py``.

Every input is fed several ways (whole, one byte at a time, cut in two at every
offset, in three pieces) and the exact output bytes and end state are asserted
for each; see `check`.  `HttpConnection` is the connection class under test:
H11Connection, unless the ``http_parser`` fixture (conftest.py) sets another.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from server.protocols.http.common import App, Counters, HttpLimits, ResponseCache
from server.protocols.http.framing import FramedConnection
from server.protocols.http.h11_impl import H11Connection
from tests.support import chunkings

HttpConnection: type[FramedConnection] = H11Connection

# RFC 9110's example date. The ``fixed_clock`` fixture (conftest.py) pins the
# clock of server.protocols.http to EPOCH, so every response carries DATE_LINE.
EPOCH = 784111777
DATE_LINE = b"date: Sun, 06 Nov 1994 08:49:37 GMT"
SERVER_LINE = b"server: ringserve"

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HELLO = b"Hello from ringserve\n"


def http_response(status_line: bytes, *header_lines: bytes, body: bytes = b"") -> bytes:
    """Raw response bytes: a status line, header lines, a blank line, the body."""
    return status_line + b"\r\n" + b"".join(h + b"\r\n" for h in header_lines) + b"\r\n" + body


def reason(status: int) -> bytes:
    # From the stdlib, as the server does: 413's phrase differs across Python versions.
    return HTTPStatus(status).phrase.encode()


def error_response(status: int) -> bytes:
    """What HttpConnection sends for a client error it answers itself (then closes)."""
    body = b"%d %s\n" % (status, reason(status))
    return http_response(
        b"HTTP/1.1 %d %s" % (status, reason(status)),
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(body),
        b"connection: close",
        SERVER_LINE,
        DATE_LINE,
        body=body,
    )


# The raw 500 sent when h11 refuses what the app returned (no server/date headers).
RAW_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 26\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"500 Internal Server Error\n"
)

# The 500 sent (keep-alive) when the app raises.
APP_ERROR_500 = http_response(
    b"HTTP/1.1 500 Internal Server Error",
    b"content-type: text/plain",
    b"content-length: 26",
    SERVER_LINE,
    DATE_LINE,
    body=b"500 Internal Server Error\n",
)


def response_cache() -> ResponseCache[Any]:
    """The response cache of the parser module under test."""
    return importlib.import_module(HttpConnection.__module__)._responses  # type: ignore[no-any-return]


def cached_date(entry: Any) -> bytes:
    """The Date value inside a cached response (an h11.Response or a ResponseHead)."""
    head = (
        entry.head if hasattr(entry, "head") else b"\r\n".join(b"%s: %s" % h for h in entry.headers)
    )
    return head.partition(b"date: ")[2].partition(b"\r\n")[0]


@dataclass
class Fed:
    """One connection after `feed`: its outputs, one per receive_data call."""

    name: str
    conn: FramedConnection
    counters: Counters
    outputs: list[bytes]

    @property
    def out(self) -> bytes:
        return b"".join(self.outputs)


def errors_of(counters: Counters) -> int:
    """Requests refused by the server (4xx/505) plus app failures (500)."""
    return counters.client_errors + counters.app_errors


def connect(app: App, limits: HttpLimits | None = None) -> tuple[FramedConnection, Counters]:
    counters = Counters()
    return HttpConnection(app, limits or HttpLimits(), counters), counters


def feed(app: App, chunks: list[bytes], limits: HttpLimits | None = None, name: str = "") -> Fed:
    conn, counters = connect(app, limits)
    return Fed(name, conn, counters, [conn.receive_data(c) for c in chunks])


def check(
    app: App,
    data: bytes,
    expected: bytes,
    *,
    should_close: bool,
    busy: bool | None = None,
    requests: int | None = None,
    errors: int | None = None,
    emitted_at: list[int] | None = None,
    limits: HttpLimits | None = None,
) -> None:
    """Feed `data` every way `chunkings` knows; each must give exactly `expected`.

    Args:
        should_close, busy, requests, errors: the end state to assert (None: not checked).
        emitted_at: when fed one byte at a time, the offsets of the bytes whose
            receive_data call returned something (the last byte of each request).
    """
    for name, chunks in chunkings(data):
        fed = feed(app, chunks, limits, name)
        assert fed.out == expected, f"fed {name}"
        assert fed.conn.should_close is should_close, f"should_close, fed {name}"
        if busy is not None:
            assert fed.conn.busy is busy, f"busy, fed {name}"
        if requests is not None:
            assert fed.counters.requests == requests, f"requests, fed {name}"
        if errors is not None:
            assert errors_of(fed.counters) == errors, f"errors, fed {name}"
        if emitted_at is not None and name == "bytewise":
            assert [i for i, o in enumerate(fed.outputs) if o] == emitted_at
