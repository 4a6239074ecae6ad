"""Faults: resets, half-closes, a burst of short connections, EMFILE, a dry buffer ring."""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.server import local_server

from .support import (
    GET,
    HELLO,
    HttpReader,
    Sender,
    burst,
    close_all,
    collect_hellos,
    connect,
    error_records,
    get_hello,
    parse_all,
    read_until_close,
    request_many,
    set_linger_zero,
    sha256,
    wait_for,
)

BURST = 50_000


def _healthy_and_empty(srv: Any) -> dict[str, Any]:
    """A new client is served, and every connection is gone; returns the stats."""
    if srv.config.protocol == "http":
        assert get_hello(srv.address) < 10
    else:
        with connect(srv.address) as sock:
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
    wait_for(lambda: srv.stats()["open_connections"] == 0, what=lambda: str(srv.stats()))
    assert srv.server.dispatcher.internal_errors == 0  # exceptions caught at the dispatch boundary
    stats: dict[str, Any] = srv.stats()
    return stats


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]


# -- resets ----------------------------------------------------------------------------

PARTIAL_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000,
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHo",  # one answered, one partial
]


def test_reset_mid_request(
    make_http_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    closer: Callable[[socket.socket], socket.socket],
) -> None:
    caplog.set_level(logging.INFO, logger="server")
    with make_http_server(protocol="http", timeout_read=30.0) as srv:
        for partial in PARTIAL_REQUESTS * 5:
            sock = closer(connect(srv.address))
            before = srv.stats()["bytes_in"]
            sock.sendall(partial)
            target = before + len(partial)
            wait_for(lambda t=target: srv.stats()["bytes_in"] >= t)
            set_linger_zero(sock)
            sock.close()
        stats = _healthy_and_empty(srv)
        assert stats["timeouts"] == 0  # closed by the resets, not by the sweep
    _no_errors(caplog)


