"""Completion I/O with io_uring, through ``uring_backend.Ring``.

How this mechanism behaves, and what follows for this module:

- One multishot accept stays armed on the listener and posts a CQE per new
  connection; the CQE's ``res`` is the new fd.  It ends (no
  ``IORING_CQE_F_MORE``) on any error: EMFILE/ENFILE re-arm after a timeout
  op of ``ACCEPT_RETRY_DELAY_S``, so open connections keep being served.
  Accepted sockets inherit ``TCP_NODELAY`` from the listener (Linux copies
  it on accept), so no per-connection ``setsockopt`` is needed.
- Each connection has one multishot recv with buffer selection: the kernel
  picks a provided buffer only when bytes arrive, so an idle connection holds
  no receive memory.  The recv ends on EOF (``res == 0``), on error, or with
  ``-ENOBUFS`` when the buffer ring ran dry; the last is re-armed, since the
  ring returns the batch's buffers before the next submit.  It can also end
  with ``F_MORE`` clear and data (e.g. after a CQ overflow): also re-armed.
- At most one send is in flight per connection, so bytes leave in order; a
  short send resumes at an offset into the same ``bytes`` (no copy), and
  whatever was queued meanwhile is joined into the next send.  ``Ring``
  keeps each send's ``bytes`` referenced until its completion.
- An fd must not be closed while ops on it are in flight (the ring holds a
  file reference and the ops would outlive the close); closing cancels the
  connection's recv, waits for the final CQE of every op that names the fd
  (recv, send, shutdown, cancel), then closes with an ``IORING_OP_CLOSE`` in
  the same batch as other work.  Waiting for all of them matters: an op
  punted to io-wq (SHUTDOWN always is) looks the fd number up only when it
  runs, so after an early close it would hit the next connection given that
  number.  The record (and its send buffer) lives until the close completes.
- ``user_data`` carries the op in its top byte and the connection id below;
  connection ids are never reused, so a late CQE cannot hit a newer
  connection.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections import deque
from enum import IntEnum
from typing import Final

from server.backends.base import (
    ACCEPT_RETRY_DELAY_S,
    ACCEPTED,
    CLOSED,
    OUTPUT_HIGH_WATER_BYTES,
    OUTPUT_LOW_WATER_BYTES,
    RECEIVED,
    BackendName,
    BackendOptions,
    BackendStatistics,
    BackendUnavailable,
    Event,
)
from uring_backend import Ring, UringUnavailable
from uring_backend.ring import F_MORE

CID_BITS: Final = 56
CID_MASK: Final = (1 << CID_BITS) - 1
LISTENER_CID: Final = 0
SHUTDOWN_DRAIN_S: Final = 2.0
SEND_WAIT_CAP_S: Final = 0.001


class Op(IntEnum):
    ACCEPT = 1
    RECV = 2
    SEND = 3
    CANCEL = 4
    CLOSE = 5
    WAKEUP = 6
    ACCEPT_RETRY = 7
    CANCEL_ACCEPT = 8
    SHUTDOWN = 9
    CANCEL_RECV = 10


# user_data = op (8 bits) << 56 | connection id (56 bits).  Decoded in one
# place, inline in UringBackend.wait() (op = ud >> CID_BITS, cid = ud & CID_MASK),
# because a function call there would cost more than the decoding.
def encode(op: Op, cid: int) -> int:
    return (op << CID_BITS) | cid


_RECV: Final = int(Op.RECV)
_SEND: Final = int(Op.SEND)
_SEND_BASE: Final = _SEND << CID_BITS
_FD_OPS: Final = (Op.RECV, Op.SEND, Op.SHUTDOWN, Op.CANCEL, Op.CANCEL_RECV)
_ACCEPT_UD: Final = encode(Op.ACCEPT, LISTENER_CID)
_ACCEPT_RETRY_UD: Final = encode(Op.ACCEPT_RETRY, LISTENER_CID)
_CANCEL_ACCEPT_UD: Final = encode(Op.CANCEL_ACCEPT, LISTENER_CID)
_WAKEUP_UD: Final = encode(Op.WAKEUP, LISTENER_CID)
_RESET: Final = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT)


class _Conn:
    __slots__ = (
        "aborted",
        "cid",
        "close_queued",
        "closing",
        "eof",
        "error",
        "fd",
        "lingering",
        "out",
        "out_bytes",
        "reading",
        "recv_armed",
        "send_buf",
        "send_off",
    )

    def __init__(self, cid: int, fd: int) -> None:
        self.cid = cid
        self.fd = fd
        self.recv_armed = False  # a multishot recv is in flight
        self.reading = True  # we want bytes (false on EOF, backpressure, close)
        self.send_buf: bytes | None = None  # the one send in flight
        self.send_off = 0
        # Queued behind the send in flight.  A list, not a deque: an empty
        # deque is 760 bytes, a list 56, and most connections never queue.
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.closing = False
        self.lingering = False  # our side shut down; discarding input until EOF
        self.aborted = False
        self.close_queued = False
        self.eof = False
        self.error: OSError | None = None


class UringBackend:
    """Backend on io_uring; see the module docstring."""

    name: BackendName = "uring"

    def __init__(self, options: BackendOptions) -> None:
        self._options = options
        try:
            self._ring = Ring(
                options.ring_entries,
                cq_factor=options.cq_factor,
                buffers=options.recv_buffers,
                buffer_size=options.recv_buffer_size,
                sqpoll=options.sqpoll,
            )
        except UringUnavailable as exc:
            raise BackendUnavailable(str(exc)) from exc
        self._conns: dict[int, _Conn] = {}
        self._parked: deque[int] = deque()  # accepted fds beyond max_connections
        self._listener: socket.socket | None = None
        self._accept_armed = False
        self._accepting = False
        self._shutting_down = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._wakeup_fd = self._wakeup_r.fileno()
        self._ring.prep_poll_multishot(self._wakeup_fd, _WAKEUP_UD)
        self._next_cid = 1
        self._sends_queued = 0  # sends queued in this pass (see wait())
        self._events: list[Event] = []
        self._accepted = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._extra_syscalls = 0
        self._accept_errors = 0
        self._paused_reads = 0

    # -- the interface ---------------------------------------------------------

    def listen(self, sock: socket.socket) -> None:
        self._listener = sock
        self._accepting = True
        self._arm_accept()

    def stop_accepting(self) -> None:
        self._accepting = False
        if self._accept_armed:
            self._disarm_accept()  # the listener closes when the accept ends
        else:
            self._close_listener()
        while self._parked:
            os.close(self._parked.popleft())

    def wait(self, timeout: float | None) -> list[Event]:
        events = self._events
        self._events = []
        min_complete = 1
        if events:
            timeout = 0
        elif self._sends_queued:
            # Sends on a socket with room complete inline, during the enter
            # that submits them, and would satisfy a wait for one completion
            # at once: the next pass would then be an enter of its own just to
            # wait for the replies.  Waiting for one completion beyond the
            # sends saves that enter; the short cap bounds what a send that
            # blocks (a full socket buffer) can delay.
            min_complete = self._sends_queued + 1
            timeout = SEND_WAIT_CAP_S if timeout is None else min(timeout, SEND_WAIT_CAP_S)
        self._sends_queued = 0
        completions = self._ring.wait(timeout, min_complete)
        conns = self._conns
        append = events.append
        # Hot path: plain ints, not Op members (an IntEnum compare costs 85 ns
        # against 12 ns), and the common recv and send completions handled
        # inline; everything else goes to a handler.
        recv_op = _RECV
        send_op = _SEND
        cid_mask = CID_MASK
        bytes_in = bytes_out = 0
        for ud, res, flags, data in completions:
            op = ud >> CID_BITS
            if op == recv_op:
                conn = conns.get(ud & cid_mask)
                if conn is None:
                    continue
                if res > 0 and flags & F_MORE and not conn.closing:
                    bytes_in += res
                    append((RECEIVED, conn.cid, data))
                else:
                    self._handle_recv(conn, res, flags, data, events)
            elif op == send_op:
                conn = conns.get(ud & cid_mask)
                if conn is None:
                    continue
                buf = conn.send_buf
                if (
                    buf is not None
                    and res == len(buf) - conn.send_off
                    and not conn.out
                    and conn.reading
                    and not conn.closing
                ):
                    bytes_out += res
                    conn.send_buf = None
                else:
                    self._handle_send(conn, res)
            else:
                self._handle_other(op, ud & cid_mask, res, flags, events)
        self._bytes_in += bytes_in
        self._bytes_out += bytes_out
        if self._events:
            events.extend(self._events)
            self._events = []
        return events

    def _handle_other(self, op: int, cid: int, res: int, flags: int, events: list[Event]) -> None:
        """Completions other than recv and send: few per connection, not per message."""
        if op == Op.ACCEPT:
            self._handle_accept(res, flags, events)
        elif op == Op.CLOSE:
            self._handle_close(cid, events)
        elif op == Op.CANCEL or op == Op.CANCEL_RECV:
            conn = self._conns.get(cid)
            if conn is not None and conn.closing:
                self._finish(conn)  # the close may have waited for this op
        elif op == Op.WAKEUP:
            self._handle_wakeup(flags)
        elif op == Op.ACCEPT_RETRY:
            if self._accepting:
                self._arm_accept()
        elif op == Op.SHUTDOWN:
            conn = self._conns.get(cid)
            if conn is not None:
                if res < 0:  # the peer is already gone
                    conn.eof = True
                self._finish(conn)
        # CANCEL_ACCEPT: the accept's own completion does the work

    def send(self, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.closing or not data:
            return
        if conn.send_buf is None:
            conn.send_buf = data
            conn.send_off = 0
            self._ring.prep_send(conn.fd, data, _SEND_BASE | conn_id)
            self._sends_queued += 1
        else:
            conn.out.append(data)
            conn.out_bytes += len(data)
            if conn.out_bytes > OUTPUT_HIGH_WATER_BYTES and conn.reading:
                self._paused_reads += 1
                conn.reading = False
                self._cancel_recv(conn)

    def close(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None and not conn.closing:
            conn.closing = True
            conn.reading = False
            self._finish(conn)

    def abort(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn.out.clear()
            conn.out_bytes = 0
            conn.closing = True
            conn.aborted = True
            conn.reading = False
            self._cancel_all(conn)
            self._finish(conn)

    def shutdown(self) -> None:
        """Abort everything, drain the completions, close the ring."""
        self._shutting_down = True
        self.stop_accepting()
        for cid in list(self._conns):
            self.abort(cid)
        self._ring.prep_cancel(_WAKEUP_UD, encode(Op.CANCEL, LISTENER_CID))
        waited = 0.0
        while (self._conns or self._ring.statistics().ops_in_flight) and waited < SHUTDOWN_DRAIN_S:
            self.wait(0.05)
            waited += 0.05
        self._close_listener()
        self._ring.close()
        self._wakeup_r.close()
        self._wakeup_w.close()

    def wakeup_fileno(self) -> int:
        return self._wakeup_w.fileno()

    def force_wakeup(self) -> None:
        with contextlib.suppress(OSError):
            self._wakeup_w.send(b"\0")

    def describe(self) -> dict[str, object]:
        ring = self._ring
        return {
            "taskrun": ring.taskrun,
            "sq_entries": ring.sq_entries,
            "cq_entries": ring.cq_entries,
        }

    def statistics(self) -> BackendStatistics:
        rs = self._ring.statistics()
        return BackendStatistics(
            backend="uring",
            open_connections=len(self._conns),
            ops_in_flight=rs.ops_in_flight,
            accepted=self._accepted,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            wait_calls=rs.io_uring_enter_calls,
            syscalls=rs.io_uring_enter_calls + self._extra_syscalls,
            sqes_submitted=rs.sqes_submitted,
            cqes_reaped=rs.cqes_reaped,
            accept_errors=self._accept_errors,
            paused_reads=self._paused_reads,
        )

    # -- completion handlers ---------------------------------------------------

    def _handle_accept(self, res: int, flags: int, events: list[Event]) -> None:
        if not flags & F_MORE:
            self._accept_armed = False
        if res >= 0:
            if not self._accepting:
                os.close(res)
                self._extra_syscalls += 1
            elif len(self._conns) >= self._options.max_connections:
                self._parked.append(res)
                self._disarm_accept()
            else:
                self._open(res, events)
        elif res == -errno.ECANCELED:
            if not self._accepting:
                self._close_listener()
            return
        else:
            self._accept_errors += 1
            # A close may re-arm the accept before the retry timer fires, and
            # that accept can fail again: one timer is enough.
            retry_pending = self._ring.in_flight(_ACCEPT_RETRY_UD)
            if self._accepting and not self._accept_armed and not retry_pending:
                self._ring.prep_timeout(ACCEPT_RETRY_DELAY_S, _ACCEPT_RETRY_UD)
            return
        if (
            self._accepting
            and not self._accept_armed
            and len(self._conns) < self._options.max_connections
        ):
            self._arm_accept()

    def _handle_recv(
        self, conn: _Conn, res: int, flags: int, data: bytes | None, events: list[Event]
    ) -> None:
        more = flags & F_MORE
        if not more:
            conn.recv_armed = False
        if res > 0:
            self._bytes_in += res
            if not conn.closing:
                events.append((RECEIVED, conn.cid, data))
            if not more and conn.reading:
                self._arm_recv(conn)
            return
        if res == 0:
            conn.eof = True
            conn.reading = False
            if not conn.closing:
                events.append((RECEIVED, conn.cid, b""))
        elif res == -errno.ENOBUFS:
            if conn.reading:
                self._arm_recv(conn)
        elif res != -errno.ECANCELED:
            self._fail(conn, -res)
        if conn.closing:
            self._finish(conn)
        elif conn.reading and not conn.recv_armed and res == -errno.ECANCELED:
            self._arm_recv(conn)  # cancelled for backpressure, then resumed

    def _handle_send(self, conn: _Conn, res: int) -> None:
        buf = conn.send_buf
        assert buf is not None
        if res < 0:
            conn.send_buf = None
            if res != -errno.ECANCELED:
                self._fail(conn, -res)
            self._finish(conn)
            return
        self._bytes_out += res
        conn.send_off += res
        if conn.send_off < len(buf):  # short send: resume at the offset
            self._ring.prep_send(conn.fd, buf, encode(Op.SEND, conn.cid), conn.send_off)
            return
        out = conn.out
        if out:
            nxt = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            conn.out_bytes = 0
            conn.send_buf = nxt
            conn.send_off = 0
            self._ring.prep_send(conn.fd, nxt, encode(Op.SEND, conn.cid))
            return
        conn.send_buf = None
        if conn.closing:
            self._finish(conn)
        elif not conn.reading and not conn.eof and conn.out_bytes <= OUTPUT_LOW_WATER_BYTES:
            conn.reading = True  # backpressure released
            if not conn.recv_armed:
                self._arm_recv(conn)

    def _handle_close(self, cid: int, events: list[Event]) -> None:
        conn = self._conns.pop(cid, None)
        if conn is None:
            return
        events.append((CLOSED, cid, conn.error))
        while self._parked and len(self._conns) < self._options.max_connections:
            self._open(self._parked.popleft(), events)
        if self._accepting and not self._accept_armed and not self._parked:
            self._arm_accept()

    def _handle_wakeup(self, flags: int) -> None:
        try:
            while os.read(self._wakeup_fd, 512):
                pass
        except OSError:
            pass
        self._extra_syscalls += 1
        if not flags & F_MORE and not self._shutting_down:
            self._ring.prep_poll_multishot(self._wakeup_fd, _WAKEUP_UD)

    # -- helpers -----------------------------------------------------------------

    def _open(self, fd: int, events: list[Event]) -> None:
        cid = self._next_cid
        self._next_cid += 1
        conn = _Conn(cid, fd)
        self._conns[cid] = conn
        self._accepted += 1
        self._arm_recv(conn)
        events.append((ACCEPTED, cid, None))

    def _arm_accept(self) -> None:
        if self._listener is not None and not self._accept_armed:
            self._accept_armed = True
            self._ring.prep_accept_multishot(self._listener.fileno(), _ACCEPT_UD)

    def _disarm_accept(self) -> None:
        if self._accept_armed and not self._ring.in_flight(_CANCEL_ACCEPT_UD):
            self._ring.prep_cancel(_ACCEPT_UD, _CANCEL_ACCEPT_UD)

    def _close_listener(self) -> None:
        if self._listener is not None and not self._accept_armed:
            self._listener.close()
            self._listener = None

    def _arm_recv(self, conn: _Conn) -> None:
        conn.recv_armed = True
        self._ring.prep_recv_multishot(conn.fd, encode(Op.RECV, conn.cid))

    def _fd_in_use(self, conn: _Conn) -> bool:
        """True while any op that names the fd is in flight.

        Closing must wait for all of them: ops punted to io-wq (SHUTDOWN
        always is) look the fd number up only when they run, so after a close
        they would hit whichever new connection was given that number.
        """
        in_flight = self._ring.in_flight
        cid = conn.cid
        return any(in_flight(encode(op, cid)) for op in _FD_OPS)

    def _cancel_recv(self, conn: _Conn) -> None:
        """Stop reading: cancel the multishot recv only (a send in flight goes on)."""
        ud = encode(Op.CANCEL_RECV, conn.cid)
        if conn.recv_armed and not self._ring.in_flight(ud):
            self._ring.prep_cancel(encode(Op.RECV, conn.cid), ud)

    def _cancel_all(self, conn: _Conn) -> None:
        """Abort: cancel every op on the fd, the send included (IORING_ASYNC_CANCEL_FD)."""
        ud = encode(Op.CANCEL, conn.cid)
        if (conn.recv_armed or conn.send_buf is not None) and not self._ring.in_flight(ud):
            self._ring.prep_cancel_fd(conn.fd, ud)

    def _fail(self, conn: _Conn, err: int) -> None:
        conn.error = OSError(err, os.strerror(err))
        conn.out.clear()
        conn.out_bytes = 0
        conn.closing = True
        conn.aborted = True
        conn.reading = False
        self._cancel_all(conn)

    def _finish(self, conn: _Conn) -> None:
        """Close the fd once the connection is closing and nothing is in flight."""
        if not conn.closing or conn.close_queued:
            return
        if conn.send_buf is not None or conn.out:
            return  # a graceful close waits for the output
        if not conn.aborted and not conn.eof:
            # Closing with unread input makes the kernel send RST, which can
            # destroy the response just sent (a 400 or 413 after a body we
            # did not read).  Shut down our side and discard input until the
            # peer's EOF; the loop aborts a connection lingering too long.
            if not conn.lingering:
                conn.lingering = True
                conn.reading = True
                self._ring.prep_shutdown(conn.fd, socket.SHUT_WR, encode(Op.SHUTDOWN, conn.cid))
            if not conn.recv_armed:
                self._arm_recv(conn)
            return
        if conn.recv_armed:
            self._cancel_recv(conn)
            return
        if self._fd_in_use(conn):
            return  # the completion of that op calls _finish again
        conn.close_queued = True
        self._ring.prep_close(conn.fd, encode(Op.CLOSE, conn.cid))
