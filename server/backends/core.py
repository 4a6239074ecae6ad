"""What both backends share: the connection table and its lifecycle.

trio keeps what its IO managers share in ``_io_common.py``; this is that
module here.  A backend subclasses `BackendCore` and keeps only its
mechanism: how bytes are read and written, how an fd is closed, how the
listener accepts.  Everything else is policy and lives here once:

- the connection table, connection ids (never reused, so a late completion
  cannot reach a newer connection), and the counters of `statistics()`;
- backpressure: a connection whose unsent output exceeds
  ``OUTPUT_HIGH_WATER_BYTES`` stops being read until it drains below
  ``OUTPUT_LOW_WATER_BYTES`` (and says so with WRITE_PAUSED/WRITE_RESUMED, so
  an app can wait for the drain), and one whose app asks for it
  (``pause_reading``) until the app asks again; PAUSED holds while either
  reason does;
- the lingering close: closing a socket with unread input makes the kernel
  send RST, which can destroy the response just sent (a 400 or 413 after a
  body the server did not read), so unless the peer already sent EOF, our
  side is shut down and input is discarded until the peer's EOF;
- the wakeup socketpair (``force_wakeup()``, and the fd for
  ``signal.set_wakeup_fd``), and events produced outside ``wait()``.

Theory of operation (in the manner of h11's ``_state.py``): a connection is
in exactly one `State`; `BackendCore.transition` applies one `Cause` through
the `TRANSITIONS` table and calls the mechanism's hook for the state it
enters.  A pair not in the table is a bug and raises.

::

    OPEN ──PAUSE──▶ PAUSED ──RESUME──▶ OPEN
    OPEN/PAUSED ──CLOSE──▶ DRAINING ──FLUSHED──▶ LINGERING ──PEER_EOF──▶ CLOSING
    any live state ──ABORT──▶ CLOSING ──RELEASED──▶ CLOSED

- OPEN: reading and writing.
- PAUSED: output above the high mark, or the app asked; not reading
  (writing goes on).
- DRAINING: a graceful close was asked; not reading, sending what is queued.
- LINGERING: all output sent and our side shut down; input is read and
  discarded until the peer's EOF (entered with EOF already seen, it moves on
  at once).
- CLOSING: the fd is being closed; io_uring waits here until no op that
  names the fd is in flight (``ops``), epoll passes through at once.
- CLOSED: the fd is closed and the CLOSED event is queued; the record leaves
  the table.
"""

from __future__ import annotations

import contextlib
import os
import socket
from enum import IntEnum
from typing import Final, Generic, TypeVar

from server.backends.base import (
    ACCEPTED,
    CLOSED,
    OUTPUT_HIGH_WATER_BYTES,
    OUTPUT_LOW_WATER_BYTES,
    WRITE_PAUSED,
    WRITE_RESUMED,
    BackendName,
    BackendOptions,
    BackendStatistics,
    Event,
)


class State(IntEnum):
    OPEN = 0
    PAUSED = 1
    DRAINING = 2
    LINGERING = 3
    CLOSING = 4
    CLOSED = 5


class Cause(IntEnum):
    PAUSE = 0  # unsent output went above the high mark
    RESUME = 1  # ... and drained below the low mark
    CLOSE = 2  # the loop asked for a graceful close
    FLUSHED = 3  # every queued byte was sent (while DRAINING)
    PEER_EOF = 4  # the peer shut down its side (while LINGERING)
    ABORT = 5  # close now, dropping output (asked, or an I/O error)
    RELEASED = 6  # the fd is closed


OPEN: Final = State.OPEN
PAUSED: Final = State.PAUSED
DRAINING: Final = State.DRAINING
LINGERING: Final = State.LINGERING
CLOSING: Final = State.CLOSING
CLOSED_STATE: Final = State.CLOSED
SENDABLE: Final = PAUSED  # states up to this one take new output (send())

# Why a connection is not read (Connection.paused_by): either keeps it PAUSED.
PAUSE_OUTPUT: Final = 1  # unsent output above the high mark
PAUSE_APP: Final = 2  # the app is not keeping up (pause_reading)

