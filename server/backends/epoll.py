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

The backend turns readiness into the completion-style events of ``base.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
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
    Event,
)

RECV_SIZE: Final = 65536
EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT
_HANGUP: Final = select.EPOLLHUP | select.EPOLLERR


class _Conn:
    __slots__ = (
        "cid",
        "closing",
        "eof",
        "error",
        "fd",
        "lingering",
        "mask",
        "out",
        "out_bytes",
        "sock",
    )

    def __init__(self, cid: int, sock: socket.socket) -> None:
        self.cid = cid
        self.sock = sock
        self.fd = sock.fileno()
        # A list, not a deque: an empty deque is 760 bytes, a list 56, and
        # most connections never queue anything.
        self.out: list[memoryview] = []
        self.out_bytes = 0
        self.mask = EPOLLIN
        self.closing = False
        self.lingering = False
        self.eof = False
        self.error: OSError | None = None


class EpollBackend:
    """Backend on ``select.epoll``; see the module docstring."""

    name: BackendName = "epoll"

    def __init__(self, options: BackendOptions) -> None:
        self._options = options
        self._ep = select.epoll()
        self._conns: dict[int, _Conn] = {}
        self._by_fd: dict[int, _Conn] = {}
        self._listener: socket.socket | None = None
        self._listen_fd = -1
        self._listening = False
        self._accept_retry_at = 0.0
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._wakeup_fd = self._wakeup_r.fileno()
        self._ep.register(self._wakeup_fd, EPOLLIN)
        self._next_cid = 1
        self._ready: list[Event] = []  # events produced outside wait()
        self._recv_buf = bytearray(RECV_SIZE)
        self._recv_view = memoryview(self._recv_buf)
        self._accepted = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._wait_calls = 0
        self._syscalls = 0
        self._accept_errors = 0
        self._paused_reads = 0

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

    def wait(self, timeout: float | None) -> list[Event]:
        events = self._ready
        self._ready = []
        if self._accept_retry_at and time.monotonic() >= self._accept_retry_at:
            self._accept_retry_at = 0.0
            self._set_accepting(True)
        if events:
            timeout = 0
        elif self._accept_retry_at:
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
                    self._accept(events)
                elif fd == self._wakeup_fd:
                    self._drain_wakeup()
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
                self._release(conn)
        if self._ready:
            events.extend(self._ready)
            self._ready = []
        return events

    def send(self, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.fd < 0 or not data:
            return
        if conn.out:
            conn.out.append(memoryview(data))
            conn.out_bytes += len(data)
            self._check_backpressure(conn)
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
        if n < len(data):
            conn.out.append(memoryview(data)[n:])
            conn.out_bytes += len(data) - n
            self._modify(conn, conn.mask | EPOLLOUT)
            self._check_backpressure(conn)

    def close(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.fd < 0 or conn.closing:
            return
        conn.closing = True
        if conn.out:
            if conn.mask & EPOLLIN:
                self._modify(conn, conn.mask & ~EPOLLIN)
            return
        self._linger(conn)

    def abort(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None and conn.fd >= 0:
            conn.out.clear()
            conn.out_bytes = 0
            self._release(conn)

    def shutdown(self) -> None:
        self.stop_accepting()
        for conn in list(self._conns.values()):
            if conn.fd >= 0:
                self._release(conn)
        self._ep.close()
        self._wakeup_r.close()
        self._wakeup_w.close()

    def wakeup_fileno(self) -> int:
        return self._wakeup_w.fileno()

    def force_wakeup(self) -> None:
        with contextlib.suppress(OSError):
            self._wakeup_w.send(b"\0")

    def describe(self) -> dict[str, object]:
        return {}

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            backend="epoll",
            open_connections=len(self._conns),
            ops_in_flight=0,
            accepted=self._accepted,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            wait_calls=self._wait_calls,
            syscalls=self._syscalls,
            sqes_submitted=0,
            cqes_reaped=0,
            accept_errors=self._accept_errors,
            paused_reads=self._paused_reads,
        )

    # -- internals -------------------------------------------------------------

    def _set_accepting(self, on: bool) -> None:
        if self._listener is None or on == self._listening:
            return
        if on and len(self._conns) >= self._options.max_connections:
            return
        self._listening = on
        self._syscalls += 1
        if on:
            self._ep.register(self._listen_fd, EPOLLIN)
        else:
            self._ep.unregister(self._listen_fd)

    def _accept(self, events: list[Event]) -> None:
        listener = self._listener
        assert listener is not None
        limit = self._options.max_connections
        while len(self._conns) < limit:
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
            cid = self._next_cid
            self._next_cid += 1
            conn = _Conn(cid, sock)
            self._conns[cid] = conn
            self._by_fd[conn.fd] = conn
            self._ep.register(conn.fd, EPOLLIN)
            self._syscalls += 1
            self._accepted += 1
            events.append((ACCEPTED, cid, None))
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
        # One reused buffer, and a bytes of exactly n: sock.recv(65536)
        # allocates 64 KiB per call and shrinks it, which fragmented the heap
        # (RSS crept up ~8% in a 30 s soak; flat this way).
        data = self._recv_view[:n].tobytes()
        if data:
            self._bytes_in += len(data)
            if not conn.lingering:
                events.append((RECEIVED, conn.cid, data))
            return
        if conn.lingering:
            self._release(conn)
            return
        # EOF: stop reading (level-triggered EPOLLIN would fire forever) but
        # keep the socket open; the protocol decides when to close.
        conn.eof = True
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
            self._bytes_out += n
            conn.out_bytes -= n
            if n < len(chunk):
                out[0] = chunk[n:]
                return
            del out[0]
        if conn.closing:
            self._linger(conn)
            return
        mask = conn.mask & ~EPOLLOUT
        if not conn.eof and not mask & EPOLLIN and conn.out_bytes <= OUTPUT_LOW_WATER_BYTES:
            mask |= EPOLLIN  # resume reading after backpressure
        self._modify(conn, mask)

    def _check_backpressure(self, conn: _Conn) -> None:
        if conn.out_bytes > OUTPUT_HIGH_WATER_BYTES and conn.mask & EPOLLIN:
            self._paused_reads += 1
            self._modify(conn, conn.mask & ~EPOLLIN)

    def _modify(self, conn: _Conn, mask: int) -> None:
        if mask != conn.mask:
            conn.mask = mask
            self._syscalls += 1
            self._ep.modify(conn.fd, mask)

    def _fail(self, conn: _Conn, exc: OSError) -> None:
        conn.error = exc
        conn.out.clear()
        conn.out_bytes = 0
        self._release(conn)

    def _linger(self, conn: _Conn) -> None:
        """Close gracefully once output is sent.

        Closing a socket that still has unread input makes the kernel send
        RST, which can destroy the response just sent (a 400 or 413 after a
        body the server did not read).  So, unless the peer already sent
        EOF, shut down our side and read and discard until the peer's EOF;
        the loop aborts a connection that lingers past its timeout.
        """
        if conn.eof:
            self._release(conn)
            return
        self._syscalls += 1
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._release(conn)
            return
        conn.lingering = True
        self._modify(conn, EPOLLIN)

    def _release(self, conn: _Conn) -> None:
        """Close the socket now and report CLOSED on the next wait()."""
        fd = conn.fd
        conn.fd = -1
        self._by_fd.pop(fd, None)
        del self._conns[conn.cid]
        with contextlib.suppress(OSError, ValueError):
            self._ep.unregister(fd)
        conn.sock.close()
        self._syscalls += 2
        self._ready.append((CLOSED, conn.cid, conn.error))
        if not self._listening and not self._accept_retry_at:
            self._set_accepting(True)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_fd, 512):
                pass
        except OSError:
            pass
