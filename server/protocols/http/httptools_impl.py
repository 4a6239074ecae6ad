"""HTTP/1.1 over httptools (llhttp, Node.js's parser in C), bytes in, bytes out.

``--http httptools``.  The same shape as ``h11_impl.py`` and the same bytes
on the wire: `FramedConnection` (``framing.py``) cuts the bytes into
complete heads, chunks and body pieces exactly as h11 would, and decides the
limits, 100-continue, keep-alive and pipelining; this module parses each
complete head with llhttp and writes each response with
``common.serialize_head`` (h11's rules, without h11), cached while the Date
header holds.

llhttp reports a head through callbacks (``on_url``, ``on_header``, ...).
They land in the slots of a `_Head`, never in a dict, and a head is parsed
whole in one ``feed_data`` call, so no connection needs a parser between
calls: the `_Head` objects (each with its parser) are pooled, taken for one
head and given back, and an idle keep-alive connection holds only its own
slots.  A parser whose request goes on with a body (or switches protocols,
or closes) is not at the start of a message any more, and is replaced
before it goes back.

A head is served only if h11 would accept it too: llhttp accepts some that
h11 refuses (no Host, two Hosts, two spaces after the method, a Transfer-
Encoding h11 does not support...).  A regular expression built from h11's
grammar, and a look at Host, Transfer-Encoding and Content-Length, tell the
heads h11 surely accepts; for any other, h11 itself is asked (a rare path).
"""

from __future__ import annotations

import re
from typing import Any, Final

import h11

from server.protocols.http import llhttp
from server.protocols.http.common import (
    CHUNKED,
    EMPTY,
    KEEPALIVE,
    LENGTH,
    PEER_HTTP11,
    PEER_KEEPALIVE,
    REASONS,
    SERVER_HEADER,
    App,
    Counters,
    HttpLimits,
    Response,
    ResponseCache,
    ResponseHead,
    error_body,
    error_headers,
    frame_body,
    serialize_head,
)
from server.protocols.http.framing import AsyncMode, FramedConnection

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# h11's request line (``h11._abnf.request_line``): single spaces, a target
# of visible ASCII, HTTP/d.d.  llhttp also reads ``GET  /`` and ``GET /``
# (HTTP/0.9).  Header lines need no check of their own: the names and values
# llhttp accepts (tokens; no control character but HTAB, no bare CR or LF, no
# obs-fold) are a subset of h11's.
_H11_REQUEST_LINE: Final = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+ [\x21-\x7e]+ HTTP/[0-9]\.[0-9]"
)
_CONTENT_LENGTH_MAX_DIGITS: Final = 20  # h11's


class _Head:
    """llhttp's callbacks for one request head, and the parser that calls them."""

    __slots__ = ("headers", "headers_done", "message_done", "parser", "target")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.message_done = False
        self.parser = llhttp.new_parser(self)

    def on_url(self, url: bytes) -> None:
        self.target = url  # once per head: it is fed whole

    def on_header(self, name: bytes, value: bytes) -> None:
        # As h11 gives them: lowercase names, values without the whitespace
        # around them (llhttp keeps what trails), Transfer-Encoding lowercase.
        name = name.lower()
        if value[-1:] in b" \t":
            value = value.rstrip(b" \t")
        if name == b"transfer-encoding":
            value = value.lower()
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_message_complete(self) -> None:
        self.message_done = True  # the head had no body: the parser can read the next


_heads: list[_Head] = []  # pooled: taken for one head, then given back


def _h11_status(head: bytes) -> int:
    """What h11 says of a head: 0 if it accepts it, else its status for the refusal."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        conn.next_event()
    except h11.RemoteProtocolError as exc:
        return exc.error_status_hint
    return 0


def _build_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    variant: int,
    date: tuple[bytes, bytes],
) -> ResponseHead:
    """The serialized head, with the server's headers (raises common.Refused)."""
    full = [*headers, SERVER_HEADER, date]
    if not variant & KEEPALIVE:
        full.append((b"connection", b"close"))
    return serialize_head(status, reason, full, variant)


_responses: ResponseCache[ResponseHead] = ResponseCache(_build_head)


