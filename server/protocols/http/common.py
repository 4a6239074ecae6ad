"""What every HTTP parser shares: the types apps see, limits, counters, the
Date header, reason phrases, error responses and the response cache.

Nothing here parses.  The apps import only this module, never a parser
module, so a parser is imported only when ``--http`` chooses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, Generic, TypeVar

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(slots=True)
class Request:
    """A complete request, body included, as the app sees it.

    Header names are lowercase; values are as received, without the
    surrounding whitespace.
    """

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes
    body: bytes


@dataclass(slots=True)
class Response:
    """What an app returns. Apps should set content-length; the parser frames the rest."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reason: bytes | None = None  # None: the standard phrase for `status`


App = Callable[[Request], Response]


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Path and query of a request target, origin-form or absolute-form.

    RFC 9112 3.2.2: a server MUST accept the absolute form
    (``GET http://host/p?q``), whose path is what follows the authority.
    """
    if target[:1] != b"/" and b"://" in target:
        rest = target.partition(b"://")[2]
        slash = rest.find(b"/")
        target = (
            rest[slash:] if slash >= 0 else b"/" + rest.partition(b"?")[1] + rest.partition(b"?")[2]
        )
    path, _, query = target.partition(b"?")
    return path, query


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024


class Counters:
    """Server-wide totals the protocol objects add to (read by /stats).

    Attributes:
        requests: responses given to complete requests (the app's, or a 500).
        client_errors: requests refused with a 4xx/505 the server answered
            itself (malformed, too large, too slow, wrong version).
        app_errors: 500s: the app raised, or returned a response the
            server refused to send (a bad header, a body longer than its
            content-length).
    """

    __slots__ = ("app_errors", "client_errors", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.client_errors = 0
        self.app_errors = 0


REASONS: Final[dict[int, bytes]] = {s.value: s.phrase.encode() for s in HTTPStatus}
SERVER_HEADER: Final = (b"server", b"ringserve")


class DateHeader:
    """RFC 9110 wants a Date header; formatting it once a second is enough."""

    __slots__ = ("header", "second")

    def __init__(self) -> None:
        self.second = -1
        self.header = (b"date", b"")

    def get(self) -> tuple[bytes, bytes]:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.header = (b"date", formatdate(now, usegmt=True).encode())
        return self.header


date_header = DateHeader()


def error_body(status: int) -> bytes:
    return b"%d %s\n" % (status, REASONS[status])


def error_headers(status: int) -> list[tuple[bytes, bytes]]:
    """Headers of the response the server sends itself for a refused request."""
    return [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(error_body(status))),
        (b"connection", b"close"),
        SERVER_HEADER,
        date_header.get(),
    ]


def error_response(status: int, version: bytes = b"1.1") -> bytes:
    """Raw bytes of an error response, for when no parser can send one any more."""
    reason = REASONS[status]
    body = error_body(status)
    return (
        b"HTTP/%s %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s"
        % (version, status, reason, len(body), body)
    )


APP_ERROR_BODY: Final = b"500 Internal Server Error\n"
APP_ERROR_HEADERS: Final = [
    (b"content-type", b"text/plain"),
    (b"content-length", b"%d" % len(APP_ERROR_BODY)),
]

RESPONSE_CACHE_MAX: Final = 256
T = TypeVar("T")
# status, reason, the app's headers, and what else the parser lets vary the
# result (keep-alive, framing).
CacheKey = tuple[int, bytes, tuple[tuple[bytes, bytes], ...], int]


class ResponseCache(Generic[T]):
    """Built response heads, reused while the Date header holds.

    Building a response head validates every header (6 us for an
    ``h11.Response``, about a tenth of a request), and a server sends the
    same few responses over and over.  Entries are keyed by everything that
    goes into one, dropped when the Date header changes (once a second), and
    at most `RESPONSE_CACHE_MAX` are kept, so varied responses cost a dict
    lookup, not memory.

    Args:
        build: makes the entry from (status, reason, headers, variant, date).
            It may raise; nothing is cached then.
    """

    __slots__ = ("build", "date", "entries")

    def __init__(
        self,
        build: Callable[[int, bytes, list[tuple[bytes, bytes]], int, tuple[bytes, bytes]], T],
    ) -> None:
        self.build = build
        self.date: tuple[bytes, bytes] | None = None
        self.entries: dict[CacheKey, T] = {}

    def get(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], variant: int
    ) -> T:
        date = date_header.get()
        entries = self.entries
        if date is not self.date:
            self.date = date
            entries.clear()
        key: CacheKey | None
        try:
            key = (status, reason, tuple(headers), variant)
            entry = entries.get(key)
        except TypeError:  # unhashable headers from an app: build, don't keep
            key, entry = None, None
        if entry is None:
            entry = self.build(status, reason, headers, variant, date)
            if key is not None and len(entries) < RESPONSE_CACHE_MAX:
                entries[key] = entry
        return entry