def test_reset_mid_response(
    make_http_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    closer: Callable[[socket.socket], socket.socket],
) -> None:
    """A big response the client stops reading, then resets: the server drops it, nothing else."""
    caplog.set_level(logging.INFO, logger="server")
    body = random.Random(1).randbytes(1_000_000)
    request = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with make_http_server(protocol="http") as srv:
        for _ in range(5):
            sock = closer(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(srv.address)
            before = srv.stats()["requests"]
            sock.sendall(request)
            assert sock.recv(1000).startswith(b"HTTP/1.1 200 ")  # the response has begun
            wait_for(lambda b=before: srv.stats()["requests"] > b)
            set_linger_zero(sock)
            sock.close()
        _healthy_and_empty(srv)
    _no_errors(caplog)


def test_reset_while_echoing_megabytes(
    make_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    closer: Callable[[socket.socket], socket.socket],
) -> None:
    """Echo: the client sends without reading until the server pauses it, then resets."""
    caplog.set_level(logging.INFO, logger="server")
    with make_server(protocol="echo") as srv:
        for i in range(3):
            sock = closer(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(srv.address)
            sock.setblocking(False)
            chunk = b"e" * 65536
            deadline = time.monotonic() + 20
            # Send without reading until the server has paused reading this connection.
            while srv.stats()["paused_reads"] <= i:
                assert time.monotonic() < deadline, f"never paused: {srv.stats()}"
                try:
                    sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
            set_linger_zero(sock)
            sock.close()
        _healthy_and_empty(srv)
    _no_errors(caplog)


def test_reset_after_an_error_response(
    make_http_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    closer: Callable[[socket.socket], socket.socket],
) -> None:
    """A reset while the server lingers (shut down, discarding input until EOF)."""
    caplog.set_level(logging.INFO, logger="server")
    with make_http_server(protocol="http") as srv:
        for _ in range(5):
            sock = closer(connect(srv.address))
            sock.sendall(b"BAD\x00 / HTTP/1.1\r\n\r\n")
            resp = HttpReader(sock).read_response()
            assert resp.status == 400 and resp.closes
            sock.sendall(b"more junk")
            set_linger_zero(sock)
            sock.close()
        _healthy_and_empty(srv)
    _no_errors(caplog)


# -- half-closed sockets -------------------------------------------------------------------


def test_half_closed_http_clients_get_every_response(make_http_server: Callable[..., Any]) -> None:
    body = random.Random(2).randbytes(500_000)
    post = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with make_http_server(protocol="http") as srv:
        # Request, then EOF: the response, then a clean close.
        cases = [([GET], [HELLO]), ([GET] * 3, [HELLO] * 3), ([post], [body])]
        cases.append(([GET, post, GET], [HELLO, body, HELLO]))
        for requests, bodies in cases:
            with connect(srv.address) as sock:
                sock.sendall(b"".join(requests))
                sock.shutdown(socket.SHUT_WR)
                got = read_until_close(sock)
            assert got.end == "eof"
            responses = parse_all(got.data)
            assert [r.status for r in responses] == [200] * len(bodies)
            assert [r.body for r in responses] == bodies
        # EOF before anything: closed at once, silently.
        with connect(srv.address) as sock:
            sock.shutdown(socket.SHUT_WR)
            assert read_until_close(sock, 5).end == "eof"
        _healthy_and_empty(srv)


def test_half_closed_echo_client_gets_every_byte_back(make_server: Callable[..., Any]) -> None:
    data = random.Random(3).randbytes(4 << 20)
    with make_server(protocol="echo") as srv, connect(srv.address) as sock:
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        received = bytearray()
        sent = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            events = sel.select(1.0)
            if not events:
                continue
            mask = events[0][1]
            if mask & selectors.EVENT_WRITE:
                sent += sock.send(data[sent : sent + 65536])
                if sent == len(data):
                    sock.shutdown(socket.SHUT_WR)
                    sel.modify(sock, selectors.EVENT_READ)
            if mask & selectors.EVENT_READ:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        sel.close()
        assert sent == len(data)
        assert len(received) == len(data) and sha256(received) == sha256(data)


def _slow_read(sock: socket.socket, size: int, pause: float) -> bytearray:
    got = bytearray()
    with contextlib.suppress(TimeoutError):
        while len(got) < size:
            chunk = sock.recv(16384)
            if not chunk:
                break
            got += chunk
            time.sleep(pause)
    return got


def test_slow_reader_gets_every_echoed_byte(
    make_server: Callable[..., Any], closer: Callable[[socket.socket], socket.socket]
) -> None:
    """The client sends 6 MiB but reads slowly: the server pauses reading (backpressure),
    then resumes, and every byte comes back in order."""
    data = random.Random(5).randbytes(6 << 20)
    with make_server(protocol="echo") as srv:
        sock = closer(socket.socket())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(srv.address)
        sock.settimeout(5)
        with sock:
            sender = Sender(sock, data)
            sender.start()
            got = _slow_read(sock, len(data), 0.0005)
            stats = srv.stats()
            intact = len(got) == len(data) and got == data
            assert intact, (
                f"{len(got)} of {len(data)} bytes back (prefix intact: "
                f"{data[: len(got)] == got}); stats {stats}"
            )
            sender.finish(10)
        assert stats["paused_reads"] >= 1


def test_slow_reader_gets_every_pipelined_response(
    make_http_server: Callable[..., Any], closer: Callable[[socket.socket], socket.socket]
) -> None:
    """Pipelined POST /echo requests whose responses pile up past the 1 MiB high-water mark."""
    bodies = [random.Random(i).randbytes(900_000) for i in range(6)]
    requests = b"".join(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(b) + b for b in bodies
    )
    with make_http_server(protocol="http") as srv:
        sock = closer(socket.socket())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(srv.address)
        sock.settimeout(5)
        with sock:
            sender = Sender(sock, requests)
            sender.start()
            reader = HttpReader(sock)
            for i, body in enumerate(bodies):
                time.sleep(0.2)
                try:
                    resp = reader.read_response(timeout=10)
                except TimeoutError as exc:
                    raise AssertionError(f"response {i} stalled; stats {srv.stats()}") from exc
                assert resp.status == 200 and resp.body == body, f"response {i} differs"
            sender.finish(10)


# -- a burst of short connections ----------------------------------------------------------


@pytest.mark.timeout(300)
def test_burst_of_50k_short_connections(
    make_server: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """50,000 x (connect, GET with Connection: close, read to EOF, close), 64 at a time."""
    caplog.set_level(logging.INFO, logger="server")
    with make_server(protocol="http") as srv:
        result = burst(srv.address, BURST, in_flight=64, timeout=240)
        stats = _healthy_and_empty(srv)
    print(
        f"\n{stats['backend']}: {result.ok} short connections in {result.seconds:.1f} s "
        f"({result.rate:.0f}/s), {result.errors} client errors {result.samples[:3]}"
    )
    assert result.errors == 0, result.samples
    assert result.ok == BURST
    assert stats["accepted"] == BURST + 1  # and the health check
    assert stats["requests"] == BURST + 1
    assert stats["accept_errors"] == 0
    assert (stats["client_errors"], stats["app_errors"], stats["internal_errors"]) == (0, 0, 0)
    assert stats["timeouts"] == 0
    _no_errors(caplog)


# -- EMFILE ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_emfile_keeps_serving_and_recovers(
    backend_name: str, closer: Callable[[socket.socket], socket.socket]
) -> None:
    """With RLIMIT_NOFILE 64, accept fails with EMFILE; open connections are still served,
    and the waiting ones are served once some close."""
    with local_server(backend_name, "http", ["--timeout-keep-alive", "60"], nofile=64) as server:
        socks = [closer(connect(server.address)) for _ in range(100)]  # all in the backlog at least
        try:
            for s in socks:
                s.sendall(GET)
            served, errors, waiting = collect_hellos(socks, timeout=2.0)
            assert not errors, errors[:5]
            stats = server.stats()
            print(
                f"\n{backend_name}: nofile 64: {len(served)} served, {len(waiting)} waiting, "
                f"accept_errors {stats['accept_errors']}"
            )
            assert waiting, "every connection was served: the fd limit was not reached"
            assert stats["accept_errors"] > 0
            assert stats["open_connections"] == len(served)
            # The open connections keep being served while accept fails.
            time.sleep(0.3)
            assert not request_many(served, timeout=10)
            # Close some; the waiting ones are accepted and answered.
            closing, served = served[: len(waiting) + 5], served[len(waiting) + 5 :]
            close_all(closing)
            late, errors, still = collect_hellos(waiting, timeout=10.0)
            if errors or still:
                time.sleep(3)  # a crashing server takes a moment to drain and exit
                pytest.fail(
                    f"{len(late)} of {len(waiting)} waiting connections served after the close; "
                    f"{len(still)} silent; errors {errors[:3]}; server exit status "
                    f"{server.proc and server.proc.poll()}; its stderr ends:\n"
                    + "".join(server.stderr_lines[-12:])
                )
            assert not request_many(served + late, timeout=10)
            assert server.proc is not None and server.proc.poll() is None, "the server died"
        finally:
            close_all(socks)
        wait_for(lambda: server.stats()["open_connections"] == 0, timeout=15)
        assert server.stop() == 0
        assert server.exit_stats is not None
        assert server.exit_stats["open_connections"] == 0
        assert server.exit_stats["ops_in_flight"] == 0
        assert not server.error_lines(), "".join(server.error_lines())


def test_connections_over_the_limit_wait_and_none_is_dropped(
    make_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    closer: Callable[[socket.socket], socket.socket],
) -> None:
    """max_connections 8 and 20 clients: 8 served, the rest wait in the backlog, then
    are served as others leave."""
    caplog.set_level(logging.INFO, logger="server")
    limit = 8
    with make_server(protocol="http", max_connections=limit, timeout_keep_alive=30.0) as srv:
        socks = [closer(connect(srv.address)) for _ in range(20)]
        try:
            for s in socks:
                s.sendall(GET)
            served, errors, waiting = collect_hellos(socks, timeout=2.0)
            assert not errors, errors[:5]
            assert len(served) == limit and srv.stats()["open_connections"] == limit
            assert not request_many(served)  # still served while others wait
            rounds = 0
            while waiting:
                close_all(served)
                want = min(limit, len(waiting))
                served, errors, waiting = collect_hellos(waiting, timeout=10.0, want=want)
                assert not errors, errors[:5]
                assert len(served) == want
                rounds += 1
            assert rounds == 2
            assert srv.stats()["accept_errors"] == 0
        finally:
            close_all(socks)
        _healthy_and_empty(srv)
    _no_errors(caplog)


# -- the buffer ring running dry -------------------------------------------------------------


@pytest.mark.timeout(180)
def test_flood_of_uploads_with_a_tiny_buffer_ring(
    make_server: Callable[..., Any],
    backend_name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    closer: Callable[[socket.socket], socket.socket],
) -> None:
    """32 echo clients x 3 MiB at once through 16 receive buffers of 4 KiB (uring: ENOBUFS).

    Every byte comes back, in order: checked with a hash per connection.
    """
    caplog.set_level(logging.INFO, logger="server")
    enobufs = [0]
    if backend_name == "uring":
        from server.backends.uring import UringBackend

        original = UringBackend._handle_recv

        def counting(self: Any, conn: Any, res: int, *args: Any) -> None:
            if res == -errno.ENOBUFS:
                enobufs[0] += 1
            original(self, conn, res, *args)

        monkeypatch.setattr(UringBackend, "_handle_recv", counting)
    clients, size = 32, 3 << 20
    payloads = [random.Random(i).randbytes(size) for i in range(clients)]
    with make_server(protocol="echo", recv_buffers=16, recv_buffer_size=4096) as srv:
        sel = selectors.DefaultSelector()
        state = {}
        for i in range(clients):
            s = closer(socket.create_connection(srv.address, timeout=10))
            s.setblocking(False)
            state[s] = [i, 0, bytearray(), False]  # index, sent, received, eof
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + 150
        while any(not st[3] for st in state.values()) and time.monotonic() < deadline:
            for key, mask in sel.select(1.0):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                st = state[s]
                data = payloads[st[0]]
                if mask & selectors.EVENT_WRITE and st[1] < size:
                    with contextlib.suppress(BlockingIOError):
                        st[1] += s.send(data[st[1] : st[1] + 262144])
                    if st[1] == size:
                        s.shutdown(socket.SHUT_WR)
                        sel.modify(s, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    chunk = s.recv(1 << 20)
                    if chunk:
                        st[2] += chunk
                    else:
                        st[3] = True
                        sel.unregister(s)
        sel.close()
        for s, (i, sent, received, eof) in state.items():
            s.close()
            assert eof, f"client {i}: no EOF ({sent} sent, {len(received)} received)"
            assert len(received) == size, f"client {i}: {len(received)} of {size} bytes"
            assert sha256(received) == sha256(payloads[i]), f"client {i}: bytes differ"
        stats = _healthy_and_empty(srv)
    print(f"\n{backend_name}: {clients} x {size >> 20} MiB echoed intact; ENOBUFS {enobufs[0]}")
    assert stats["bytes_in"] == stats["bytes_out"] >= clients * size
    if backend_name == "uring":
        assert enobufs[0] > 0, "the buffer ring never ran dry: the test did not test it"
    _no_errors(caplog)
