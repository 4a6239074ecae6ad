"""The hostile corpus over real sockets, on both backends.

Every connection gets well-formed responses and then a clean close (FIN, never
a reset, never silence past the timeouts), with the statuses the sans-IO model
predicts; afterwards the server is healthy and logged no error (an exception
in the loop is logged by "server.loop" at ERROR).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

from .corpus import NASTY
from .sansio import expected_statuses, head_flags
from .support import (
    check_response_sequence,
    connect,
    error_records,
    get_hello,
    parse_all,
    read_until_close,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


def _send_all(
    address: tuple[str, int], half_close: bool, closer: Callable[[socket.socket], socket.socket]
) -> list[tuple[str, socket.socket, str]]:
    """One connection per corpus entry, all open at once; returns (name, sock, send error)."""
    conns = []
    for name, data in NASTY:
        sock = closer(connect(address))
        err = ""
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the server may answer and close before reading it all
            err = repr(exc)
        conns.append((name, sock, err))
    return conns


@pytest.mark.parametrize("half_close", [True, False], ids=["then-eof", "then-silence"])
def test_corpus_gets_responses_or_clean_closes(
    make_http_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    half_close: bool,
    closer: Callable[[socket.socket], socket.socket],
) -> None:
    caplog.set_level(logging.INFO, logger="server")
    failures = []
    with make_http_server(protocol="http", timeout_read=1.0, timeout_keep_alive=1.0) as srv:
        conns = _send_all(srv.address, half_close, closer)
        for name, sock, send_error in conns:
            data = dict(NASTY)[name]
            with sock:
                got = read_until_close(sock, timeout=10.0)
            try:
                assert got.end == "eof", f"ended with {got.end} (send error: {send_error})"
                responses = parse_all(got.data, head_flags(data))
                check_response_sequence(responses, closed=True)
                expected = expected_statuses(data, eof=half_close, time_out=not half_close)
                finals = [r.status for r in responses if r.status >= 200]
                if expected is not None:
                    assert finals == expected, f"statuses {finals}, the model says {expected}"
            except AssertionError as exc:
                failures.append(f"{name}: {exc}; got {got.data[:300]!r}")
        assert get_hello(srv.address) < 10
        wait_for(lambda: srv.stats()["open_connections"] == 0, what=lambda: str(srv.stats()))
        stats = srv.stats()
        loop_exceptions = srv.server.dispatcher.internal_errors
    assert not failures, "\n".join(failures)
    assert loop_exceptions == 0
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]
    print(f"\n{stats['backend']}: corpus of {len(NASTY)} answered; stats {stats}")


def test_random_garbage_connections_leave_the_server_healthy(
    make_http_server: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded random bytes (pipelined after a good request, too), each then EOF."""
    import random

    caplog.set_level(logging.INFO, logger="server")
    rng = random.Random(1234)
    blobs = [rng.randbytes(rng.randint(1, 9000)) for _ in range(60)]
    blobs += [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b for b in blobs[:20]]
    with make_http_server(protocol="http", timeout_read=2.0, timeout_keep_alive=2.0) as srv:
        for blob in blobs:
            with connect(srv.address) as sock:
                try:
                    sock.sendall(blob)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                got = read_until_close(sock)
            assert got.end == "eof", (got, blob[:100])
            check_response_sequence(parse_all(got.data, head_flags(blob)), closed=True)
        assert get_hello(srv.address) < 10
        wait_for(lambda: srv.stats()["open_connections"] == 0, what=lambda: str(srv.stats()))
        assert srv.server.dispatcher.internal_errors == 0
    assert not error_records(caplog), [r.getMessage() for r in error_records(caplog)]