# (state, cause) -> next state.  A cause that changes nothing in a state
# where it can legitimately arrive maps to that same state (a second close,
# an abort of a connection already closing, ...); any other pair raises.
TRANSITIONS: Final[dict[tuple[State, Cause], State]] = {
    (OPEN, Cause.PAUSE): PAUSED,
    (OPEN, Cause.CLOSE): DRAINING,
    (OPEN, Cause.ABORT): CLOSING,
    (PAUSED, Cause.RESUME): OPEN,
    (PAUSED, Cause.CLOSE): DRAINING,
    (PAUSED, Cause.ABORT): CLOSING,
    (DRAINING, Cause.CLOSE): DRAINING,
    (DRAINING, Cause.FLUSHED): LINGERING,
    (DRAINING, Cause.ABORT): CLOSING,
    (LINGERING, Cause.CLOSE): LINGERING,
    (LINGERING, Cause.PEER_EOF): CLOSING,
    (LINGERING, Cause.ABORT): CLOSING,
    (CLOSING, Cause.CLOSE): CLOSING,
    (CLOSING, Cause.ABORT): CLOSING,
    (CLOSING, Cause.RELEASED): CLOSED_STATE,
}


class Connection:
    """One accepted connection's record; backends subclass it for their mechanism."""

    __slots__ = ("cid", "eof", "error", "fd", "out_bytes", "paused_by", "state")

    def __init__(self, cid: int, fd: int) -> None:
        self.cid = cid
        self.fd = fd
        self.state = OPEN
        self.paused_by = 0  # PAUSE_OUTPUT | PAUSE_APP
        self.out_bytes = 0  # accepted by send() and not yet written to the socket
        self.eof = False  # the peer shut down its side
        self.error: OSError | None = None  # reported with CLOSED


C = TypeVar("C", bound=Connection)


