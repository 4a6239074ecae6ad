"""The interface between the hot loop and an I/O mechanism.

It says what the server needs, not what the kernel offers: the loop asks for
events, queues bytes to send and asks for connections to be closed.  Both
backends report completion-style events (bytes *received*, not "readable"),
so the epoll backend does its recv/send on readiness and hides that, the way
trio's Windows backend hides completions behind readiness, reversed.

Events are plain tuples ``(kind, conn_id, payload)``: on this machine a tuple
costs 23 ns to build, a slotted dataclass 105 ns and a frozen one 272 ns
(``timeit``, Python 3.11), and the loop builds one per message.

- ``(ACCEPTED, conn_id, None)``: a new connection.
- ``(RECEIVED, conn_id, data)``: bytes from the peer; ``b""`` is EOF (the
  peer shut down its side; ours may still send, as h11 expects).
- ``(CLOSED, conn_id, error)``: the connection is gone and its id will not
  appear again; ``error`` is an ``OSError`` or None.  Every accepted
  connection ends with exactly one CLOSED, whoever closed it.
- ``(WRITE_PAUSED, conn_id, None)`` / ``(WRITE_RESUMED, conn_id, None)``: its
  unsent output went above ``OUTPUT_HIGH_WATER_BYTES``, and later drained to
  ``OUTPUT_LOW_WATER_BYTES`` (asyncio's ``pause_writing``/``resume_writing``).
- ``(READY, fd, mask)``: a file descriptor the server does not own, watched
  with ``watch()``, is ready (``mask``: ``selectors.EVENT_READ`` and/or
  ``EVENT_WRITE``).  Readiness is level-triggered: an fd still ready at the
  next ``wait()`` is reported again, as ``select()`` would.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

BackendName = Literal["epoll", "uring"]

ACCEPTED: Final = 0
RECEIVED: Final = 1
CLOSED: Final = 2
WRITE_PAUSED: Final = 3
WRITE_RESUMED: Final = 4
READY: Final = 5

Event = tuple[int, int, Any]

# A connection whose unsent output exceeds this stops being read until it
# drains below the low mark, so a client that sends without reading cannot
# make the server buffer without bound.
OUTPUT_HIGH_WATER_BYTES: Final = 1 << 20
OUTPUT_LOW_WATER_BYTES: Final = 256 << 10

# After EMFILE/ENFILE on accept, wait this long before accepting again; the
# open connections keep being served meanwhile.
ACCEPT_RETRY_DELAY_S: Final = 0.1


class BackendUnavailable(Exception):
    """The mechanism cannot be used here; the message names why and what to do."""


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """What a backend is built from (the rest of the Config is not its business)."""

    max_connections: int = 10_000
    ring_entries: int = 256  # uring only, like the four below
    cq_factor: int = 8
    recv_buffer_size: int = 4096
    recv_buffers: int = 2048
    sqpoll: bool = False


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """A snapshot of one backend's counters (trio's ``_EpollStatistics``)."""

    backend: BackendName
    open_connections: int
    ops_in_flight: int
    accepted: int
    bytes_in: int
    bytes_out: int
    wait_calls: int  # epoll_wait, or io_uring_enter
    syscalls: int  # every syscall the backend made for I/O
    sqes_submitted: int
    cqes_reaped: int
    accept_errors: int
    paused_reads: int


class Backend(Protocol):
    """What the hot loop drives; `EpollBackend` and `UringBackend` satisfy it."""

    name: BackendName

    def listen(self, sock: socket.socket) -> None:
        """Start accepting on `sock`, which the backend now owns."""

    def stop_accepting(self) -> None:
        """Stop accepting and close the listening socket (new connects are refused)."""

    def accepting(self) -> bool:
        """False once the listening socket is closed and no accept can complete any more.

        A connection that an accept still in flight brings in after
        `stop_accepting` is served, not closed (with ``--workers`` the socket is
        shared, and another worker would have served it); a retiring worker
        waits for this before it counts its connections as done.
        """
        ...

    def wait(self, timeout: float | None) -> list[Event]:
        """Block once, for at most `timeout` seconds, and return every event ready."""
        ...

    def send(self, conn_id: int, data: bytes) -> None:
        """Queue `data`; the backend finishes short writes, in order."""

    def close(self, conn_id: int) -> None:
        """Close once queued output is sent; CLOSED follows."""

    def abort(self, conn_id: int) -> None:
        """Close now, dropping unsent output; CLOSED follows."""

    def pause_reading(self, conn_id: int) -> None:
        """Stop reading from the peer until `resume_reading` (the app is not keeping up)."""

    def resume_reading(self, conn_id: int) -> None:
        """Read again after `pause_reading` (unless output is still above its mark)."""

    def peername(self, conn_id: int) -> tuple[str, int] | None:
        """The peer's address (host, port), or None if unknown or gone."""
        ...

    def watch(self, fd: int, events: int) -> None:
        """Report READY for `fd`, which the server does not own, while it is ready for
        `events` (selectors.EVENT_READ | EVENT_WRITE); 0 stops watching it."""

    def shutdown(self) -> None:
        """Close every connection and release the mechanism's resources."""

    def statistics(self) -> BackendStatistics:
        """Counters so far."""
        ...

    def wakeup_fileno(self) -> int:
        """An fd whose writing wakes a blocked wait() (for signal.set_wakeup_fd)."""
        ...

    def force_wakeup(self) -> None:
        """Make a blocked wait() return soon; safe from any thread (trio's force_wakeup)."""

    def describe(self) -> dict[str, object]:
        """Facts of the mechanism worth printing at start-up (ring flags and sizes)."""
        ...
