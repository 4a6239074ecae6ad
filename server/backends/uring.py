"""Completion I/O with io_uring, through ``uring_backend.Ring``.

How this mechanism behaves, and what follows for this module:

- One multishot accept stays armed on the listener and posts a CQE per new
  connection; the CQE's ``res`` is the new fd.  It ends (no
  ``IORING_CQE_F_MORE``) on any error: EMFILE/ENFILE re-arm after a timeout
  op of ``ACCEPT_RETRY_DELAY_S``, so open connections keep being served.
  Cancelling it (`stop_accepting`) is asynchronous: connections it accepts
  meanwhile (seen with ``--sqpoll``) are served, and so are those parked at
  ``--max-connections``, as they were accepted from a queue that other
  workers share (``--workers``); closing them would reset their clients.
  Only `shutdown` closes them.
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
  file reference and the ops would outlive the close).  Each connection
  counts its ops in flight (``ops``: +1 per SQE, -1 per final CQE), and a
  connection in ``CLOSING`` queues its ``IORING_OP_CLOSE`` when, and only
  when, that count is zero (`_close_when_idle`).  Waiting for all of them
  matters: an op punted to io-wq (SHUTDOWN always is) looks the fd number up
  only when it runs, so after an early close it would hit the next
  connection given that number.  The record (and its send buffer) lives
  until the close completes.
- ``user_data`` carries the op in its top byte and the connection id below;
  connection ids are never reused, so a late CQE cannot hit a newer
  connection.

The connection lifecycle (states, backpressure, the lingering close) is
``core.py``'s; this module implements each state's hook with ring ops.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from enum import IntEnum
from typing import Final

from server.backends.base import (
    ACCEPT_RETRY_DELAY_S,
    OUTPUT_HIGH_WATER_BYTES,
    RECEIVED,
    BackendName,
    BackendOptions,
    BackendUnavailable,
    Event,
)
from server.backends.core import (
    CLOSING,
    DRAINING,
    LINGERING,
    OPEN,
    PAUSED,
    SENDABLE,
    BackendCore,
    Cause,
    Connection,
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
_ACCEPT_UD: Final = encode(Op.ACCEPT, LISTENER_CID)
_ACCEPT_RETRY_UD: Final = encode(Op.ACCEPT_RETRY, LISTENER_CID)
_CANCEL_ACCEPT_UD: Final = encode(Op.CANCEL_ACCEPT, LISTENER_CID)
_WAKEUP_UD: Final = encode(Op.WAKEUP, LISTENER_CID)
_DELIVERED: Final = PAUSED  # states up to this one get the bytes they receive


class _Conn(Connection):
    __slots__ = ("ops", "out", "recv_armed", "send_buf", "send_off")

    def __init__(self, cid: int, fd: int) -> None:
        super().__init__(cid, fd)
        self.ops = 0  # SQEs naming this connection whose final CQE has not arrived
        self.recv_armed = False  # the multishot recv is in flight
        self.send_buf: bytes | None = None  # the one send in flight
        self.send_off = 0
        # Queued behind the send in flight.  A list, not a deque: an empty
        # deque is 760 bytes, a list 56, and most connections never queue.
        self.out: list[bytes] = []


def _wants_bytes(conn: _Conn) -> bool:
    """Reading is wanted: serving (OPEN), or discarding until EOF (LINGERING)."""
    return (conn.state is OPEN or conn.state is LINGERING) and not conn.eof


class UringBackend(BackendCore[_Conn]):
    """Backend on io_uring; see the module docstring."""

    name: BackendName = "uring"

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        try:
            self._ring = Ring(
                options.ring_entries,
                cq_factor=options.cq_factor,
                buffers=options.recv_buffers,
                buffer_size=options.recv_buffer_size,
                sqpoll=options.sqpoll,
            )
        except UringUnavailable as exc:
            self._close_wakeup()
            raise BackendUnavailable(str(exc)) from exc
        self._parked: deque[int] = deque()  # accepted fds beyond max_connections
        self._listener: socket.socket | None = None
        self._accept_armed = False
        self._accepting = False
        self._shutting_down = False
        self._ring.prep_poll_multishot(self._wakeup_fd, _WAKEUP_UD)
        self._sends_queued = 0  # sends queued in this pass (see wait())
        self._extra_syscalls = 0

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
        if self._shutting_down:  # else parked connections are served as room frees
            while self._parked:
                os.close(self._parked.popleft())

    def accepting(self) -> bool:
        return self._listener is not None  # closed once the accept has ended

    def _poll(self, timeout: float | None, events: list[Event]) -> None:
        min_complete = 1
        if timeout != 0 and self._sends_queued:
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
        delivered = _DELIVERED
        bytes_in = bytes_out = 0
        for ud, res, flags, data in completions:
            op = ud >> CID_BITS
            if op == recv_op:
                conn = conns.get(ud & cid_mask)
                if conn is None:
                    continue
                if res > 0 and flags & F_MORE and conn.state <= delivered:
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
                    and conn.state is OPEN
                ):
                    bytes_out += res
                    conn.out_bytes -= res
                    conn.ops -= 1
                    conn.send_buf = None
                else:
                    self._handle_send(conn, res)
            else:
                self._handle_other(op, ud & cid_mask, res, flags)
        self._bytes_in += bytes_in
        self._bytes_out += bytes_out

    def send(self, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.state > SENDABLE or not data:
            return
        if conn.send_buf is None:
            conn.send_buf = data
            conn.send_off = 0
            conn.ops += 1
            self._ring.prep_send(conn.fd, data, _SEND_BASE | conn_id)
            self._sends_queued += 1
            conn.out_bytes += len(data)
            if conn.out_bytes > OUTPUT_HIGH_WATER_BYTES and conn.state is OPEN:
                self.transition(conn, Cause.PAUSE)
        else:
            conn.out.append(data)
            self._queued(conn, len(data))

    def shutdown(self) -> None:
        """Abort everything, drain the completions, close the ring."""
        self._shutting_down = True
        self.stop_accepting()
        for conn in list(self._conns.values()):
            self.transition(conn, Cause.ABORT)
        self._ring.prep_cancel(_WAKEUP_UD, encode(Op.CANCEL, LISTENER_CID))
        waited = 0.0
        while (self._conns or self._ring.statistics().ops_in_flight) and waited < SHUTDOWN_DRAIN_S:
            self.wait(0.05)
            waited += 0.05
        self._ready.clear()
        self._close_listener()
        self._ring.close()
        self._close_wakeup()

    def describe(self) -> dict[str, object]:
        ring = self._ring
        return {
            "taskrun": ring.taskrun,
            "sq_entries": ring.sq_entries,
            "cq_entries": ring.cq_entries,
        }

    def _mechanism_statistics(self) -> tuple[int, int, int, int, int]:
        rs = self._ring.statistics()
        return (
            rs.ops_in_flight,
            rs.io_uring_enter_calls,
            rs.io_uring_enter_calls + self._extra_syscalls,
            rs.sqes_submitted,
            rs.cqes_reaped,
        )

    # -- the states' hooks ---------------------------------------------------------

    def _enter_paused(self, conn: _Conn) -> None:
        self._cancel_recv(conn)  # a send in flight goes on

    def _enter_open(self, conn: _Conn) -> None:
        if not conn.recv_armed and not conn.eof:
            self._arm_recv(conn)
        # else: the recv's ECANCELED completion re-arms it (see _handle_recv)

    def _enter_draining(self, conn: _Conn) -> None:
        # The recv stays armed (what it brings is discarded): LINGERING
        # reads on with it, so a graceful close costs no cancel.
        if conn.send_buf is None and not conn.out:
            self.transition(conn, Cause.FLUSHED)

    def _enter_lingering(self, conn: _Conn) -> None:
        conn.ops += 1
        self._ring.prep_shutdown(conn.fd, socket.SHUT_WR, encode(Op.SHUTDOWN, conn.cid))
        if not conn.recv_armed:
            self._arm_recv(conn)

    def _enter_closing(self, conn: _Conn) -> None:
        conn.out.clear()
        buf = conn.send_buf
        conn.out_bytes = len(buf) - conn.send_off if buf is not None else 0  # still in flight
        if conn.recv_armed or conn.send_buf is not None:
            # IORING_ASYNC_CANCEL_FD: every op on the fd, the send included.
            ud = encode(Op.CANCEL, conn.cid)
            if not self._ring.in_flight(ud):
                conn.ops += 1
                self._ring.prep_cancel_fd(conn.fd, ud)
        self._close_when_idle(conn)

    def _close_when_idle(self, conn: _Conn) -> None:
        """The rule: a CLOSING connection's fd is closed once no op names it."""
        if conn.state is CLOSING and conn.ops == 0:
            conn.ops += 1
            self._ring.prep_close(conn.fd, encode(Op.CLOSE, conn.cid))

    def _released(self) -> None:
        while self._parked and self._room():
            self._open(self._parked.popleft())
        if self._accepting and not self._accept_armed and not self._parked:
            self._arm_accept()

    # -- completion handlers ---------------------------------------------------

    def _handle_recv(
        self, conn: _Conn, res: int, flags: int, data: bytes | None, events: list[Event]
    ) -> None:
        if not flags & F_MORE:
            conn.recv_armed = False
            conn.ops -= 1
        if res > 0:
            self._bytes_in += res
            if conn.state <= _DELIVERED:
                events.append((RECEIVED, conn.cid, data))
        elif res == 0:
            conn.eof = True
            if conn.state <= _DELIVERED:
                events.append((RECEIVED, conn.cid, b""))
            elif conn.state is LINGERING:
                self.transition(conn, Cause.PEER_EOF)
        elif res != -errno.ENOBUFS and res != -errno.ECANCELED:
            self._fail(conn, OSError(-res, os.strerror(-res)))
        # ENOBUFS (the buffer ring ran dry), ECANCELED (cancelled for
        # backpressure, then resumed) and data without F_MORE (e.g. after a
        # CQ overflow) end the multishot recv: re-armed if still wanted.
        if not conn.recv_armed and _wants_bytes(conn):
            self._arm_recv(conn)
        self._close_when_idle(conn)

    def _handle_send(self, conn: _Conn, res: int) -> None:
        conn.ops -= 1
        buf = conn.send_buf
        assert buf is not None
        if res < 0:
            conn.send_buf = None
            if res != -errno.ECANCELED:
                self._fail(conn, OSError(-res, os.strerror(-res)))
            self._close_when_idle(conn)
            return
        conn.send_off += res
        self._written(conn, res)
        if conn.state is CLOSING:  # aborted meanwhile: nothing more goes out
            conn.send_buf = None
            self._close_when_idle(conn)
            return
        if conn.send_off < len(buf):  # short send: resume at the offset
            conn.ops += 1
            self._ring.prep_send(conn.fd, buf, encode(Op.SEND, conn.cid), conn.send_off)
            return
        out = conn.out
        if out:
            nxt = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            conn.send_buf = nxt
            conn.send_off = 0
            conn.ops += 1
            self._ring.prep_send(conn.fd, nxt, encode(Op.SEND, conn.cid))
            return
        conn.send_buf = None
        if conn.state is DRAINING:
            self.transition(conn, Cause.FLUSHED)

    def _handle_other(self, op: int, cid: int, res: int, flags: int) -> None:
        """Completions other than recv and send: few per connection, not per message."""
        if cid == LISTENER_CID:
            if op == Op.ACCEPT:
                self._handle_accept(res, flags)
            elif op == Op.WAKEUP:
                self._handle_wakeup(flags)
            elif op == Op.ACCEPT_RETRY and self._accepting:
                self._arm_accept()
            # CANCEL_ACCEPT: the accept's own completion does the work
            return
        conn = self._conns.get(cid)
        if conn is None:
            return
        conn.ops -= 1
        if op == Op.CLOSE:
            self.transition(conn, Cause.RELEASED)
            return
        if op == Op.SHUTDOWN and res < 0:  # the peer is already gone
            conn.eof = True
            if conn.state is LINGERING:
                self.transition(conn, Cause.PEER_EOF)
        # CANCEL, CANCEL_RECV: the cancelled op's own completion does the work
        self._close_when_idle(conn)

    def _handle_accept(self, res: int, flags: int) -> None:
        if not flags & F_MORE:
            self._accept_armed = False
        if res >= 0:
            if self._shutting_down:
                os.close(res)
                self._extra_syscalls += 1
            elif not self._room():
                self._parked.append(res)
                self._disarm_accept()
            else:
                self._open(res)
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
        if self._accepting and not self._accept_armed and self._room():
            self._arm_accept()

    def _handle_wakeup(self, flags: int) -> None:
        self._drain_wakeup()
        self._extra_syscalls += 1
        if not flags & F_MORE and not self._shutting_down:
            self._ring.prep_poll_multishot(self._wakeup_fd, _WAKEUP_UD)

    # -- the mechanism -------------------------------------------------------------

    def _open(self, fd: int) -> None:
        conn = _Conn(self._take_cid(), fd)
        self._new_connection(conn)
        self._arm_recv(conn)

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
        conn.ops += 1
        self._ring.prep_recv_multishot(conn.fd, encode(Op.RECV, conn.cid))

    def _cancel_recv(self, conn: _Conn) -> None:
        """Stop reading: cancel the multishot recv only (a send in flight goes on)."""
        ud = encode(Op.CANCEL_RECV, conn.cid)
        if conn.recv_armed and not self._ring.in_flight(ud):
            conn.ops += 1
            self._ring.prep_cancel(encode(Op.RECV, conn.cid), ud)
