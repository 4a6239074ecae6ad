"""Slow and idle clients: slowloris, the idle and keep-alive timeouts, 10,000 idle connections."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from server.config import Config
from tests.support.server import local_server

from .support import (
    GET,
    HELLO,
    HttpReader,
    ReadResult,
    close_all,
    connect,
    error_records,
    get_hello,
    nofile_at_least,
    open_many,
    parse_all,
    read_until_close,
    request_many,
    wait_for,
)

SLOWLORIS = 2000
IDLE = 10_000
WARM_RECEIVES = 2 * Config().recv_buffers
PROMPT_S = 2.0  # "promptly": a generous bound, not a speed claim


class Trickler(threading.Thread):
    """Sends the next byte of an endless request head on every socket, round after round."""

    HEAD = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: "

    def __init__(self, socks: list[socket.socket], interval: float) -> None:
        super().__init__(daemon=True)
        self.socks = socks
        self.interval = interval
        self.stop = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            i = self.rounds
            byte = self.HEAD[i : i + 1] or b"a"
            for s in self.socks:
                try:
                    s.send(byte)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    self.errors.append(repr(exc))
            self.rounds += 1
            self.stop.wait(self.interval)


@pytest.mark.timeout(180)
def test_slowloris_does_not_stop_a_normal_client(
    make_http_server: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server")
    with (
        nofile_at_least(2 * SLOWLORIS + 500),
        make_http_server(
            protocol="http", timeout_read=30.0, timeout_keep_alive=30.0, timeout_header=300.0
        ) as srv,
    ):
        slow = open_many(srv.address, SLOWLORIS)
        trickler = Trickler(slow, interval=0.25)
        try:
            trickler.start()
            wait_for(
                lambda: srv.stats()["open_connections"] >= SLOWLORIS,
                timeout=60,
                what=lambda: f"{SLOWLORIS} slowloris connections accepted: {srv.stats()}",
            )
            wait_for(lambda: trickler.rounds >= 8, timeout=30, what="trickling to start")
            latencies = []
            for _ in range(10):
                latencies.append(get_hello(srv.address))
                time.sleep(0.1)
            bytes_before = srv.stats()["bytes_in"]
            rounds = trickler.rounds
            wait_for(lambda: trickler.rounds >= rounds + 2, timeout=30)
            stats = srv.stats()
        finally:
            trickler.stop.set()
            trickler.join(10)
            close_all(slow)
        # The slow clients were being read all along, and none was served.
        assert stats["bytes_in"] > bytes_before
        assert stats["open_connections"] >= SLOWLORIS
        assert not trickler.errors, trickler.errors[:5]
        print(
            f"\n{stats['backend']}: {SLOWLORIS} slowloris connections, normal GET latency "
            f"max {max(latencies) * 1000:.1f} ms, median {sorted(latencies)[5] * 1000:.1f} ms"
        )
        assert max(latencies) < PROMPT_S, latencies
        wait_for(lambda: srv.stats()["open_connections"] == 0, timeout=30)
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]


def _closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes, str]:
    t0 = time.monotonic()
    got = read_until_close(sock, timeout=limit)
    return time.monotonic() - t0, got.data, got.end


def test_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(
    make_http_server: Callable[..., Any],
) -> None:
    with make_http_server(protocol="http", timeout_keep_alive=0.6, timeout_read=30.0) as srv:
        with connect(srv.address) as sock:
            sock.sendall(GET)
            assert HttpReader(sock).read_response().body == HELLO
            elapsed, data, end = _closed_after(sock, 10)
        assert (data, end) == (b"", "eof")
        assert elapsed >= 0.5, f"closed {elapsed:.2f} s after the response, before the timeout"
        assert elapsed < 5
        assert srv.stats()["timeouts"] >= 1


def test_silent_new_connection_is_closed_after_the_keepalive_timeout(
    make_server: Callable[..., Any],
) -> None:
    with make_server(protocol="http", timeout_keep_alive=0.6, timeout_read=30.0) as srv:
        with connect(srv.address) as sock:
            elapsed, data, end = _closed_after(sock, 10)
        assert (data, end) == (b"", "eof")
        assert 0.5 <= elapsed < 5, elapsed


def test_stalled_request_gets_408_after_the_idle_timeout(
    make_http_server: Callable[..., Any],
) -> None:
    with make_http_server(protocol="http", timeout_keep_alive=30.0, timeout_read=0.6) as srv:
        for partial in (
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        ):
            with connect(srv.address) as sock:
                sock.sendall(partial)
                elapsed, data, end = _closed_after(sock, 10)
            assert end == "eof"
            (resp,) = parse_all(data)
            assert resp.status == 408 and resp.closes
            assert 0.5 <= elapsed < 5, elapsed


def test_trickled_head_gets_408_after_the_header_timeout(
    make_http_server: Callable[..., Any], closer: Callable[[socket.socket], socket.socket]
) -> None:
    """Bytes arriving every 0.1 s beat the idle timeout, not the header timeout."""
    with make_http_server(
        protocol="http", timeout_keep_alive=30.0, timeout_read=30.0, timeout_header=1.0
    ) as srv:
        sock = closer(connect(srv.address))
        trickler = Trickler([sock], interval=0.1)
        t0 = time.monotonic()
        trickler.start()
        try:
            got = read_until_close(sock, timeout=10)
        finally:
            trickler.stop.set()
            trickler.join(10)
        elapsed = time.monotonic() - t0
        assert got.end == "eof"
        (resp,) = parse_all(got.data)
        assert resp.status == 408 and resp.closes
        # Cut between the timeout and the timeout plus two sweeps (0.25 s each).
        assert 1.0 <= elapsed < 3.0, elapsed
        assert trickler.rounds >= 10  # it kept sending all along
        assert srv.stats()["timeouts"] == 1
        sock.close()
        wait_for(lambda: srv.stats()["open_connections"] == 0, timeout=10)


def test_heads_each_within_the_header_timeout_are_served(
    make_http_server: Callable[..., Any], closer: Callable[[socket.socket], socket.socket]
) -> None:
    """The bound is per head: a pipelining client that is never between heads is not cut.

    Each write ends one head and begins the next, so every sweep sees a head
    pending, for 1.75 s in all, while each head takes 0.35 s.
    """
    with make_http_server(
        protocol="http", timeout_keep_alive=30.0, timeout_read=30.0, timeout_header=1.0
    ) as srv:
        sock = closer(connect(srv.address))
        half = len(GET) // 2
        sock.sendall(GET[:half])
        for _ in range(5):
            time.sleep(0.35)
            sock.sendall(GET[half:] + GET[:half])
        time.sleep(0.35)
        sock.sendall(GET[half:])
        reader = HttpReader(sock)
        bodies = [reader.read_response().body for _ in range(6)]
        assert bodies == [HELLO] * 6
        assert srv.stats()["timeouts"] == 0
        sock.close()
        wait_for(lambda: srv.stats()["open_connections"] == 0, timeout=10)


def test_slow_but_steady_request_is_served(make_http_server: Callable[..., Any]) -> None:
    """The idle timeout measures silence, not the time a request takes."""
    with (
        make_http_server(protocol="http", timeout_keep_alive=30.0, timeout_read=0.8) as srv,
        connect(srv.address) as sock,
    ):
        request = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 8 + b"\r\n\r\n"
        t0 = time.monotonic()
        for i in range(0, len(request), 4):
            sock.sendall(request[i : i + 4])
            time.sleep(0.15)
        assert time.monotonic() - t0 > 1.6  # twice the idle timeout, in all
        assert HttpReader(sock).read_response().body == HELLO


def test_echo_idle_connection_is_closed_after_the_idle_timeout(
    make_server: Callable[..., Any],
) -> None:
    with make_server(protocol="echo", timeout_read=0.6) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
            elapsed, data, end = _closed_after(sock, 10)
        assert (data, end) == (b"", "eof")
        assert 0.5 <= elapsed < 5, elapsed


def test_many_idle_connections_all_time_out(make_server: Callable[..., Any]) -> None:
    """The server half-closes each (FIN) at the timeout, then closes when the client does."""
    with nofile_at_least(3000), make_server(protocol="http", timeout_keep_alive=1.0) as srv:
        socks = open_many(srv.address, 1000)
        try:
            assert not request_many(socks[:500])  # half are keep-alive after a request
            wait_for(lambda: srv.stats()["timeouts"] >= 1000, timeout=15)
            for s in socks:
                s.setblocking(True)
                assert read_until_close(s, 5) == ReadResult(b"", "eof")
        finally:
            close_all(socks)
        wait_for(lambda: srv.stats()["open_connections"] == 0, timeout=15)


# -- 10,000 idle connections, the server in its own process ----------------------------


@pytest.mark.timeout(240)
def test_10k_idle_keepalive_connections_memory(backend_name: str, http_parser: str) -> None:
    """10,000 keep-alive connections, each after one request, held idle; RSS per connection."""
    args = ["--timeout-keep-alive", "600", "--timeout-read", "600", "--max-connections", "20000"]
    args += ["--http", http_parser]
    with (
        nofile_at_least(IDLE + 500),
        local_server(backend_name, "http", [*args, "--backlog", "4096"]) as server,
    ):
        address = server.address
        # The warm-up also cycles uring's provided receive buffers: the kernel takes them in
        # ring order, so each one becomes resident the first time it is used, and the whole
        # slab (recv_buffers x recv_buffer_size, a fixed cost) would otherwise be counted as
        # per-connection memory by the first 10,000 requests.
        warm = open_many(address, 500)
        warm_rounds = WARM_RECEIVES // len(warm)
        for _ in range(warm_rounds):
            assert not request_many(warm)
        close_all(warm)
        wait_for(lambda: server.stats()["open_connections"] == 0, timeout=20)
        time.sleep(0.5)
        rss0, fds0 = server.rss_kib(), server.fds()
        socks = open_many(address, IDLE, timeout=120)
        try:
            errors = request_many(socks, timeout=120)
            assert not errors, (len(errors), errors[:5])
            stats = wait_for(
                lambda: (s := server.stats())["open_connections"] == IDLE and s, timeout=30
            )
            time.sleep(1.0)
            rss1, fds1 = server.rss_kib(), server.fds()
            per_conn = (rss1 - rss0) * 1024 / IDLE
            print(
                f"\n{backend_name}, {http_parser}: {IDLE} idle keep-alive connections: "
                f"server RSS {rss0} -> "
                f"{rss1} KiB, {per_conn:.0f} bytes per idle connection; fds {fds0} -> {fds1}"
            )
            assert fds1 - fds0 == IDLE
            # Issue 6's target, on both backends (Python objects: not noisy like a timing).
            assert per_conn < 1024
            assert stats["requests"] == warm_rounds * len(warm) + IDLE
            # They are live connections: a sample of them is served again.
            assert not request_many(socks[:: IDLE // 200])
        finally:
            close_all(socks)
        wait_for(lambda: server.stats()["open_connections"] == 0, timeout=60)
        assert server.fds() == fds0
        assert server.stop() == 0
        assert server.exit_stats is not None
        assert server.exit_stats["open_connections"] == 0
        assert server.exit_stats["ops_in_flight"] == 0
        assert server.exit_stats["timeouts"] == 0
        assert not server.error_lines(), server.error_lines()
