"""Slowloris over TLS: the header timeout holds inside TLS, and many slow TLS clients do
not stop a normal one (both backends, both parsers)."""

from __future__ import annotations

import contextlib
import select
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.tls import Pki, make_pki, poll_plaintext

from .support import HELLO, HttpReader, connect, parse_all, wait_for

SLOW = 200
PROMPT_S = 2.0  # "promptly": a generous bound, not a speed claim
HEAD = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: "


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_connect(address: tuple[str, int], ctx: ssl.SSLContext) -> ssl.SSLSocket:
    return ctx.wrap_socket(connect(address), server_hostname="localhost")


def read_all(sock: ssl.SSLSocket, timeout: float) -> bytes:
    """Plaintext until the server's close (close_notify or EOF), within `timeout`."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ssl.SSLError, ConnectionResetError):
        pass
    return out


@pytest.mark.timeout(120)
def test_tls_slowloris_gets_408_and_a_normal_client_is_served(
    make_http_server: Callable[..., Any], pki: Pki
) -> None:
    ctx = pki.client_context()
    with make_http_server(
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        timeout_header=4.0,
        timeout_read=30.0,
        timeout_keep_alive=30.0,
    ) as srv:
        slow = [tls_connect(srv.address, ctx) for _ in range(SLOW)]
        started = time.monotonic()
        # One thread only: an SSLSocket is not to be read and written from two at once.
        # Each round sends the next byte on every connection not answered yet (a record
        # each), then waits up to 0.2 s for answers; an answered one is no longer sent to.
        trickling = set(slow)
        first: dict[ssl.SSLSocket, bytes] = {}  # what the first poll of an answer read
        served_at = None
        rounds = 0
        while trickling and time.monotonic() - started < 20:
            byte = HEAD[rounds : rounds + 1] or b"a"
            for s in trickling:
                with contextlib.suppress(OSError):
                    s.send(byte)
            rounds += 1
            readable, _, _ = select.select(list(trickling), [], [], 0.2)
            for s in readable:
                if (got := poll_plaintext(s, 0)) is not None:
                    trickling.discard(s)
                    first[s] = got
            if rounds == 3:  # a normal client meanwhile
                t0 = time.monotonic()
                with tls_connect(srv.address, ctx) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: l\r\n\r\n")
                    resp = HttpReader(sock).read_response(timeout=10)  # type: ignore[arg-type]
                latency = time.monotonic() - t0
                served_at = time.monotonic() - started
                assert (resp.status, resp.body) == (200, HELLO)
                assert latency < PROMPT_S, latency
        assert not trickling, f"{len(trickling)} slow connections not cut"
        assert served_at is not None and served_at < 4.0  # while all were trickling
        assert rounds >= 15  # they kept sending until cut (4 s / 0.2 s, less the client's time)
        try:
            answers = [first[s] + read_all(s, 15) for s in slow]
        finally:
            for s in slow:
                s.close()
        statuses = [[r.status for r in parse_all(a)] for a in answers]
        assert statuses == [[408]] * SLOW
        assert srv.stats()["timeouts"] == SLOW
        assert srv.stats()["requests"] == 1
        wait_for(lambda: srv.stats()["open_connections"] == 0, timeout=10)
