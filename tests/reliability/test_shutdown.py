"""SIGTERM under load: requests already read are answered in full, new ones refused, exit 0."""

from __future__ import annotations

import random
import signal
import socket
import time
from collections.abc import Callable

import pytest

from tests.backends.client import refused
from tests.support.server import local_server

from .support import GET, HELLO, HttpReader, Sender, connect, read_until_close, wait_for

GRACE_S = 8.0


@pytest.mark.timeout(120)
def test_sigterm_under_load(
    backend_name: str, http_parser: str, closer: Callable[[socket.socket], socket.socket]
) -> None:
    args = ["--http", http_parser, "--timeout-graceful-shutdown", str(GRACE_S)]
    args += ["--timeout-keep-alive", "60", "--timeout-read", "60"]
    with local_server(backend_name, "http", args) as server:
        address = server.address
        # Idle keep-alive connections, each after one request.
        idle = [closer(connect(address)) for _ in range(5)]
        for sock in idle:
            sock.sendall(GET)
            assert HttpReader(sock).read_response().body == HELLO
        # Big responses in flight: the requests are read, the client has not read the answers
        # (with 1 MiB bodies at most, the kernel may hold all of them: then this checks that
        # the close after SIGTERM does not destroy them with a reset).
        bodies = [random.Random(i).randbytes(900_000) for i in range(4)]
        busy = []
        for body in bodies:
            sock = closer(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.settimeout(10)
            sock.connect(address)
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            busy.append(sock)
        # A POST whose body is still arriving.
        partial_body = random.Random(99).randbytes(200_000)
        partial = closer(connect(address))
        partial.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(partial_body)
            + partial_body[:100_000]
        )
        # A request whose head is still arriving.
        head = closer(connect(address))
        head.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        senders = []
        for sock, body in zip(busy, bodies, strict=True):
            # sendall in threads: the server reads the body while answering nothing yet
            t = Sender(sock, body)
            t.start()
            senders.append(t)
        # Everything sent so far has reached the server (a lower bound: heads not counted).
        sent = 5 * len(GET) + sum(map(len, bodies)) + 100_000
        stats = wait_for(
            lambda: (
                (s := server.stats())["requests"] == len(idle) + len(bodies)
                and s["bytes_in"] >= sent
                and s
            ),
            timeout=20,
        )
        assert stats["open_connections"] == len(idle) + len(busy) + 2

        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        # New connections are refused once the listener is closed, while the server still
        # finishes the requests in flight.
        wait_for(lambda: refused(address), timeout=5, what="connections refused after SIGTERM")
        assert server.proc is not None and server.proc.poll() is None
        # Idle connections are closed at once, cleanly.
        for sock in idle:
            with sock:
                assert read_until_close(sock, 5).end == "eof"
        # The rest of the partial head and body arrive after the signal: answered, then closed.
        time.sleep(0.3)
        head.sendall(b"\r\n")
        reader = HttpReader(head)
        resp = reader.read_response()
        assert resp.status == 200 and resp.body == HELLO and resp.closes
        reader.assert_eof()
        head.close()
        partial.sendall(partial_body[100_000:])
        reader = HttpReader(partial)
        resp = reader.read_response()
        assert resp.status == 200 and resp.body == partial_body and resp.closes
        reader.assert_eof()
        partial.close()
        # The big responses arrive whole, then a clean close.
        for sock, body, sender in zip(busy, bodies, senders, strict=True):
            with sock:
                reader = HttpReader(sock)
                resp = reader.read_response(timeout=20)
                assert resp.status == 200 and resp.body == body
                reader.assert_eof()
            sender.finish(5)
        rc = server.wait(GRACE_S + 10)
        elapsed = time.monotonic() - t0
        print(f"\n{backend_name}: SIGTERM to exit {elapsed:.2f} s; exit line {server.exit_stats}")
        assert rc == 0
        assert elapsed < GRACE_S, "took the whole grace period: a connection was not finished"
        assert server.exit_stats is not None, "no exit line on stdout"
        assert server.exit_stats["open_connections"] == 0
        assert server.exit_stats["ops_in_flight"] == 0
        assert server.exit_stats["requests"] == len(idle) + len(bodies) + 2
        assert not server.error_lines(), server.error_lines()
        assert not any("grace period over" in line for line in server.stderr_lines)


@pytest.mark.timeout(60)
def test_sigterm_when_idle_exits_at_once(
    backend_name: str, closer: Callable[[socket.socket], socket.socket]
) -> None:
    with local_server(backend_name, "echo", ["--timeout-graceful-shutdown", "30"]) as server:
        socks = [closer(connect(server.address)) for _ in range(20)]
        for s in socks:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        for s in socks:
            with s:
                assert read_until_close(s, 5).end == "eof"
        assert server.wait(10) == 0
        assert time.monotonic() - t0 < 5
        assert server.exit_stats is not None
        assert server.exit_stats["open_connections"] == 0
        assert server.exit_stats["ops_in_flight"] == 0
