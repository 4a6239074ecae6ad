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
- Sends go to the ring's send queue of the connection's *slot* (an index
  reused only once the connection is closed): the ring copies the bytes,
  keeps one send in flight per slot (so bytes leave in order), resumes short
  sends, and consumes successful completions in C.  What comes back is what
  the lifecycle needs: PAUSE/RESUME at the output marks, IDLE once a
  draining or closing connection's queue is empty and nothing is in flight,
  and send errors.
- An fd must not be closed while ops on it are in flight (the ring holds a
  file reference and the ops would outlive the close).  Each connection
  counts its ops in flight (``ops``: +1 per SQE, -1 per final CQE), and a
  connection in ``CLOSING`` queues its ``IORING_OP_CLOSE`` when, and only
  when, that count is zero (`_close_when_idle`).  Waiting for all of them
  matters: an op punted to io-wq (SHUTDOWN always is) looks the fd number up
  only when it runs, so after an early close it would hit the next
  connection given that number.  The record (and its send buffer) lives
  until the close completes.
- The app's own file descriptors (``watch()``: what asyncio's readers and
  writers wait for) get a one-shot ``IORING_OP_POLL_ADD`` each, re-armed from
  its completion.  The re-arm is submitted with the next ``wait()``, after
  asyncio ran the callbacks, and completes at once if the fd is still ready:
  readiness is level-triggered, as ``select()``'s is (a multishot poll would
  post only on new wakeups, and a reader that left bytes unread would hang).
  They share the ring, so one ``io_uring_enter`` serves them and the
  connections alike.
- ``user_data`` carries the op in its top byte and the connection id below;
  connection ids are never reused, so a late CQE cannot hit a newer
  connection.

The connection lifecycle (states, backpressure, the lingering close) is
``core.py``'s; this module implements each state's hook with ring ops.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
from collections import deque
from enum import IntEnum
from typing import Final

from server.backends.base import (
    ACCEPT_RETRY_DELAY_S,
    OUTPUT_HIGH_WATER_BYTES,
    OUTPUT_LOW_WATER_BYTES,
    READY,
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
    PAUSE_OUTPUT,
    PAUSED,
    SENDABLE,
    BackendCore,
    Cause,
    Connection,
)
from uring_backend import Ring, UringUnavailable
from uring_backend.ring import (
    F_MORE,
    IDLE,
    OWN_OPS,
    PAUSE,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    RESUME,
    SEND_ERROR,
)

CID_BITS: Final = 56
CID_MASK: Final = (1 << CID_BITS) - 1
LISTENER_CID: Final = 0
SHUTDOWN_DRAIN_S: Final = 2.0


class Op(IntEnum):
    ACCEPT = 1
    RECV = 2
    CANCEL = 4
    CLOSE = 5
    WAKEUP = 6
    ACCEPT_RETRY = 7
    CANCEL_ACCEPT = 8
    SHUTDOWN = 9
    CANCEL_RECV = 10
    POLL = 11  # an fd of the app's (the "connection id" bits hold the fd)
    CANCEL_POLL = 12


# user_data = op (8 bits) << 56 | connection id (56 bits).  Decoded in one
# place, inline in UringBackend.wait() (op = ud >> CID_BITS, cid = ud & CID_MASK),
# because a function call there would cost more than the decoding.
def encode(op: Op, cid: int) -> int:
    return (op << CID_BITS) | cid


EVENT_READ: Final = selectors.EVENT_READ
EVENT_WRITE: Final = selectors.EVENT_WRITE
_RECV: Final = int(Op.RECV)
_OWN_OPS: Final = OWN_OPS  # the ring's own: its send queues' reports
_SLOT_MASK: Final = 0xFFFF_FFFF
_ACCEPT_UD: Final = encode(Op.ACCEPT, LISTENER_CID)
_ACCEPT_RETRY_UD: Final = encode(Op.ACCEPT_RETRY, LISTENER_CID)
_CANCEL_ACCEPT_UD: Final = encode(Op.CANCEL_ACCEPT, LISTENER_CID)
_WAKEUP_UD: Final = encode(Op.WAKEUP, LISTENER_CID)
_DELIVERED: Final = PAUSED  # states up to this one get the bytes they receive


