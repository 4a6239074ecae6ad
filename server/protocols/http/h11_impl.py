"""HTTP/1.1 over h11: one ``h11.Connection`` per socket, bytes in, bytes out.

The reference parser (``--http h11``, the default).  The handler drains
``next_event()`` until h11 needs data, answers each complete request in order
by calling a synchronous app, and starts the next cycle for keep-alive
(uvicorn's ``h11_impl.handle_events`` does the same).  Pipelined requests are
therefore answered in order: h11 buffers the bytes of request N+1 until
``start_next_cycle()`` after response N.  ``httptools_impl.py`` has the same
shape; what both share is in ``common.py``.

Limits, each answered with a response and then a close:

- a malformed request: h11's ``error_status_hint`` (400 in general);
- a request head larger than ``max_header_bytes``: 431 (h11 raises once its
  incomplete-event buffer exceeds ``max_incomplete_event_size``);
- a body larger than ``max_body_bytes``: 413, decided from Content-Length
  before reading the body (and before any ``100 Continue``), or while
  counting a chunked body;
- a request whose bytes stop arriving for the read timeout: 408.
"""

from __future__ import annotations

import h11

from server.protocols.http.common import (
    APP_ERROR_BODY,
    APP_ERROR_HEADERS,
    REASONS,
    SERVER_HEADER,
    App,
    Counters,
    HttpLimits,
    Request,
    Response,
    ResponseCache,
    error_body,
    error_headers,
    error_response,
)

_CONTINUE = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
_EOM = h11.EndOfMessage()  # h11's events are frozen: one serves every response


def _build_response(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    keepalive: int,
    date: tuple[bytes, bytes],
) -> h11.Response:
    """A validated h11.Response (raises h11.LocalProtocolError if h11 refuses it).

    Events are frozen, so one can be sent on any connection.
    """
    full = [*headers, SERVER_HEADER, date]
    if not keepalive:
        full.append((b"connection", b"close"))
    return h11.Response(status_code=status, headers=full, reason=reason)


_responses: ResponseCache[h11.Response] = ResponseCache(_build_response)

# h11's state is about 1 KiB per connection, and is only needed while a
# request is in progress.  A server-side h11.Connection that has cycled back to
# IDLE/IDLE with nothing buffered behaves as a new one (the next Request sets
# their_http_version again; it is reset here for error responses sent before
# one), so idle keep-alive connections hand theirs back to a bounded pool.
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


