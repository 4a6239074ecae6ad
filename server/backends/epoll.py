"""The baseline: readiness I/O with ``select.epoll`` and non-blocking sockets.

Some facts about epoll that shape this module:

- Level-triggered registration (the default) reports a socket readable for as
  long as unread data remains, so one ``recv`` per readiness per pass is
  enough and fair: a busy connection cannot starve the others.
- Writability is only interesting while output is queued; a socket that is
  registered for ``EPOLLOUT`` with nothing to send wakes the loop for
  nothing, so it is added after a short write and removed once drained.
- Every operation is its own syscall: ``epoll_wait`` once per pass, then a
  ``recv`` per readable socket, a ``send`` per response, ``epoll_ctl`` when
  interest changes, ``accept4`` per connection.  That per-message tax is what
  the io_uring backend removes; ``statistics().syscalls`` counts it.
- ``accept`` failing with EMFILE/ENFILE leaves the connection in the backlog
  and the listener readable, so the listener is unregistered for
  ``ACCEPT_RETRY_DELAY_S`` instead of spinning.
- The app's own file descriptors (``watch()``: what asyncio's readers and
  writers wait for) are registered in the same epoll, level-triggered, so
  one ``epoll_wait`` serves them and the connections alike.

The backend turns readiness into the completion-style events of ``base.py``;
the connection lifecycle (states, backpressure, the lingering close) is
``core.py``'s, and this module implements the hooks of each state.
"""

from __future__ import annotations

import contextlib
import errno
import select
import selectors
import socket
import time
from typing import Final

from server.backends.base import (
    ACCEPT_RETRY_DELAY_S,
    READY,
    RECEIVED,
    BackendName,
    BackendOptions,
    Event,
)
from server.backends.core import (
    DRAINING,
    LINGERING,
    SENDABLE,
    BackendCore,
    Cause,
    Connection,
)

RECV_SIZE: Final = 65536
EVENT_READ: Final = selectors.EVENT_READ
EVENT_WRITE: Final = selectors.EVENT_WRITE
EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT
_HANGUP: Final = select.EPOLLHUP | select.EPOLLERR


class _Conn(Connection):
    __slots__ = ("mask", "out", "sock")

    def __init__(self, cid: int, sock: socket.socket) -> None:
        super().__init__(cid, sock.fileno())
        self.sock = sock
        # A list, not a deque: an empty deque is 760 bytes, a list 56, and
        # most connections never queue anything.
        self.out: list[memoryview] = []
        self.mask = EPOLLIN