class HttptoolsConnection(FramedConnection):
    """Sans-IO HTTP/1.1 server connection.

    Args:
        app: called once per complete request.
        limits: header and body size limits.
        counters: totals shared by all connections.
    """

    __slots__ = ()

    def __init__(self, app: App, limits: HttpLimits, counters: Counters) -> None:
        super().__init__(app, limits, counters)

    # receive_data, pending_head, timed_out, stop_keepalive: FramedConnection's.

    # -- internals -----------------------------------------------------------

    def _parse(self, head: bytes) -> int:
        sink = _heads.pop() if _heads else _Head()
        parser = sink.parser
        headers: list[tuple[bytes, bytes]] = []
        sink.headers = headers
        sink.headers_done = sink.message_done = False
        try:
            parser.feed_data(head)
        except llhttp.Upgrade:
            sink.message_done = False  # CONNECT or Upgrade: llhttp expects another protocol
        except llhttp.ParserError:
            sink.headers_done = False
        if not sink.headers_done:  # refused (or paused: ``PRI * HTTP/2.0``, HTTP/2's preface)
            sink.parser = llhttp.new_parser(sink)
            _heads.append(sink)
            return 400
        # llhttp took the head whole, so its lines end in CRLF, the first one
        # with the version: b"1.1" from b"GET / HTTP/1.1".
        line_end = head.find(b"\r\n")
        version = head[line_end - 3 : line_end]
        method = parser.get_method()
        # What h11 checks that llhttp does not (h11 is asked when this is unsure).
        sure = _H11_REQUEST_LINE.fullmatch(head, 0, line_end) is not None
        hosts = encodings = 0
        closes = version != b"1.1"
        for name, value in headers:
            if name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                encodings += 1
                sure = sure and value == b"chunked"
            elif name == b"content-length":
                sure = sure and len(value) <= _CONTENT_LENGTH_MAX_DIGITS
            elif name == b"connection":
                closes = True  # maybe: after a closing request llhttp reads no other
        if not sink.message_done or closes:
            sink.parser = llhttp.new_parser(sink)  # not at the start of a message now
        self._target = sink.target
        _heads.append(sink)
        if not sure or encodings > 1 or not (hosts == 1 or (hosts == 0 and version != b"1.1")):
            status = _h11_status(head)
            if status:
                return status
        self._method = method
        self._headers = headers
        self._version = version
        return 0

    def _variant(self) -> int:
        return (
            (KEEPALIVE if self._keepalive else 0)
            | (PEER_KEEPALIVE if self._peer_keepalive else 0)
            | (PEER_HTTP11 if self._version == b"1.1" else 0)
        )

    def _send(self, resp: Response) -> tuple[bytes, bool] | None:
        reason = resp.reason if resp.reason is not None else REASONS.get(resp.status, b"")
        variant = self._variant()
        try:
            head = _responses.get(resp.status, reason, resp.headers, variant)
            body = frame_body(head, resp.body, self._method)
        except Exception:  # common.Refused, or headers that are not bytes pairs
            return None
        return (head.head + body if body else head.head), head.close

    def _error(self, status: int) -> bytes:
        variant = PEER_KEEPALIVE if self._peer_keepalive else 0
        head = serialize_head(status, REASONS[status], error_headers(status), variant)
        return head.head + error_body(status)

    def _continue(self) -> bytes:
        return CONTINUE


class HttptoolsAsgiConnection(AsyncMode, HttptoolsConnection):
    """HttptoolsConnection for an ASGI app (`framing.AsyncMode`): streamed bodies both ways."""

    __slots__ = ()

    def __init__(self, app: App, limits: HttpLimits, counters: Counters) -> None:
        super().__init__(app, limits, counters)
        self._init_async()

    def _stream_head(self, status: int, headers: Any) -> bytes | None:
        if self._method == b"CONNECT" and 200 <= status < 300:
            return None  # h11's rule: a 2xx to CONNECT switches protocols
        try:
            head = _responses.get(status, REASONS.get(status, b""), headers, self._variant())
        except Exception:  # common.Refused, or headers that are not bytes pairs
            return None
        self._streaming = head
        self._streamed = 0
        return head.head

    def _stream_body(self, chunk: bytes) -> bytes | None:
        head: ResponseHead | None = self._streaming
        assert head is not None
        if self._method == b"HEAD":
            return b""
        framing = head.framing
        if framing == LENGTH:
            if self._streamed + len(chunk) > head.length:
                return None
            self._streamed += len(chunk)
            return chunk
        if framing == EMPTY:
            return None if chunk else b""
        if framing == CHUNKED:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunk else b""
        return chunk  # UNTIL_CLOSE

    def _stream_end(self) -> tuple[bytes, bool] | None:
        head: ResponseHead | None = self._streaming
        assert head is not None
        self._streaming = None
        if self._method == b"HEAD":
            return b"", head.close
        if head.framing == LENGTH and self._streamed != head.length:
            return None
        return (b"0\r\n\r\n" if head.framing == CHUNKED else b""), head.close