class H11Connection:
    """Sans-IO HTTP/1.1 server connection.

    Args:
        app: called once per complete request.
        limits: header and body size limits.
        counters: totals shared by all connections.
    """

    __slots__ = (
        "_app",
        "_body",
        "_body_bytes",
        "_conn",
        "_counters",
        "_heads",
        "_keepalive",
        "_limits",
        "_request",
        "busy",
        "should_close",
    )

    def __init__(self, app: App, limits: HttpLimits, counters: Counters) -> None:
        self._app = app
        self._limits = limits
        self._counters = counters
        self._conn: h11.Connection | None = None  # taken from the pool on first bytes
        self._request: h11.Request | None = None
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._keepalive = True
        self._heads = 0  # request heads received whole
        self.should_close = False
        self.busy = False

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes (``b""`` = EOF); return the bytes of every response ready.

        Never raises for anything the peer sends.
        """
        if self.should_close:
            return b""
        conn = self._conn
        if conn is None:
            conn = self._conn = _take_h11(self._limits.max_header_bytes)
        out: list[bytes] = []
        try:
            conn.receive_data(data)
            self._handle_events(out)
        except h11.RemoteProtocolError as exc:
            self._fail(exc.error_status_hint, out)
        self.busy = busy = not self.should_close and (
            conn.their_state is not h11.IDLE or bool(conn.trailing_data[0])
        )
        if not busy and not self.should_close and conn.our_state is h11.IDLE:
            _give_h11(conn, self._limits.max_header_bytes)  # idle: no h11 state held
            self._conn = None
        return b"".join(out)

    def pending_head(self) -> int:
        # A partial head is the only thing h11 leaves buffered while the peer
        # is IDLE: receive_data handles every whole request before returning.
        conn = self._conn
        if conn is None or self.should_close or conn.their_state is not h11.IDLE:
            return 0
        return self._heads + 1 if conn.trailing_data[0] else 0

    def timed_out(self) -> bytes:
        out: list[bytes] = []
        if self.busy:
            self._fail(408, out)
        self.should_close = True
        return b"".join(out)

    def stop_keepalive(self) -> None:
        self._keepalive = False
        if not self.busy:
            self.should_close = True

    # -- internals -----------------------------------------------------------

    def _handle_events(self, out: list[bytes]) -> None:
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        while True:
            event = conn.next_event()
            if type(event) is h11.Data:
                self._body_bytes += len(event.data)
                if self._body_bytes > self._limits.max_body_bytes:
                    self._fail(413, out)
                    return
                self._body.append(event.data)
            elif type(event) is h11.Request:
                if not self._start(event, out):
                    return
            elif type(event) is h11.EndOfMessage:
                self._respond(out)
                if self.should_close or conn.our_state is not h11.DONE:
                    self.should_close = True  # MUST_CLOSE, or ERROR after a refused response
                    return
                if conn.their_state is h11.DONE:
                    # Without bytes of a next request h11 answers NEED_DATA,
                    # not PAUSED, so the cycle is restarted here.
                    conn.start_next_cycle()
            elif event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    out.append(conn.send(_CONTINUE))
                return
            elif event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                self.should_close = True  # e.g. CONNECT/Upgrade: not served
                return
            elif type(event) is h11.ConnectionClosed:
                self.should_close = True
                return

    def _start(self, request: h11.Request, out: list[bytes]) -> bool:
        """Check a request head against the limits; False if it was refused."""
        self._heads += 1
        self._request = request
        self._body = []
        self._body_bytes = 0
        # h11 enforces max_incomplete_event_size only while a head is still
        # incomplete; a whole head arriving in one read is measured here.
        head_bytes = len(request.method) + len(request.target) + 13
        content_length = -1
        chunked = False
        for name, value in request.headers:
            head_bytes += len(name) + len(value) + 4
            if name == b"content-length":
                content_length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if head_bytes > self._limits.max_header_bytes:
            self._fail(431, out)
            return False
        if request.http_version not in (b"1.1", b"1.0"):
            self._fail(505, out)  # h11 parses any HTTP/x.y; we speak 1.x
            return False
        if content_length > self._limits.max_body_bytes:
            self._fail(413, out)
            return False
        if chunked and content_length >= 0:
            # RFC 9112 6.1: both framings on one request is a smuggling
            # shape; the body is framed by Transfer-Encoding and the
            # connection must close after the response.
            self._keepalive = False
        return True

    def _respond(self, out: list[bytes]) -> None:
        mark = len(out)
        request = self._request
        assert request is not None
        self._request = None
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = []
        req = Request(request.method, request.target, request.headers, request.http_version, body)
        try:
            resp = self._app(req)
        except Exception:
            self._counters.app_errors += 1
            resp = Response(500, APP_ERROR_HEADERS, APP_ERROR_BODY)
        self._counters.requests += 1
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        try:
            reason = resp.reason if resp.reason is not None else REASONS.get(resp.status, b"")
            response = _responses.get(resp.status, reason, resp.headers, self._keepalive)
            out.append(conn.send(response))
            if resp.body and request.method != b"HEAD":
                out.append(conn.send(h11.Data(data=resp.body)))
            out.append(conn.send(_EOM))
        except h11.LocalProtocolError:
            # The app produced something h11 refuses (bad header, body longer
            # than its content-length): the peer gets a 500 and a close.
            # Earlier pipelined responses in `out` stay; this one is replaced.
            self._counters.app_errors += 1
            del out[mark:]
            out.append(error_response(500))
            self.should_close = True

    def _fail(self, status: int, out: list[bytes]) -> None:
        """Answer a client error with `status`, then close."""
        self._counters.client_errors += 1
        self.should_close = True
        conn = self._conn
        assert conn is not None  # held while a request is in progress
        state = conn.our_state
        mark = len(out)
        try:
            response = h11.Response(
                status_code=status, headers=error_headers(status), reason=REASONS[status]
            )
            out.append(conn.send(response))
            out.append(conn.send(h11.Data(data=error_body(status))))
            out.append(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            del out[mark:]
            if state in (h11.IDLE, h11.SEND_RESPONSE):
                out.append(error_response(status))
            # else a response was already sent or begun: closing is the answer