class EpollBackend(BackendCore[_Conn]):
    """Backend on ``select.epoll``; see the module docstring."""

    name: BackendName = "epoll"

    def __init__(self, options: BackendOptions) -> None:
        super().__init__(options)
        self._ep = select.epoll()
        self._by_fd: dict[int, _Conn] = {}
        self._listener: socket.socket | None = None
        self._listen_fd = -1
        self._watched: dict[int, int] = {}  # the app's fds -> selectors events
        self._listening = False
        self._accept_retry_at = 0.0
        self._ep.register(self._wakeup_fd, EPOLLIN)
        self._recv_buf = bytearray(RECV_SIZE)
        self._recv_view = memoryview(self._recv_buf)
        self._wait_calls = 0
        self._syscalls = 0

    # -- the interface ---------------------------------------------------------

    def listen(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listener = sock
        self._listen_fd = sock.fileno()
        self._set_accepting(True)

    def stop_accepting(self) -> None:
        if self._listener is not None:
            self._set_accepting(False)
            self._listener.close()
            self._listener = None

    def accepting(self) -> bool:
        return self._listener is not None  # accept() is synchronous: nothing is in flight

    def _poll(self, timeout: float | None, events: list[Event]) -> None:
        if self._accept_retry_at and time.monotonic() >= self._accept_retry_at:
            self._accept_retry_at = 0.0
            self._set_accepting(True)
        if self._accept_retry_at:
            delay = max(0.0, self._accept_retry_at - time.monotonic())
            timeout = delay if timeout is None else min(timeout, delay)
        ready = self._ep.poll(-1 if timeout is None else timeout)
        self._wait_calls += 1
        self._syscalls += 1
        by_fd = self._by_fd
        for fd, mask in ready:
            conn = by_fd.get(fd)
            if conn is None:
                if fd == self._listen_fd:
                    self._accept()
                elif fd == self._wakeup_fd:
                    self._drain_wakeup()
                    self._syscalls += 1
                else:
                    wanted = self._watched.get(fd)
                    if wanted:  # as selectors.EpollSelector reads a mask
                        got = (EVENT_WRITE if mask & ~EPOLLIN else 0) | (
                            EVENT_READ if mask & ~EPOLLOUT else 0
                        )
                        if got & wanted:
                            events.append((READY, fd, got & wanted))
                continue
            if mask & EPOLLOUT or (mask & ~EPOLLIN and conn.out):
                self._flush(conn)
                if conn.fd < 0:
                    continue
            if conn.mask & EPOLLIN:
                if mask & ~EPOLLOUT:
                    self._recv(conn, events)
            elif mask & _HANGUP and not conn.out:
                # EPOLLHUP/EPOLLERR are reported even when not asked for; on
                # a socket we no longer read and have nothing to send, they
                # would wake every pass, so the connection ends here.
                self.transition(conn, Cause.ABORT)

    def send(self, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.state > SENDABLE or not data:
            return
        size = len(data)
        if conn.out:
            conn.out.append(memoryview(data))
            self._queued(conn, size)
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._syscalls += 1
            self._fail(conn, exc)
            return
        self._syscalls += 1
        self._bytes_out += n
        if n < size:
            conn.out.append(memoryview(data)[n:])
            self._modify(conn, conn.mask | EPOLLOUT)
            self._queued(conn, size - n)

    def shutdown(self) -> None:
        self.stop_accepting()
        for conn in list(self._conns.values()):
            self.transition(conn, Cause.ABORT)
        self._ready.clear()
        self._ep.close()
        self._close_wakeup()

    def describe(self) -> dict[str, object]:
        return {}

    def watch(self, fd: int, events: int) -> None:
        old = self._watched.get(fd)
        if not events:
            if old is not None:
                del self._watched[fd]
                with contextlib.suppress(OSError, ValueError):  # already closed
                    self._ep.unregister(fd)
            return
        mask = (EPOLLIN if events & EVENT_READ else 0) | (EPOLLOUT if events & EVENT_WRITE else 0)
        if old is None:
            self._ep.register(fd, mask)
        elif old != events:
            self._ep.modify(fd, mask)
        self._watched[fd] = events
        self._syscalls += 1

    def _mechanism_statistics(self) -> tuple[int, int, int, int, int]:
        return 0, self._wait_calls, self._syscalls, 0, 0

    # -- the states' hooks ---------------------------------------------------------

    def _enter_paused(self, conn: _Conn) -> None:
        self._modify(conn, conn.mask & ~EPOLLIN)

    def _enter_open(self, conn: _Conn) -> None:
        if not conn.eof:
            self._modify(conn, conn.mask | EPOLLIN)

    def _enter_draining(self, conn: _Conn) -> None:
        if conn.out:
            self._modify(conn, conn.mask & ~EPOLLIN)  # _flush applies FLUSHED
        else:
            self.transition(conn, Cause.FLUSHED)

    def _enter_lingering(self, conn: _Conn) -> None:
        self._syscalls += 1
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.transition(conn, Cause.ABORT)
            return
        self._modify(conn, EPOLLIN)

    def _enter_closing(self, conn: _Conn) -> None:
        """Close the socket now (epoll has nothing in flight) and release it."""
        conn.out.clear()
        conn.out_bytes = 0
        fd = conn.fd
        conn.fd = -1
        self._by_fd.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(fd)
        conn.sock.close()
        self._syscalls += 2
        self.transition(conn, Cause.RELEASED)

    def _released(self) -> None:
        if not self._listening and not self._accept_retry_at:
            self._set_accepting(True)

    # -- the mechanism -------------------------------------------------------------

    def _set_accepting(self, on: bool) -> None:
        if self._listener is None or on == self._listening:
            return
        if on and not self._room():
            return
        self._listening = on
        self._syscalls += 1
        if on:
            self._ep.register(self._listen_fd, EPOLLIN)
        else:
            self._ep.unregister(self._listen_fd)

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while self._room():
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                self._syscalls += 1
                return
            except OSError as exc:
                self._syscalls += 1
                self._accept_errors += 1
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._set_accepting(False)
                    self._accept_retry_at = time.monotonic() + ACCEPT_RETRY_DELAY_S
                    return
                continue  # ECONNABORTED and friends: that client is gone
            self._syscalls += 2  # accept4 + fcntl(O_NONBLOCK)
            sock.setblocking(False)
            conn = _Conn(self._take_cid(), sock)
            self._by_fd[conn.fd] = conn
            self._ep.register(conn.fd, EPOLLIN)
            self._syscalls += 1
            self._new_connection(conn)
        self._set_accepting(False)

    def _recv(self, conn: _Conn, events: list[Event]) -> None:
        self._syscalls += 1
        try:
            n = conn.sock.recv_into(self._recv_buf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, exc)
            return
        if n:
            self._bytes_in += n
            if conn.state is not LINGERING:
                # One reused buffer, and a bytes of exactly n: sock.recv(65536)
                # allocates 64 KiB per call and shrinks it, which fragmented
                # the heap (RSS crept up ~8% in a 30 s soak; flat this way).
                events.append((RECEIVED, conn.cid, self._recv_view[:n].tobytes()))
            return
        conn.eof = True
        if conn.state is LINGERING:
            self.transition(conn, Cause.PEER_EOF)
            return
        # EOF: stop reading (level-triggered EPOLLIN would fire forever) but
        # keep the socket open; the protocol decides when to close.
        self._modify(conn, conn.mask & ~EPOLLIN)
        events.append((RECEIVED, conn.cid, b""))

    def _flush(self, conn: _Conn) -> None:
        out = conn.out
        while out:
            chunk = out[0]
            self._syscalls += 1
            try:
                n = conn.sock.send(chunk)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(conn, exc)
                return
            self._written(conn, n)
            if n < len(chunk):
                out[0] = chunk[n:]
                return
            del out[0]
        if conn.state is DRAINING:
            self.transition(conn, Cause.FLUSHED)
        else:
            self._modify(conn, conn.mask & ~EPOLLOUT)

    def _modify(self, conn: _Conn, mask: int) -> None:
        if mask != conn.mask:
            conn.mask = mask
            self._syscalls += 1
            self._ep.modify(conn.fd, mask)
