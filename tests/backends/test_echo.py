"""The echo protocol over real sockets, on both backends (via `make_server`)."""

from __future__ import annotations

import contextlib
import hashlib
import random
import selectors
import socket
import time

import pytest

from tests.backends.client import (
    Repeater,
    Sender,
    assert_eof,
    connect,
    pattern,
    recv_exact,
    recv_until_eof,
    set_linger_zero,
    sha256,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)


def test_echo_returns_exact_bytes(make_server) -> None:
    with make_server(protocol="echo") as srv, connect(srv.address) as s:
        for payload in (b"x", bytes(range(256)), b"\r\n\0\xff" * 1000, pattern(100_000, 1)):
            s.sendall(payload)
            assert recv_exact(s, len(payload)) == payload
        s.shutdown(socket.SHUT_WR)
        assert_eof(s)


def test_echo_sees_stats(make_server, backend_name) -> None:
    with make_server(protocol="echo") as srv:
        with connect(srv.address) as s:
            s.sendall(b"hello")
            assert recv_exact(s, 5) == b"hello"
            # The server counts a send when it completes, which may be just
            # after the bytes reach us.
            wait_for(lambda: srv.stats()["bytes_out"] == 5, what=lambda: str(srv.stats()))
            stats = srv.stats()
            assert stats["backend"] == backend_name
            assert stats["accepted"] == 1
            assert stats["open_connections"] == 1
            assert stats["bytes_in"] == 5
            s.shutdown(socket.SHUT_WR)
            assert_eof(s)
        wait_for(lambda: srv.stats()["open_connections"] == 0, what="the close")


class _Client:
    __slots__ = ("done", "echoed", "eof", "payload", "sent", "sock")

    def __init__(self, sock: socket.socket, payload: bytes) -> None:
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.echoed = bytearray()
        self.eof = False
        self.done = False


def test_echo_500_concurrent_clients(make_server) -> None:
    n = 500
    rng = random.Random(500)
    with make_server(protocol="echo", backlog=1024) as srv:
        clients: list[_Client] = []
        sel = selectors.DefaultSelector()
        try:
            for i in range(n):
                sock = connect(srv.address)
                sock.setblocking(False)
                payload = b"client %d:" % i + pattern(rng.randrange(1, 20_000), i)
                clients.append(_Client(sock, payload))
            # All 500 are open at once before any byte is sent.
            wait_for(lambda: srv.stats()["open_connections"] == n, timeout=10, what="500 accepts")
            for c in clients:
                sel.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            remaining = n
            deadline = time.monotonic() + 15
            while remaining:
                assert time.monotonic() < deadline, f"{remaining} clients unfinished"
                for key, mask in sel.select(timeout=1.0):
                    c: _Client = key.data
                    if mask & selectors.EVENT_WRITE and c.sent < len(c.payload):
                        with contextlib.suppress(BlockingIOError):
                            c.sent += c.sock.send(c.payload[c.sent : c.sent + 65536])
                        if c.sent == len(c.payload):
                            # Half-close: the server must echo the rest, then EOF.
                            c.sock.shutdown(socket.SHUT_WR)
                            sel.modify(c.sock, selectors.EVENT_READ, c)
                    if mask & selectors.EVENT_READ:
                        try:
                            data = c.sock.recv(65536)
                        except BlockingIOError:
                            continue
                        if data:
                            c.echoed += data
                            assert len(c.echoed) <= len(c.payload), "echoed too much"
                        else:
                            assert c.sent == len(c.payload), "EOF before the client finished"
                            assert bytes(c.echoed) == c.payload, "wrong echo"
                            sel.unregister(c.sock)
                            c.done = True
                            remaining -= 1
            assert all(c.done and bytes(c.echoed) == c.payload for c in clients)
            assert srv.stats()["accepted"] == n
        finally:
            sel.close()
            for c in clients:
                c.sock.close()


def test_echo_payload_far_larger_than_buffers(make_server) -> None:
    size = 8 << 20
    data = pattern(size, 8)
    with make_server(protocol="echo") as srv, connect(srv.address) as s:
        sender = Sender(s, data, shut_wr=True)
        sender.start()
        h = hashlib.sha256()
        received = 0
        while chunk := s.recv(1 << 20):
            h.update(chunk)
            received += len(chunk)
            assert received <= size
        sender.finish()
        assert received == size
        assert h.hexdigest() == sha256(data)


