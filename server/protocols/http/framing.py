"""Request framing both parsers share: when a head, a chunk or a body is complete.

h11 looks at a request head only once its blank line has arrived, at a chunk
header once its CRLF has, and buffers what is incomplete (431 once that
passes ``max_header_bytes``); llhttp looks at every byte as it arrives and
rejects a bad one at once.  Fed the same bytes in different pieces, the two
would answer at different moments, and a truncated bad request would get a
400 from one and nothing from the other.  So the framing is done here, once,
exactly as h11 does it, and each parser is handed complete pieces only:

- a head: from its first byte to the blank line that ends it (h11's
  ``\\n\\r?\\n``).  A first byte below ``!`` is refused at once (h11's
  "obviously invalid" check); more than ``max_header_bytes`` of a head
  without its end, or a complete head longer than ``max_header_bytes`` plus
  the LF that ends it, is 431 however the bytes arrive;
- a Content-Length body: byte counts;
- a chunked body: each chunk-size line up to its CRLF, the chunk's data,
  the CRLF after it (compared byte by byte), the trailer block.

A request is served only if both h11 and llhttp accept it: each head is
parsed by the connection's own parser and checked with the other one's rules
(``H11Connection`` asks llhttp, ``HttptoolsConnection`` checks h11's
grammar, and asks h11 itself when unsure); chunk-size lines and trailers are
checked here against both.  Where they disagree the stricter answer wins; a
head llhttp refuses is a 400, one only h11 refuses gets h11's status (400,
or 501 for a transfer coding h11 does not support).

`FramedConnection` is the part of a ``ServerProtocol`` this decides:
``receive_data``, the limits, 100-continue, keep-alive and pipelining, the
timeouts.  A parser module subclasses it with how a head is parsed and how a
response is written (`_parse`, `_raw`, `_send`, `_error`, `_continue`,
`_next_cycle`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Final

import h11

from server.apps.asgi import RequestCycle, build_scope
from server.protocols.http import llhttp
from server.protocols.http.common import (
    APP_ERROR_BODY,
    APP_ERROR_HEADERS,
    App,
    Counters,
    Headers,
    HttpLimits,
    Request,
    Response,
    error_response,
)

logger = logging.getLogger("server.asgi")

BLANK_LINE: Final = re.compile(rb"\n\r?\n")
# h11's chunk header (``_abnf.chunk_header``); llhttp is asked too (chunk_size).
_H11_CHUNK: Final = re.compile(rb"(?P<size>[0-9A-Fa-f]{1,20})(?P<ext>;.*)?[ \t]*\r\n")
# What both surely accept: no extension, and no size llhttp finds too large.
_PLAIN_CHUNK: Final = re.compile(rb"[0-9A-Fa-f]{1,16}\r\n")

# What the next bytes are.
HEAD: Final = 0  # a request head (or nothing yet)
BODY: Final = 1  # a Content-Length body
CHUNK_SIZE: Final = 2  # a chunk-size line
CHUNK_DATA: Final = 3  # a chunk's data
CHUNK_END: Final = 4  # the CRLF after a chunk's data
TRAILERS: Final = 5  # the trailer block after the last chunk


def chunk_size(line: bytes) -> int:
    """The size a chunk-size line (CRLF included) declares, or -1 if h11 or llhttp refuses it."""
    if _PLAIN_CHUNK.fullmatch(line):
        return int(line[:-2], 16)
    match = _H11_CHUNK.fullmatch(line)
    if match is None or not llhttp.chunk_line_ok(line):
        return -1
    return int(match["size"], 16)


def trailers_status(block: bytes) -> int:
    """0 if h11 and llhttp accept this trailer block (lines and the blank line), else the
    status to refuse it with (400; or h11's: 501 for a Transfer-Encoding trailer)."""
    if block == b"\r\n":
        return 0
    if not llhttp.trailers_ok(block):
        return 400
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(llhttp.CHUNKED_HEAD + b"0\r\n" + block)
    try:
        while type(conn.next_event()) is not h11.EndOfMessage:
            pass
    except h11.RemoteProtocolError as exc:
        return exc.error_status_hint
    return 0


_NO_BODY: Final[list[bytes]] = []  # between requests; _start gives each request its own


def _tokens(value: bytes) -> list[bytes]:
    # h11's get_comma_header for one value: lowercased, split, stripped.
    return [v.strip() for v in value.lower().split(b",")]


class FramedConnection:
    """Sans-IO HTTP/1.1 server connection, less its parser.

    Args:
        app: called once per complete request.
        limits: header and body size limits.
        counters: totals shared by all connections.
    """

    __slots__ = (
        "_app",
        "_body",
        "_body_bytes",
        "_buf",
        "_client",
        "_conn",
        "_counters",
        "_expect",
        "_footer",
        "_headers",
        "_heads",
        "_keepalive",
        "_limits",
        "_method",
        "_peer",
        "_peer_keepalive",
        "_remaining",
        "_scheme",
        "_searched",
        "_sent",
        "_state",
        "_status",
        "_t0",
        "_target",
        "_transport",
        "_trusted",
        "_version",
        "busy",
        "should_close",
    )

    responding = False  # a synchronous app has answered by the time receive_data returns
    needs_transport = False
    _hold = False  # AsyncMode: the bytes after a request wait for its response

    def __init__(self, app: App, limits: HttpLimits, counters: Counters) -> None:
        self._app = app
        self._limits = limits
        self._counters = counters
        self._keepalive = True  # False after stop_keepalive
        self._heads = 0  # request heads received whole
        # What has arrived of a head, line or trailer block: b"" when nothing.
        self._buf: bytes | bytearray = b""
        self._searched = 0  # where in _buf to resume looking for its end
        self._state = HEAD
        self._remaining = 0  # bytes left of a Content-Length body or of a chunk
        self._footer = b""  # what is left to come of the CRLF after a chunk
        self._method = b""
        self._target = b""
        self._headers: Headers = ()
        self._version = b""
        self._peer_keepalive = True  # the request in progress allows keep-alive
        self._expect = False  # it waits for 100 Continue, and no body byte came
        self._body: list[bytes] = _NO_BODY
        self._body_bytes = 0
        # Who sent the request and over what: the peer, unless trusted proxy
        # headers said otherwise (`server.protocols.http.observe`).
        self._client: Any = None
        self._scheme: str | None = None  # the listener's, unless a trusted proxy says
        self.should_close = False
        self.busy = False

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes (``b""`` = EOF); return the bytes of every response ready.

        Never raises for anything the peer sends.
        """
        if self.should_close:
            return b""
        out: list[bytes] = []
        if not data:
            if self._state != HEAD or self._buf:
                self._fail(400, out)  # the peer closed mid-request
            self.should_close = True
        elif self._buf:
            buf = self._buf
            buf += data
            self._frame(buf, out)
        else:
            self._frame(data, out)
        self.busy = not self.should_close and (self._state != HEAD or bool(self._buf))
        return out[0] if len(out) == 1 else b"".join(out)

    def pending_head(self) -> int:
        if self.should_close or self._state != HEAD or not self._buf:
            return 0
        return self._heads + 1

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

    def drain(self) -> None:
        # The next response says "Connection: close" and the loop closes
        # after it; an idle connection waits for it (or its keep-alive timeout).
        self._keepalive = False

    # -- framing -------------------------------------------------------------

    def _frame(self, data: bytes | bytearray, out: list[bytes]) -> None:
        """Consume `data` (``self._buf`` itself when bytes were left over)."""
        n = len(data)
        pos = 0
        limit = self._limits.max_header_bytes
        while pos < n and not self._hold:
            state = self._state
            if state == HEAD:
                if data[pos] < 0x21:
                    self._fail(400, out)
                    return
                match = BLANK_LINE.search(data, pos + self._searched)
                if match is None:
                    if n - pos > limit:
                        self._fail(431, out)
                        return
                    self._searched = max(0, n - pos - 2)
                    break
                end = match.end()
                self._searched = 0
                if end - pos > limit + 1:
                    self._fail(431, out)
                    return
                head = data if end == n and not pos and type(data) is bytes else data[pos:end]
                pos = end
                if not self._start(bytes(head), out):
                    return
            elif state in (BODY, CHUNK_DATA):
                take = min(self._remaining, n - pos)
                piece = bytes(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._data(piece, out):
                    return
                if not self._remaining:
                    if state == BODY:
                        if not self._complete(out):
                            return
                    else:
                        self._state = CHUNK_END
                        self._footer = b"\r\n"
            elif state == CHUNK_SIZE:
                end = data.find(b"\r\n", pos + max(0, self._searched - 1))
                if end < 0:
                    if n - pos > limit:
                        self._fail(431, out)
                        return
                    self._searched = n - pos
                    break
                self._searched = 0
                line = bytes(data[pos : end + 2])
                pos = end + 2
                size = chunk_size(line)
                status = 400 if size < 0 else self._raw(line)
                if status:
                    self._fail(status, out)
                    return
                if size:
                    self._state = CHUNK_DATA
                    self._remaining = size
                else:
                    self._state = TRAILERS
            elif state == CHUNK_END:
                footer = self._footer
                piece = bytes(data[pos : pos + len(footer)])
                status = 400 if piece != footer[: len(piece)] else self._raw(piece)
                if status:
                    self._fail(status, out)
                    return
                pos += len(piece)
                self._footer = footer = footer[len(piece) :]
                if not footer:
                    self._state = CHUNK_SIZE
            else:  # TRAILERS, as h11 reads them: a lone CRLF or LF, or up to a blank line
                if data[pos] == 0x0A:
                    end = pos + 1
                elif data[pos : pos + 2] == b"\r\n":
                    end = pos + 2
                else:
                    match = BLANK_LINE.search(data, pos + self._searched)
                    if match is None:
                        if n - pos > limit:
                            self._fail(431, out)
                            return
                        self._searched = max(0, n - pos - 2)
                        break
                    end = match.end()
                    self._searched = 0
                block = bytes(data[pos:end])
                pos = end
                status = trailers_status(block) or self._raw(block)
                if status:
                    self._fail(status, out)
                    return
                self._expect = False
                if not self._complete(out):
                    return
        if type(data) is bytearray:  # it is self._buf
            if pos < n:
                del data[:pos]
            else:
                self._buf = b""
        elif pos < n:
            self._buf = bytearray(data[pos:])
        if self._expect and self._state != HEAD:
            self._expect = False
            out.append(self._continue())

    def _start(self, head: bytes, out: list[bytes]) -> bool:
        """Parse a complete head and check it against the limits; False if it was refused
        or the connection closes."""
        self._heads += 1
        status = self._parse(head)
        if status:
            self._fail(status, out)
            return False
        version = self._version
        # h11's rules: keep-alive unless HTTP/1.0 or Connection: close; 100-continue
        # only from HTTP/1.1; the body framed by Transfer-Encoding, else Content-Length.
        keep = version >= b"1.1"
        wants_continue = False
        content_length = -1
        chunked = False
        for name, value in self._headers:
            if name == b"content-length":
                content_length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                if b"close" in _tokens(value):
                    keep = False
            elif name == b"expect" and b"100-continue" in _tokens(value):
                wants_continue = True
        self._peer_keepalive = keep
        if version not in (b"1.1", b"1.0"):
            self._fail(505, out)  # both parsers read HTTP/2.0; we speak 1.x
            return False
        if content_length > self._limits.max_body_bytes:
            self._fail(413, out)
            return False
        # (Transfer-Encoding with Content-Length, a smuggling shape, never gets
        # here: llhttp refuses it, so both parsers answer it with a 400.)
        self._body = []
        self._body_bytes = 0
        if chunked:
            self._state = CHUNK_SIZE
        elif content_length > 0:
            self._state = BODY
            self._remaining = content_length
        else:
            return self._complete(out)
        self._expect = wants_continue and version >= b"1.1"
        return True

    def _data(self, piece: bytes, out: list[bytes]) -> bool:
        """A piece of body; False if it was refused."""
        self._expect = False
        self._body_bytes += len(piece)
        if self._body_bytes > self._limits.max_body_bytes:
            self._fail(413, out)
            return False
        status = self._raw(piece)
        if status:
            self._fail(status, out)
            return False
        self._body.append(piece)
        return True

    def _complete(self, out: list[bytes]) -> bool:
        """Answer the complete request; False if the connection closes after it."""
        self._expect = False
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = _NO_BODY
        request = Request(
            self._method,
            self._target,
            self._headers,
            self._version,
            body,
            self._client,
            self._scheme,
        )
        try:
            resp = self._app(request)
        except Exception:
            logger.exception("Exception in the application")
            self._counters.app_errors += 1
            resp = Response(500, APP_ERROR_HEADERS, APP_ERROR_BODY)
        self._counters.requests += 1
        sent = self._send(resp)
        if sent is None:
            # The app produced something h11 refuses (bad header, body longer
            # than its content-length): the peer gets a 500 and a close.
            self._counters.app_errors += 1
            out.append(error_response(500))
            self.should_close = True
            return False
        data, close = sent
        out.append(data)
        return self._answered(close)

    def _answered(self, close: bool) -> bool:
        """The response is out: read the next head, or close; False if closing."""
        self._state = HEAD
        if close:
            self.should_close = True
            return False
        # An idle connection keeps nothing of the request it answered.
        self._method = self._target = self._version = b""
        self._headers = ()
        self._peer_keepalive = True
        self._next_cycle()
        return True

    def _fail(self, status: int, out: list[bytes]) -> None:
        """Answer a client error with `status`, then close."""
        self._counters.client_errors += 1
        self.should_close = True
        out.append(self._error(status))

    # -- the transport, for a subclass that needs one (``needs_transport``) -------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def connection_lost(self, exc: OSError | None) -> None:
        self._transport = None

    def pause_writing(self) -> None:
        pass  # a synchronous response is queued whole: nothing to pause

    def resume_writing(self) -> None:
        pass

    # -- what a parser module provides ------------------------------------------

    def _parse(self, head: bytes) -> int:
        """Parse a complete head into ``_method``, ``_target``, ``_headers`` (lowercase
        names, values as h11 gives them) and ``_version``; 0, or the status to refuse it with."""
        raise NotImplementedError

    def _raw(self, data: bytes) -> int:
        """Body bytes as they arrived (for a parser that follows them); 0, or a status."""
        return 0

    def _send(self, resp: Response) -> tuple[bytes, bool] | None:
        """The bytes of the app's response and whether to close after it; None if refused."""
        raise NotImplementedError

    def _error(self, status: int) -> bytes:
        """The bytes of the server's own error response with `status`."""
        raise NotImplementedError

    def _continue(self) -> bytes:
        """The bytes of ``100 Continue``."""
        raise NotImplementedError

    def _next_cycle(self) -> None:
        """A request was answered and the connection goes on: drop what the parser
        holds for it."""


# -- answering later: ASGI -----------------------------------------------------------


class AsyncMode(FramedConnection):
    """What an HTTP connection adds when its app answers later (ASGI).

    A parser's connection class becomes an ASGI one by putting this first
    among its bases (``class X(AsyncMode, H11Connection)``; the parser
    classes add no slots of their own, so the two layouts combine).  The
    framing and the limits stay the parser's; what changes is when the app
    hears of a request and when the response goes:

    - a request with a body starts its `server.apps.asgi.RequestCycle` once
      its head is complete, and the body goes to it piece by piece; one
      without a body starts it when it is complete;
    - a response that is whole when the app's first step returns goes out
      with the other output of that ``receive_data`` call; one that comes
      later is written through the transport;
    - while a response is not complete, the bytes after its request are
      held (``_hold``), unframed, so pipelined requests are answered in
      order; the response's end frames them.
    """

    __slots__ = (
        "_close_after",
        "_continue_asked",
        "_continue_owed",
        "_cycle",
        "_head_written",
        "_hold",
        "_out",
        "_peer_eof",
        "_reading_paused",
        "_request_done",
        "_start_task",
        "_streamed",
        "_streaming",
        "responding",
    )

    needs_transport = True

    _app: Any  # server.apps.asgi.AsgiApp

    def _init_async(self) -> None:
        self._transport: Any = None
        self._start_task: Any = None  # the loop's run_eagerly (or create_task)
        self._cycle: Any = None  # server.apps.asgi.RequestCycle
        self._out: list[bytes] | None = None  # output of the framing call in progress
        self._reading_paused = False
        self._continue_owed = False
        self._continue_asked = False  # receive() asked for it inside a framing call
        self._request_done = False
        self._head_written = False
        self._close_after = False
        self._peer_eof = False
        self._hold = False
        self.responding = False
        self._streaming: Any = None  # a parser's state for a streamed response
        self._streamed = 0  # body bytes of it sent

    # -- the loop's side ----------------------------------------------------------------

    def connection_lost(self, exc: OSError | None) -> None:
        cycle = self._cycle
        if cycle is not None:
            cycle.disconnect()
        self._transport = None

    def pause_writing(self) -> None:
        if self._cycle is not None:
            self._cycle.pause_writing()

    def resume_writing(self) -> None:
        if self._cycle is not None:
            self._cycle.resume_writing()

    def receive_data(self, data: bytes) -> bytes:
        if self._hold:  # a response is pending: keep the bytes for after it
            if not data:
                self._peer_eof = True
                if self._cycle is not None:
                    self._cycle.eof()
            elif self._buf:
                self._buf += data
            else:
                self._buf = bytearray(data)
            return b""
        out = super().receive_data(data)
        if self._continue_asked:  # no body byte came with the head: the 100 is due now
            self._continue_asked = False
            if self._continue_owed:
                self._continue_owed = False
                if not self._head_written and not self.should_close:
                    out += self._continue()
        if self._cycle is not None:
            self.busy = not self.should_close
        return out

    def pending_head(self) -> int:
        return 0 if self._hold else super().pending_head()

    def timed_out(self) -> bytes:
        cycle = self._cycle
        if cycle is not None:
            cycle.disconnect()
            if self._head_written:  # too late for a 408
                self.should_close = True
                return b""
        return super().timed_out()

    # -- the framing's hooks ------------------------------------------------------------------

    def _start(self, head: bytes, out: list[bytes]) -> bool:
        self._request_done = False  # a new request: its body is to come, if it has one
        if not super()._start(head, out):
            return False
        if self._cycle is None and self._state != HEAD:  # a body follows: start now
            self._continue_owed = self._expect
            self._expect = False  # 100 Continue waits for the app's receive()
            self._begin(out)
            return not self.should_close  # the app failed, or answered and closes: stop
        return True

    def _data(self, piece: bytes, out: list[bytes]) -> bool:
        self._continue_owed = False  # the client did not wait for a 100
        if not super()._data(piece, out):
            return False
        self._body.pop()  # it goes to the app instead
        cycle = self._cycle
        if cycle is not None and not cycle.complete:
            self._out = out
            cycle.feed(piece)
            self._out = None
        return True

    def _complete(self, out: list[bytes]) -> bool:
        self._expect = False
        self._body = _NO_BODY
        self._request_done = True
        cycle = self._cycle
        if cycle is None:  # no body: the request is whole before the app starts
            cycle = self._begin(out, whole=True)
        elif not cycle.complete:
            self._out = out
            cycle.body_done()
            self._out = None
        if cycle.complete and self._cycle is cycle:
            return self._end_cycle()
        if self._cycle is None:  # ended (a refused response) and closing
            return not self.should_close
        self._hold = True
        self.responding = True
        return True

    def _fail(self, status: int, out: list[bytes]) -> None:
        cycle = self._cycle
        if cycle is not None:  # refused mid-body: the app's request ends there
            cycle.disconnect()
            if self._head_written:  # its response began: no error response in the middle
                self._counters.client_errors += 1
                self.should_close = True
                return
        super()._fail(status, out)

    # -- the cycle's side -----------------------------------------------------------------

    def _begin(self, out: list[bytes], whole: bool = False) -> Any:
        """Make the request's cycle and run the app's first step (`whole`: the
        request has no body, so receive() has it all at once)."""
        cycle = RequestCycle(self)
        if whole:
            cycle.body_done()
        if self._peer_eof:
            cycle.eof()  # a pipelined request after the peer's EOF
        self._cycle = cycle
        self._head_written = False
        self._close_after = False
        if self._client is None and self._transport is not None:
            self._client = self._transport.get_extra_info("peername") or ()
        app = self._app
        scope = build_scope(
            app,
            self._method,
            self._target,
            self._headers,
            self._version,
            self._client or None,
            self._scheme,
        )
        start = self._start_task
        if start is None:  # the connection's first request: the loop it runs on
            loop = asyncio.get_running_loop()
            self._start_task = start = getattr(loop, "run_eagerly", loop.create_task)
        self._out = out
        try:
            cycle.task = task = start(app.app(scope, cycle.receive, cycle.send))
            if task.done():  # the common case: answered in its first step
                self._app_done(task)
            else:
                task.add_done_callback(self._app_done)
        finally:
            self._out = None
        return cycle

    def _app_done(self, task: Any) -> None:
        cycle = self._cycle
        if cycle is None or cycle.task is not task:
            return  # that request's response was finished already
        if task.cancelled():
            exc: BaseException | None = None
            failed = True
        else:
            exc = task.exception()
            failed = exc is not None
        if not failed and cycle.complete:
            return
        if exc is not None and not isinstance(exc, OSError):
            logger.error("Exception in ASGI application", exc_info=exc)
        if failed or not (cycle.complete or cycle.closed):  # no answer to a gone client: fine
            self._counters.app_errors += 1
        if not self._head_written and not self._closing():
            # Nothing of the response went out: a 500, then close.
            cycle.complete = True
            self._keepalive = False
            self.write_response(500, APP_ERROR_HEADERS, APP_ERROR_BODY)
        else:
            cycle.complete = True
            cycle.disconnect()
            self._cycle = None
            self.responding = False
            self.should_close = True
            self._abandon()

    def _closing(self) -> bool:
        return self._transport is None or (self._cycle is not None and self._cycle.closed)

    def _write(self, data: bytes) -> None:
        out = self._out
        if out is not None:
            out.append(data)
        elif self._transport is not None:
            self._transport.write(data)

    def write_response(
        self, status: int, headers: Any, body: bytes, reason: bytes | None = None
    ) -> None:
        """A whole response, written at once (cached head, as the synchronous path)."""
        if not self._request_done:
            self._keepalive = False  # answered before its body was read: it says it closes
        resp = Response(status, headers if type(headers) is list else list(headers), body, reason)
        sent = self._send(resp)
        # Counted before the write: epoll sends at once, and a client that has
        # its response may read /stats (or a test the counters) at once.
        self._counters.requests += 1
        if sent is None:
            self._counters.app_errors += 1
            self._write(error_response(500))
            self._head_written = True
            self._response_done(True)
            return
        data, close = sent
        self._head_written = True
        self._write(data)
        self._response_done(close)

    def write_head(self, status: int, headers: Any) -> bool:
        if not self._request_done:
            self._keepalive = False
        data = self._stream_head(status, headers)
        if data is None:
            return False
        self._head_written = True
        self._write(data)
        return True

    def write_body(self, chunk: bytes) -> bool:
        data = self._stream_body(chunk)
        if data is None:
            return False
        if data:
            self._write(data)
        return True

    def write_end(self) -> None:
        ended = self._stream_end()
        self._counters.requests += 1  # before the write, as in write_response
        if ended is None:  # shorter than its content-length: the peer cannot frame it
            self._counters.app_errors += 1
            self._response_done(True)
            return
        data, close = ended
        if data:
            self._write(data)
        self._response_done(close)

    def send_continue(self) -> None:
        if self._continue_owed:
            if self._out is not None:  # inside a framing call: the body may be in this read
                self._continue_asked = True
                return
            self._continue_owed = False
            if not self._head_written:
                self._write(self._continue())

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _response_done(self, close: bool) -> None:
        """The response is complete (or refused); it was counted before its last write."""
        self._close_after = close or not self._request_done
        cycle = self._cycle
        if cycle is not None:
            cycle.complete = True
        if self._out is not None:
            return  # inside a framing call: _complete takes it from here
        if not self._request_done:
            # Answered before its body was read: close (the rest is discarded
            # by the lingering close) rather than frame it.
            self._cycle = None
            self.responding = False
            self.should_close = True
            self._abandon()
            return
        # Not from here: this runs inside the app's Task (its send()), and the
        # next held request's Task cannot start eagerly inside another one.
        asyncio.get_running_loop().call_soon(self._resume)

    def _end_cycle(self) -> bool:
        self._cycle = None
        self._hold = False
        self.responding = False
        if self._reading_paused:
            self.resume_reading()
        return self._answered(self._close_after)

    def _resume(self) -> None:
        """The response ended outside a framing call: frame what was held."""
        if self._transport is None:
            return  # the connection went meanwhile
        out: list[bytes] = []
        if self._end_cycle() and (self._buf or self._peer_eof):
            self._out = out
            try:
                if self._buf:
                    self._frame(self._buf, out)
                if self._peer_eof and not self._hold and not self.should_close:
                    if self._state != HEAD or self._buf:
                        self._fail(400, out)  # the peer closed mid-request
                    self.should_close = True
            finally:
                self._out = None
        self.busy = not self.should_close and (
            self._cycle is not None or self._state != HEAD or bool(self._buf)
        )
        if out:
            self._write(b"".join(out))
        if self.should_close and self._transport is not None and not self._hold:
            self._transport.close()

    def _abandon(self) -> None:
        # Inside a framing call the loop closes it, after sending that call's output.
        if self._out is None and self._transport is not None:
            self._transport.close()

    # -- what the parser module adds for streamed responses -------------------------------

    def _stream_head(self, status: int, headers: Any) -> bytes | None:
        raise NotImplementedError

    def _stream_body(self, chunk: bytes) -> bytes | None:
        raise NotImplementedError

    def _stream_end(self) -> tuple[bytes, bool] | None:
        raise NotImplementedError
