"""HTTP/1.1 over h11: one ``h11.Connection`` per request in progress, bytes in, bytes out.

The reference parser (``--http h11``, the default).  `FramedConnection`
(``framing.py``) cuts the bytes into complete heads, chunks and body pieces
exactly as h11 would and decides the limits; each piece is handed to h11,
whose events give the request, and whose ``send`` writes every response, so
the bytes on the wire are h11's.  Each complete request is answered in order
by calling a synchronous app (uvicorn's ``h11_impl.handle_events`` does the
same), and pipelined requests are answered in order: the next head is read
only after the response to the one before.  ``httptools_impl.py`` has the
same shape.

Limits, each answered with a response and then a close:

- a malformed request: h11's ``error_status_hint`` (400 in general, 501 for
  a transfer coding it does not support), or 400 for what llhttp refuses
  (a request is served only if both parsers accept it; ``framing.py``);
- a request head larger than ``max_header_bytes``: 431;
- a body larger than ``max_body_bytes``: 413, decided from Content-Length
  before reading the body (and before any ``100 Continue``), or while
  counting a chunked body;
- a request whose bytes stop arriving for the read timeout: 408.
"""

from __future__ import annotations

from typing import Any

import h11

from server.protocols.http import llhttp
from server.protocols.http.common import (
    REASONS,
    SERVER_HEADER,
    App,
    Counters,
    HttpLimits,
    Response,
    ResponseCache,
    check_reason,
    error_body,
    error_headers,
    error_response,
)
from server.protocols.http.framing import AsyncMode, FramedConnection

_CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
_EOM = h11.EndOfMessage()  # h11's events are frozen: one serves every response


def _build_response(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    keepalive: int,
    date: tuple[bytes, bytes],
) -> h11.Response:
    """A validated h11.Response (raises if h11 refuses it, or its reason phrase could
    break the status line, which h11 does not check).

    Events are frozen, so one can be sent on any connection.
    """
    full = [*headers, SERVER_HEADER, date]
    if not keepalive:
        full.append((b"connection", b"close"))
    return h11.Response(status_code=status, headers=full, reason=check_reason(reason))


_responses: ResponseCache[h11.Response] = ResponseCache(_build_response)

# h11's state is about 1 KiB per connection, and is only needed while a
# request is in progress.  A server-side h11.Connection that has cycled back to
# IDLE/IDLE with nothing buffered behaves as a new one (the next Request sets
# their_http_version again; it is reset here for error responses sent before
# one), so connections hand theirs back to a bounded pool after each response.
H11_POOL_MAX = 1024
_h11_pools: dict[int, list[h11.Connection]] = {}


def _take_h11(max_header_bytes: int) -> h11.Connection:
    pool = _h11_pools.get(max_header_bytes)
    if pool:
        return pool.pop()
    return h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)


def _give_h11(conn: h11.Connection, max_header_bytes: int) -> None:
    pool = _h11_pools.setdefault(max_header_bytes, [])
    if len(pool) < H11_POOL_MAX:
        conn.their_http_version = None
        pool.append(conn)


class H11Connection(FramedConnection):
    """Sans-IO HTTP/1.1 server connection.

    Args:
        app: called once per complete request.
        limits: header and body size limits.
        counters: totals shared by all connections.
    """

    __slots__ = ()  # its h11.Connection is FramedConnection's _conn slot
    _conn: h11.Connection | None

    def __init__(self, app: App, limits: HttpLimits, counters: Counters) -> None:
        super().__init__(app, limits, counters)
        self._conn = None  # taken from the pool for a request

    # receive_data, pending_head, timed_out, stop_keepalive: FramedConnection's.

    # -- internals -----------------------------------------------------------

    def _h11(self) -> h11.Connection:
        conn = self._conn
        if conn is None:
            conn = self._conn = _take_h11(self._limits.max_header_bytes)
        return conn

    def _parse(self, head: bytes) -> int:
        conn = self._h11()
        if not llhttp.head_ok(head):
            return 400  # refused before h11 sees it, so its state is a fresh one's
        conn.receive_data(head)
        try:
            request = conn.next_event()
            assert type(request) is h11.Request  # the framing found h11's blank line
            conn.next_event()  # EndOfMessage if there is no body, else NEED_DATA
        except h11.RemoteProtocolError as exc:
            return exc.error_status_hint
        self._method = request.method
        self._target = request.target
        self._headers = request.headers
        self._version = request.http_version
        return 0

    def _raw(self, data: bytes) -> int:
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        conn.receive_data(data)
        try:
            # Data events until h11 needs more (the framing has the same pieces), or
            # EndOfMessage (after which an Upgrade request leaves h11 PAUSED)
            event = conn.next_event()
            while event is not h11.NEED_DATA and type(event) is not h11.EndOfMessage:
                event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return exc.error_status_hint
        return 0

    def _send(self, resp: Response) -> tuple[bytes, bool] | None:
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        try:
            reason = resp.reason if resp.reason is not None else REASONS.get(resp.status, b"")
            response = _responses.get(resp.status, reason, resp.headers, self._keepalive)
            head = conn.send(response)
            if resp.body and self._method != b"HEAD":
                data = head + conn.send(h11.Data(data=resp.body)) + conn.send(_EOM)
            else:
                data = head + conn.send(_EOM)
        except Exception:  # h11.LocalProtocolError, or headers that are not bytes pairs
            return None
        return data, conn.our_state is not h11.DONE or conn.their_state is not h11.DONE

    def _error(self, status: int) -> bytes:
        conn = self._h11()
        self._conn = None  # not pooled: it is in the middle of something
        state = conn.our_state
        try:
            response = h11.Response(
                status_code=status, headers=error_headers(status), reason=REASONS[status]
            )
            return (
                conn.send(response)
                + conn.send(h11.Data(data=error_body(status)))
                + conn.send(h11.EndOfMessage())
            )
        except h11.LocalProtocolError:
            # else a response was already sent or begun: closing is the answer
            return error_response(status) if state in (h11.IDLE, h11.SEND_RESPONSE) else b""

    def _continue(self) -> bytes:
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        return conn.send(_CONTINUE)

    def _next_cycle(self) -> None:
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        self._conn = None
        conn.start_next_cycle()
        _give_h11(conn, self._limits.max_header_bytes)


class H11AsgiConnection(AsyncMode, H11Connection):
    """H11Connection for an ASGI app (`framing.AsyncMode`): streamed bodies both ways."""

    __slots__ = ()

    def __init__(self, app: App, limits: HttpLimits, counters: Counters) -> None:
        super().__init__(app, limits, counters)
        self._init_async()

    def _stream_head(self, status: int, headers: Any) -> bytes | None:
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        try:
            response = _responses.get(status, REASONS.get(status, b""), headers, self._keepalive)
            return conn.send(response)
        except Exception:  # h11.LocalProtocolError, or headers that are not bytes pairs
            return None

    def _stream_body(self, chunk: bytes) -> bytes | None:
        conn = self._conn
        assert conn is not None
        if self._method == b"HEAD":
            return b""  # h11 frames a HEAD response as having no body
        try:
            return conn.send(h11.Data(data=chunk))
        except Exception:  # longer than its content-length, a body on a 204...
            return None

    def _stream_end(self) -> tuple[bytes, bool] | None:
        conn = self._conn
        assert conn is not None
        try:
            data = conn.send(_EOM)
        except h11.LocalProtocolError:  # shorter than its content-length
            return None
        return data, conn.our_state is not h11.DONE or conn.their_state is not h11.DONE