def test_echo_half_close_small(make_server) -> None:
    with make_server(protocol="echo") as srv, connect(srv.address) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        assert recv_until_eof(s) == b"last words"


def test_echo_half_close_with_output_pending(make_server) -> None:
    """EOF arrives while megabytes are still queued for the client: all of them arrive."""
    size = 3 << 20
    data = pattern(size, 3)
    with make_server(protocol="echo") as srv, connect(srv.address) as s:
        sender = Sender(s, data, shut_wr=True)
        sender.start()
        time.sleep(0.2)  # let output pile up in the server before reading
        got = recv_until_eof(s)
        sender.finish()
        assert len(got) == size
        assert sha256(got) == sha256(data)


def test_echo_slow_reader_gets_every_byte(make_server) -> None:
    """A client that stops reading for a while (backpressure engages) then reads it all."""
    size = 12 << 20
    data = pattern(size, 12)
    with (
        make_server(protocol="echo", timeout_graceful_shutdown=2.0) as srv,
        connect(srv.address, timeout=5.0, rcvbuf=8192) as s,
    ):
        sender = Sender(s, data, shut_wr=True)
        sender.start()
        wait_for(lambda: srv.stats()["paused_reads"] >= 1, what="backpressure")
        time.sleep(0.2)
        h = hashlib.sha256()
        received = 0
        try:
            while chunk := s.recv(1 << 20):
                h.update(chunk)
                received += len(chunk)
        except TimeoutError:
            pytest.fail(f"echo stalled after {received} of {size} bytes: {srv.stats()}")
        sender.finish()
        assert received == size
        assert h.hexdigest() == sha256(data)


def test_echo_reset_mid_stream_spares_other_connection(make_server) -> None:
    with make_server(protocol="echo", timeout_graceful_shutdown=2.0) as srv:
        # B: echoes 50-100 kB messages, checking each, all through the test.
        b = connect(srv.address)

        def b_round(i: int) -> None:
            msg = pattern(50_000 + i % 50_000, i)
            b.sendall(msg)
            assert recv_exact(b, len(msg)) == msg, f"B's round {i} came back wrong"

        other = Repeater(b_round)
        other.start()
        other.wait_rounds(3)

        # A: a small receive window, sending far more than it reads, so the
        # server has megabytes of echo queued for it (and pauses reading it).
        a = connect(srv.address, rcvbuf=8192)
        a.settimeout(2.0)
        with pytest.raises(TimeoutError):
            a.sendall(pattern(24 << 20, 24))  # fills every buffer on the way, then stalls
        wait_for(lambda: srv.stats()["paused_reads"] >= 1, what="backpressure on A")
        other.wait_rounds(3)

        set_linger_zero(a)
        a.close()  # RST while the server is still sending A's echo

        wait_for(
            lambda: srv.stats()["open_connections"] == 1,
            what=lambda: f"A (reset) to be released: {srv.stats()}",
        )
        other.wait_rounds(5)
        with connect(srv.address) as c:
            c.sendall(b"after the reset")
            assert recv_exact(c, 15) == b"after the reset"
            c.shutdown(socket.SHUT_WR)
            assert_eof(c)
        other.finish()
        b.shutdown(socket.SHUT_WR)
        assert_eof(b)
        b.close()


def test_echo_idle_connection_times_out(make_server) -> None:
    with make_server(protocol="echo", timeout_read=0.5) as srv, connect(srv.address) as s:
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        start = time.monotonic()
        assert_eof(s)
        assert time.monotonic() - start >= 0.45
        wait_for(lambda: srv.stats()["timeouts"] == 1, what="timeout counted")


def test_echo_with_a_tiny_receive_buffer_ring(make_server) -> None:
    """uring: 4 buffers of 256 bytes run dry constantly (ENOBUFS); no byte is lost.

    (epoll ignores these settings; the test then is a plain concurrent echo.)
    """
    with make_server(protocol="echo", recv_buffers=4, recv_buffer_size=256) as srv:
        socks = [connect(srv.address) for _ in range(20)]
        try:
            payloads = [pattern(200_000 + i, 1000 + i) for i in range(len(socks))]
            senders = [Sender(s, p, shut_wr=True) for s, p in zip(socks, payloads, strict=True)]
            for sender in senders:
                sender.start()
            for s, p in zip(socks, payloads, strict=True):
                got = recv_until_eof(s)
                assert len(got) == len(p)
                assert sha256(got) == sha256(p)
            for sender in senders:
                sender.finish()
        finally:
            for s in socks:
                s.close()