class _Conn(Connection):
    __slots__ = ("ops", "out_idle", "recv_armed", "slot")

    def __init__(self, cid: int, fd: int, slot: int) -> None:
        super().__init__(cid, fd)
        self.slot = slot  # its send queue in the ring
        self.ops = 0  # SQEs naming this connection whose final CQE has not arrived
        self.recv_armed = False  # the multishot recv is in flight
        # Known to have nothing queued or in flight in its send queue: true
        # until the first send, and again once the ring reports IDLE.
        self.out_idle = True


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
                send_slots=options.max_connections,
                send_high=OUTPUT_HIGH_WATER_BYTES,
                send_low=OUTPUT_LOW_WATER_BYTES,
            )
        except UringUnavailable as exc:
            self._close_wakeup()
            raise BackendUnavailable(str(exc)) from exc
        # Send-queue slots: one per open connection, reused after its close.
        self._free_slots = list(range(options.max_connections - 1, -1, -1))
        self._by_slot: list[_Conn | None] = [None] * options.max_connections
        self._parked: deque[int] = deque()  # accepted fds beyond max_connections
        self._listener: socket.socket | None = None
        self._accept_armed = False
        self._accepting = False
        self._shutting_down = False
        self._ring.prep_poll_multishot(self._wakeup_fd, _WAKEUP_UD)
        self._watched: dict[int, int] = {}  # the app's fds -> selectors events
        self._polling: dict[int, int] = {}  # fds with a poll in flight -> its events
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
        data_uds, datas, others = self._ring.wait(timeout)
        conns = self._conns
        append = events.append
        cid_mask = CID_MASK
        delivered = _DELIVERED
        # Hot path: the receive completions that carry bytes, in flat lists.
        for ud, data in zip(data_uds, datas, strict=True):
            conn = conns.get(ud & cid_mask)
            if conn is not None and conn.state <= delivered:
                append((RECEIVED, conn.cid, data))
        if datas:
            self._bytes_in += sum(map(len, datas))
        # Everything else: few per connection, not per message.  Plain ints,
        # not Op members (an IntEnum compare costs 85 ns against 12 ns).
        recv_op = _RECV
        for ud, res, flags, payload in others:
            op = ud >> CID_BITS
            if op == recv_op:
                conn = conns.get(ud & cid_mask)
                if conn is not None:
                    self._handle_recv(conn, res, flags, payload, events)
            elif op >= _OWN_OPS:
                self._handle_report(op, ud & _SLOT_MASK, res)
            else:
                self._handle_other(op, ud & cid_mask, res, flags, events)

    def send(self, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.state > SENDABLE or not data:
            return
        conn.out_idle = False
        self._ring.send(conn.slot, conn.fd, data)

    def shutdown(self) -> None:
        """Abort everything, drain the completions, close the ring."""
        self._shutting_down = True
        self.stop_accepting()
        for conn in list(self._conns.values()):
            self.transition(conn, Cause.ABORT)
        self._ring.prep_cancel(_WAKEUP_UD, encode(Op.CANCEL, LISTENER_CID))
        for fd in list(self._polling):
            ud = encode(Op.CANCEL_POLL, fd)
            if not self._ring.in_flight(ud):
                self._ring.prep_cancel(encode(Op.POLL, fd), ud)
        self._watched.clear()
        waited = 0.0
        while (self._conns or self._ring.statistics().ops_in_flight) and waited < SHUTDOWN_DRAIN_S:
            self.wait(0.05)
            waited += 0.05
        self._ready.clear()
        self._close_listener()
        self._ring.close()
        self._close_wakeup()

    def watch(self, fd: int, events: int) -> None:
        if events:
            self._watched[fd] = events
        else:
            self._watched.pop(fd, None)
        armed = self._polling.get(fd)
        if armed is None:
            if events:
                self._arm_poll(fd, events)
        elif armed != events:
            # A poll asks for fixed events: cancel it; its completion re-arms
            # with what is wanted then (or nothing, once unwatched).
            ud = encode(Op.CANCEL_POLL, fd)
            if not self._ring.in_flight(ud):
                self._ring.prep_cancel(encode(Op.POLL, fd), ud)

    def describe(self) -> dict[str, object]:
        ring = self._ring
        return {
            "taskrun": ring.taskrun,
            "sq_entries": ring.sq_entries,
            "cq_entries": ring.cq_entries,
        }

    def _mechanism_statistics(self) -> tuple[int, int, int, int, int]:
        rs = self._ring.statistics()
        self._bytes_out = rs.bytes_sent
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
        if conn.out_idle:
            self.transition(conn, Cause.FLUSHED)
        else:
            self._ring.watch(conn.slot)  # IDLE applies FLUSHED

    def _enter_lingering(self, conn: _Conn) -> None:
        conn.ops += 1
        self._ring.prep_shutdown(conn.fd, socket.SHUT_WR, encode(Op.SHUTDOWN, conn.cid))
        if not conn.recv_armed:
            self._arm_recv(conn)

    def _enter_closing(self, conn: _Conn) -> None:
        if not conn.out_idle and not self._ring.drop(conn.slot):
            conn.out_idle = True  # nothing was in flight; else IDLE follows the send
        if conn.recv_armed or not conn.out_idle:
            # IORING_ASYNC_CANCEL_FD: every op on the fd, the send included.
            ud = encode(Op.CANCEL, conn.cid)
            if not self._ring.in_flight(ud):
                conn.ops += 1
                self._ring.prep_cancel_fd(conn.fd, ud)
        self._close_when_idle(conn)

    def _close_when_idle(self, conn: _Conn) -> None:
        """The rule: a CLOSING connection's fd is closed once no op names it."""
        if conn.state is CLOSING and conn.ops == 0 and conn.out_idle:
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

    def _handle_report(self, kind: int, slot: int, res: int) -> None:
        """What the ring's send queue of `slot` tells the connection owning it."""
        conn = self._by_slot[slot]
        if conn is None:
            return
        if kind == IDLE:
            conn.out_idle = True
            if conn.state is DRAINING:
                self.transition(conn, Cause.FLUSHED)
            else:
                self._close_when_idle(conn)
        elif kind == PAUSE:
            self._pause(conn, PAUSE_OUTPUT)
        elif kind == RESUME:
            self._resume(conn, PAUSE_OUTPUT)
        elif kind == SEND_ERROR:
            conn.out_idle = True  # the ring dropped the queue; nothing is in flight
            self._fail(conn, OSError(-res, os.strerror(-res)))
            self._close_when_idle(conn)

    def _handle_other(self, op: int, cid: int, res: int, flags: int, events: list[Event]) -> None:
        """Completions other than receives: few per connection, not per message."""
        if op == Op.POLL:
            self._handle_poll(cid, res, events)
            return
        if op == Op.CANCEL_POLL:
            return  # the poll's own completion does the work
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
            self._ring.reset(conn.slot)
            self._by_slot[conn.slot] = None
            self._free_slots.append(conn.slot)
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

    def _handle_poll(self, fd: int, res: int, events: list[Event]) -> None:
        """An fd of the app's is ready (as selectors.EpollSelector reads a mask), or
        its poll was cancelled; either way it is re-armed if still watched."""
        asked = self._polling.pop(fd, 0)
        wanted = self._watched.get(fd, 0)
        if res > 0 and wanted:
            got = (EVENT_WRITE if res & (POLLOUT | POLLERR | POLLHUP) else 0) | (
                EVENT_READ if res & (POLLIN | POLLERR | POLLHUP) else 0
            )
            if got & wanted & asked:
                events.append((READY, fd, got & wanted & asked))
        elif res < 0 and res != -errno.ECANCELED:
            # EBADF: the app closed the fd without unwatching it first.
            self._watched.pop(fd, None)
            return
        if wanted and not self._shutting_down:
            self._arm_poll(fd, wanted)

    def _arm_poll(self, fd: int, events: int) -> None:
        mask = (POLLIN if events & EVENT_READ else 0) | (POLLOUT if events & EVENT_WRITE else 0)
        self._polling[fd] = events
        self._ring.prep_poll(fd, mask, encode(Op.POLL, fd))

    def _handle_wakeup(self, flags: int) -> None:
        self._drain_wakeup()
        self._extra_syscalls += 1
        if not flags & F_MORE and not self._shutting_down:
            self._ring.prep_poll_multishot(self._wakeup_fd, _WAKEUP_UD)

    # -- the mechanism -------------------------------------------------------------

    def _open(self, fd: int) -> None:
        conn = _Conn(self._take_cid(), fd, self._free_slots.pop())
        self._by_slot[conn.slot] = conn
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
