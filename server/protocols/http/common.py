"""What every HTTP parser shares: the types apps see, limits, counters, the
Date header, reason phrases, error responses, the response cache and the
response serializer.

Nothing here parses requests.  The apps import only this module, never a
parser module, so a parser is imported only when ``--http`` chooses it.
"""

from __future__ import annotations

import re
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
    surrounding whitespace.  `client` is the peer's (host, port), or the one
    trusted proxy headers name (None when unknown); `scheme` is what a
    trusted proxy says the client used ("http" or "https"), or None: the
    listener's own (https with TLS).
    """

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes
    body: bytes
    client: tuple[str, int] | None = None
    scheme: str | None = None


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


# -- the response serializer ------------------------------------------------------
#
# h11 writes a response by validating its headers (``normalize_and_validate``),
# fixing its framing and Connection headers (``_clean_up_response_headers_for_
# sending``) and writing it (``write_any_response``); the body then goes through
# the writer its framing chose.  `serialize_head` and `frame_body` do the same
# without h11, byte for byte (``tests/protocols/test_serializer.py`` holds them
# against h11 on random responses), so a parser without a writer of its own
# answers exactly as H11Connection does.

_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE: Final = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_DIGITS: Final = re.compile(rb"[0-9]+")
# h11 sends any reason phrase; this is the one it accepts when it *reads* a
# status line, so an app cannot inject a CR/LF through it on either parser.
_REASON: Final = re.compile(rb"(?:[ \t]|[^\x00\s])*")
_CONTENT_LENGTH_MAX_DIGITS: Final = 20

# `variant` bits: what else, besides the app's response, changes the bytes.
KEEPALIVE: Final = 1  # the server keeps the connection (no stop_keepalive, no TE+CL)
PEER_KEEPALIVE: Final = 2  # the request allows keep-alive (HTTP/1.1, no Connection: close)
PEER_HTTP11: Final = 4  # the request is HTTP/1.1, so a body of unknown length is chunked

# How the body of a response is framed.
LENGTH: Final = 0  # Content-Length: the body must have exactly that many bytes
EMPTY: Final = 1  # 204/304: no body whatever the headers say
CHUNKED: Final = 2  # Transfer-Encoding: chunked (an HTTP/1.1 peer, no length given)
UNTIL_CLOSE: Final = 3  # an HTTP/1.0 peer and no length: the body ends at the close


class Refused(Exception):
    """The app's response cannot be sent as it is (h11 would refuse it)."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A serialized response head and how its body is framed.

    Attributes:
        status: the status code.
        head: status line, headers and the blank line, as sent.
        framing: `LENGTH`, `EMPTY`, `CHUNKED` or `UNTIL_CLOSE`.
        length: the Content-Length when `framing` is `LENGTH`.
        close: the connection closes after this response.
    """

    status: int
    head: bytes
    framing: int
    length: int
    close: bool


def _bytesify(s: object) -> bytes:
    # h11's bytesify: bytes as they are, str as ASCII, no ints, else bytes(s).
    if type(s) is bytes:
        return s
    if isinstance(s, str):
        return s.encode("ascii")
    if isinstance(s, int):
        raise TypeError("expected bytes-like object, not int")
    data: bytes = bytes(s)  # type: ignore[call-overload]
    return data


def check_reason(reason: object) -> bytes:
    """`reason` as bytes, if it cannot break the status line.

    Raises:
        Refused: it holds a NUL, CR, LF, VT or FF.
    """
    phrase = _bytesify(reason)
    if not _REASON.fullmatch(phrase):
        raise Refused(f"illegal reason phrase {phrase!r}")
    return phrase


def _comma_values(items: list[tuple[bytes, bytes, bytes]], name: bytes) -> list[bytes]:
    # h11's get_comma_header: lowercased, split on commas, stripped, non-empty.
    out: list[bytes] = []
    for _, found, value in items:
        if found == name:
            out.extend(v for v in (p.strip() for p in value.lower().split(b",")) if v)
    return out


def _normalized(headers: Headers) -> list[tuple[bytes, bytes, bytes]]:
    """(name as given, lowercase name, value) after h11's validation of sent headers.

    Raises:
        Refused: a bad name or value, conflicting or malformed Content-Length,
            a Transfer-Encoding other than a single ``chunked``.
    """
    items: list[tuple[bytes, bytes, bytes]] = []
    seen_length: bytes | None = None
    seen_te = False
    for raw_name, raw_value in headers:
        name = _bytesify(raw_name)
        value = _bytesify(raw_value)
        if not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise Refused(f"illegal header {name!r}: {value!r}")
        lower = name.lower()
        if lower == b"content-length":
            lengths = {v.strip() for v in value.split(b",")}
            if len(lengths) != 1:
                raise Refused("conflicting Content-Length values")
            value = lengths.pop()
            if not _DIGITS.fullmatch(value) or len(value) > _CONTENT_LENGTH_MAX_DIGITS:
                raise Refused(f"bad Content-Length {value!r}")
            if seen_length is None:
                seen_length = value
                items.append((name, lower, value))
            elif seen_length != value:
                raise Refused("conflicting Content-Length headers")
        elif lower == b"transfer-encoding":
            value = value.lower()
            if seen_te or value != b"chunked":
                raise Refused("only one Transfer-Encoding: chunked can be sent")
            seen_te = True
            items.append((name, lower, value))
        else:
            items.append((name, lower, value))
    return items


def _replace(
    items: list[tuple[bytes, bytes, bytes]], name: bytes, values: list[bytes]
) -> list[tuple[bytes, bytes, bytes]]:
    # h11's set_comma_header: drop `name`, append it title-cased once per value.
    kept = [item for item in items if item[1] != name]
    title = name.title()
    kept.extend((title, name, value) for value in values)
    return kept


def serialize_head(status: object, reason: object, headers: Headers, variant: int) -> ResponseHead:
    """The bytes h11 sends for this response head, and how its body is framed.

    The request's method does not change the head (h11 frames a HEAD
    response's headers as a GET's); `frame_body` is told about it.

    Args:
        status, reason, headers: as the app returned them (`headers` complete:
            the server and date headers already added).
        variant: `PEER_KEEPALIVE` | `PEER_HTTP11` bits (`KEEPALIVE` is the
            caller's: it adds its own ``connection: close``).

    Raises:
        Refused: h11 would refuse this response (or its reason phrase could
            break the status line).  Other exceptions (TypeError,
            UnicodeEncodeError, ValueError) for headers that are not pairs
            of bytes or ASCII strings, as h11 raises them.
    """
    if not isinstance(status, int):
        raise Refused("status code must be an integer")
    code = int(status)
    if not 200 <= code < 1000:
        raise Refused(f"status {code} is not a final status")
    phrase = check_reason(reason)
    items = _normalized(headers)
    need_close = False
    if code in (204, 304):
        framing = EMPTY
    elif _comma_values(items, b"transfer-encoding"):
        framing = CHUNKED
    elif _comma_values(items, b"content-length"):
        framing = LENGTH
    else:
        framing = UNTIL_CLOSE
    if framing in (CHUNKED, UNTIL_CLOSE):
        items = _replace(items, b"content-length", [])
        if variant & PEER_HTTP11:
            items = _replace(items, b"transfer-encoding", [b"chunked"])
            framing = CHUNKED
        else:
            items = _replace(items, b"transfer-encoding", [])
            framing = UNTIL_CLOSE
            # h11 spares a HEAD response this close, but an HTTP/1.0 peer
            # never has keep-alive (below), so the bytes are the same.
            need_close = True
    if not variant & PEER_KEEPALIVE or need_close:
        connection = set(_comma_values(items, b"connection"))
        connection.discard(b"keep-alive")
        connection.add(b"close")
        items = _replace(items, b"connection", sorted(connection))
    lines = [b"HTTP/1.1 %d %s\r\n" % (code, phrase)]
    # h11 writes Host first (a habit of its request writer it keeps for responses).
    lines.extend(b"%s: %s\r\n" % (raw, value) for raw, lower, value in items if lower == b"host")
    lines.extend(b"%s: %s\r\n" % (raw, value) for raw, lower, value in items if lower != b"host")
    lines.append(b"\r\n")
    length = int(_comma_values(items, b"content-length")[0]) if framing == LENGTH else 0
    close = b"close" in _comma_values(items, b"connection")
    return ResponseHead(code, b"".join(lines), framing, length, close)


def frame_body(head: ResponseHead, body: object, method: bytes) -> bytes:
    """The body's bytes on the wire, framed as `head` says (nothing for HEAD).

    Raises:
        Refused: the body does not fit the framing (longer or shorter than the
            Content-Length, or any body on a 204/304), or a 2xx answers a
            CONNECT (h11 would switch protocols and send nothing more).
        TypeError: the body is not bytes-like.
    """
    if method == b"CONNECT" and 200 <= head.status < 300:
        raise Refused("a 2xx answer to CONNECT switches protocols")
    if method == b"HEAD":
        return b""
    # h11 sends no Data for an empty body, whatever its type.
    data = body if type(body) is bytes else bytes(memoryview(body)) if body else b""  # type: ignore[arg-type]
    framing = head.framing
    if framing == LENGTH:
        if len(data) != head.length:
            raise Refused(f"body of {len(data)} bytes for Content-Length {head.length}")
        return data
    if framing == EMPTY:
        if data:
            raise Refused("a body on a 204 or 304 response")
        return b""
    if framing == CHUNKED:
        return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
    return data