class BackendCore(Generic[C]):
    """The shared half of a backend; see the module docstring.

    Subclasses set `name`, implement the four ``_enter_*`` hooks and
    `_mechanism_statistics`, and register ``self._wakeup_fd`` for reading.
    """

    name: BackendName

    def __init__(self, options: BackendOptions) -> None:
        self._options = options
        self._max_connections = options.max_connections
        self._conns: dict[int, C] = {}
        self._next_cid = 1
        self._ready: list[Event] = []  # events produced outside wait()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._wakeup_fd = self._wakeup_r.fileno()
        self._accepted = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._accept_errors = 0
        self._paused_reads = 0

    # -- the lifecycle ---------------------------------------------------------

    def transition(self, conn: C, cause: Cause) -> None:
        """Apply `cause` to `conn` and run the hook of the state it enters.

        Raises:
            RuntimeError: `cause` cannot happen in the connection's state (a bug).
        """
        old = conn.state
        try:
            new = TRANSITIONS[old, cause]
        except KeyError:
            raise RuntimeError(
                f"connection {conn.cid}: {cause.name} is not allowed in {old.name}"
            ) from None
        if new is old:
            return
        conn.state = new
        if new is PAUSED:
            self._paused_reads += 1
            self._enter_paused(conn)
        elif new is OPEN:
            self._enter_open(conn)
        elif new is DRAINING:
            self._enter_draining(conn)
        elif new is LINGERING:
            if conn.eof:  # nothing to wait for
                self.transition(conn, Cause.PEER_EOF)
            else:
                self._enter_lingering(conn)
        elif new is CLOSING:
            self._enter_closing(conn)
        else:
            del self._conns[conn.cid]
            self._ready.append((CLOSED, conn.cid, conn.error))
            self._released()

    def _enter_paused(self, conn: C) -> None:
        """Stop reading (writing goes on)."""
        raise NotImplementedError

    def _enter_open(self, conn: C) -> None:
        """Read again after a pause."""
        raise NotImplementedError

    def _enter_draining(self, conn: C) -> None:
        """Stop reading; apply FLUSHED once nothing is left to send (maybe at once)."""
        raise NotImplementedError

    def _enter_lingering(self, conn: C) -> None:
        """Shut down our side; read and discard until the peer's EOF (then PEER_EOF)."""
        raise NotImplementedError

    def _enter_closing(self, conn: C) -> None:
        """Drop queued output and close the fd once nothing uses it (then RELEASED)."""
        raise NotImplementedError

    def _released(self) -> None:
        """A connection left the table: the mechanism may accept again."""

    # -- shared policy ------------------------------------------------------------

    def _new_connection(self, conn: C) -> None:
        """Enter a freshly accepted connection in the table; ACCEPTED is reported."""
        self._conns[conn.cid] = conn
        self._accepted += 1
        self._ready.append((ACCEPTED, conn.cid, None))

    def _take_cid(self) -> int:
        cid = self._next_cid
        self._next_cid += 1
        return cid

    def _room(self) -> bool:
        """True while another connection may be accepted (--max-connections)."""
        return len(self._conns) < self._max_connections

    def _queued(self, conn: C, n: int) -> None:
        """`n` more bytes await sending: pause reading above the high mark."""
        conn.out_bytes += n
        if conn.out_bytes > OUTPUT_HIGH_WATER_BYTES:
            self._pause(conn, PAUSE_OUTPUT)

    def _written(self, conn: C, n: int) -> None:
        """`n` bytes reached the socket: resume reading at the low mark."""
        conn.out_bytes -= n
        self._bytes_out += n
        if conn.paused_by and conn.out_bytes <= OUTPUT_LOW_WATER_BYTES:
            self._resume(conn, PAUSE_OUTPUT)

    def _pause(self, conn: C, reason: int) -> None:
        """Stop reading for `reason` (PAUSE_OUTPUT or PAUSE_APP)."""
        if conn.paused_by & reason or conn.state > PAUSED:
            return
        conn.paused_by |= reason
        if reason == PAUSE_OUTPUT:
            self._ready.append((WRITE_PAUSED, conn.cid, None))
        if conn.state is OPEN:
            self.transition(conn, Cause.PAUSE)

    def _resume(self, conn: C, reason: int) -> None:
        """`reason` is gone; read again if no other reason holds."""
        if not conn.paused_by & reason:
            return
        conn.paused_by &= ~reason
        if reason == PAUSE_OUTPUT:
            self._ready.append((WRITE_RESUMED, conn.cid, None))
        if not conn.paused_by and conn.state is PAUSED:
            self.transition(conn, Cause.RESUME)

    def _fail(self, conn: C, exc: OSError) -> None:
        """An I/O error: the connection is aborted and CLOSED carries `exc`."""
        if conn.error is None:
            conn.error = exc
        self.transition(conn, Cause.ABORT)

    # -- the interface, where it is policy only -------------------------------------

    def wait(self, timeout: float | None) -> list[Event]:
        """Block once (not at all if events are pending) and return every event ready."""
        events = self._ready
        self._ready = []
        self._poll(0 if events else timeout, events)
        if self._ready:  # produced by the completions just handled
            events.extend(self._ready)
            self._ready = []
        return events

    def _poll(self, timeout: float | None, events: list[Event]) -> None:
        """The mechanism's one blocking call; append the events it brings."""
        raise NotImplementedError

    def close(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            self.transition(conn, Cause.CLOSE)

    def abort(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            self.transition(conn, Cause.ABORT)

    def pause_reading(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._pause(conn, PAUSE_APP)

    def resume_reading(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._resume(conn, PAUSE_APP)

    def peername(self, conn_id: int) -> tuple[str, int] | None:
        """The peer's address: one getpeername() on the fd (a socket object is made
        around it for the call and detached, so the fd stays the backend's)."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.state > PAUSED:
            return None
        try:
            sock = socket.socket(fileno=conn.fd)
        except OSError:
            return None
        try:
            addr = sock.getpeername()
        except OSError:
            return None
        finally:
            sock.detach()
        if isinstance(addr, tuple):
            return addr[0], addr[1]
        return None  # a Unix socket's peer has no address

    def wakeup_fileno(self) -> int:
        return self._wakeup_w.fileno()

    def force_wakeup(self) -> None:
        with contextlib.suppress(OSError):  # full (a wakeup is pending anyway) or closed
            self._wakeup_w.send(b"\0")

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wakeup_fd, 512):
                pass

    def _close_wakeup(self) -> None:
        self._wakeup_r.close()
        self._wakeup_w.close()

    def statistics(self) -> BackendStatistics:
        ops, waits, syscalls, sqes, cqes = self._mechanism_statistics()
        return BackendStatistics(
            backend=self.name,
            open_connections=len(self._conns),
            ops_in_flight=ops,
            accepted=self._accepted,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            wait_calls=waits,
            syscalls=syscalls,
            sqes_submitted=sqes,
            cqes_reaped=cqes,
            accept_errors=self._accept_errors,
            paused_reads=self._paused_reads,
        )

    def _mechanism_statistics(self) -> tuple[int, int, int, int, int]:
        """(ops in flight, wait calls, syscalls, SQEs submitted, CQEs reaped)."""
        raise NotImplementedError
