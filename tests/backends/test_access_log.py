"""--access-log: exact lines for every path (built-in app, WSGI inline and in
threads, ASGI, the server's own 400/408/413/431/500), both backends and parsers;
and, in a real process, the lines on stdout through the writer thread."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.accesslog import ACCESS_LOGGER
from server.protocols.http.common import error_body
from tests.backends.client import HttpReader, connect, exchange, request

ROOT = Path(__file__).resolve().parents[2]
WHO = "tests.backends.observe_apps:"
DURATION = r"[0-9]+\.[0-9]ms"


class Lines(logging.Handler):
    """Collects the access log's messages as the loop logs them."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def wait(self, n: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.lines)


@pytest.fixture
def access() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def exchange_heads(sock: socket.socket, data: bytes, heads: list[bool]) -> list[Any]:
    """`exchange`, for responses of which some answer HEAD requests (no body)."""
    sock.sendall(data)
    reader = HttpReader(sock)
    out = [reader.read_response(head_request=head) for head in heads]
    assert not reader.buf
    return out


def assert_lines(lines: list[str], expected: list[str]) -> None:
    """`expected` with `{d}` for the duration (or "-": none measured)."""
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected, strict=True):
        pattern = re.escape(want).replace(re.escape("{d}"), DURATION)
        assert re.fullmatch(pattern, line), (line, want)


def test_builtin_app_lines(make_http_server: Any, access: Lines) -> None:
    with make_http_server(access_log=True) as srv, connect(srv.address) as sock:
        me = f"127.0.0.1:{sock.getsockname()[1]}"
        data = (
            request("GET", "/?q=1&r")
            + request("HEAD", "/")
            + request("POST", "/echo", b"hello")
            + request("GET", "/nope", version="1.0")
        )
        responses = exchange_heads(sock, data, [False, True, False, False])
        root = len(responses[0].body)
        assert_lines(
            access.wait(4),
            [
                f'{me} - "GET /?q=1&r HTTP/1.1" 200 {root} {{d}}',
                f'{me} - "HEAD / HTTP/1.1" 200 0 {{d}}',
                f'{me} - "POST /echo HTTP/1.1" 200 5 {{d}}',
                f'{me} - "GET /nope HTTP/1.0" 404 {len(responses[3].body)} {{d}}',
            ],
        )


def test_no_access_log_logs_nothing(make_http_server: Any, access: Lines) -> None:
    with make_http_server(access_log=False) as srv, connect(srv.address) as sock:
        exchange(sock, request("GET", "/"), 1)
    assert access.lines == []


def _error_lines(address: tuple[str, int], access: Lines) -> None:
    """400 (two kinds), 413, 431, each on its own connection."""
    cases = [
        (b"\x01junk\r\n\r\n", 400, '"-"', "-"),  # refused at its first byte: no head, no time
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, '"-"', "{d}"),  # refused by the parser
        (
            request("POST", "/echo", headers=[("Content-Length", str(10**9))]),
            413,
            '"POST /echo HTTP/1.1"',
            "{d}",
        ),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 431, '"-"', "-"),
    ]
    expected = []
    for data, status, line, duration in cases:
        with connect(address) as sock:
            me = f"127.0.0.1:{sock.getsockname()[1]}"
            sock.sendall(data)
            assert HttpReader(sock).read_response().status == status
        expected.append(f"{me} - {line} {status} {len(error_body(status))} {duration}")
        assert_lines(access.wait(len(expected)), expected)


def test_the_servers_own_errors(make_http_server: Any, access: Lines) -> None:
    with make_http_server(access_log=True, max_header_bytes=16384) as srv:
        _error_lines(srv.address, access)


def test_a_408_for_a_body_that_stops(make_http_server: Any, access: Lines) -> None:
    with make_http_server(access_log=True, timeout_read=0.3) as srv, connect(srv.address) as sock:
        me = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.sendall(request("POST", "/echo", headers=[("Content-Length", "10")]) + b"abc")
        assert HttpReader(sock).read_response().status == 408
        assert_lines(
            access.wait(1), [f'{me} - "POST /echo HTTP/1.1" 408 {len(error_body(408))} {{d}}']
        )


APPS: dict[str, dict[str, Any]] = {
    "wsgi": {"app": WHO + "wsgi_who"},
    "wsgi-threads": {"app": WHO + "wsgi_who", "wsgi_threads": 2},
    "asgi": {"app": WHO + "asgi_who", "lifespan": "off"},
}


@pytest.mark.parametrize("kind", list(APPS))
def test_app_lines(make_http_server: Any, access: Lines, kind: str) -> None:
    with make_http_server(access_log=True, **APPS[kind]) as srv, connect(srv.address) as sock:
        port = sock.getsockname()[1]
        me = f"127.0.0.1:{port}"
        data = request("GET", "/who?x=%20") + request("HEAD", "/who")
        responses = exchange_heads(sock, data, [False, True])
        body = responses[0].body
        assert body == f"127.0.0.1 {port} http".encode()
        expected = [
            f'{me} - "GET /who?x=%20 HTTP/1.1" 200 {len(body)} {{d}}',
            f'{me} - "HEAD /who HTTP/1.1" 200 0 {{d}}',
        ]
        if kind != "asgi":
            assert exchange(sock, request("GET", "/boom"), 1)[0].status == 500
            expected.append(f'{me} - "GET /boom HTTP/1.1" 500 26 {{d}}')
        else:
            responses = exchange(sock, request("GET", "/stream"), 1)
            assert responses[0].body == b"abcdefgh"
            expected.append(f'{me} - "GET /stream HTTP/1.1" 200 8 {{d}}')
        assert_lines(access.wait(3), expected)
    with make_http_server(access_log=True, **APPS[kind]) as srv, connect(srv.address) as sock:
        me = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.sendall(request("GET", "/bad"))
        assert HttpReader(sock).read_response().status == 500
        assert_lines(access.wait(4)[3:], [f'{me} - "GET /bad HTTP/1.1" 500 26 {{d}}'])


def test_app_servers_own_errors(make_http_server: Any, access: Lines) -> None:
    with make_http_server(access_log=True, **APPS["asgi"]) as srv:
        _error_lines(srv.address, access)


def test_proxied_client_in_the_log(make_http_server: Any, access: Lines) -> None:
    with make_http_server(access_log=True, proxy_headers=True) as srv, connect(srv.address) as s:
        exchange(s, request("GET", "/", headers=[("X-Forwarded-For", "203.0.113.7")]), 1)
        assert access.wait(1)[0].startswith('203.0.113.7:0 - "GET / HTTP/1.1" 200 ')


# -- in a real process: stdout, through the writer thread --------------------------------


def _run(args: list[str], env: dict[str, str], requests: int) -> list[str]:
    """Start the server, make `requests` GETs on one connection, SIGTERM it; its stdout."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--backend", "epoll", *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        listening = json.loads(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", listening["port"]), timeout=5) as sock:
            exchange(sock, b"".join(request("GET", f"/?n={i}") for i in range(requests)), requests)
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    lines = out.splitlines()
    assert json.loads(lines[-1])["event"] == "exit"
    return lines[:-1]


def test_the_log_reaches_stdout_in_order() -> None:
    lines = _run(["--access-log"], {}, 50)
    assert len(lines) == 50
    for i, line in enumerate(lines):
        assert re.fullmatch(
            rf'127\.0\.0\.1:[0-9]+ - "GET /\?n={i} HTTP/1\.1" 200 [0-9]+ {DURATION}', line
        ), line


@pytest.mark.parametrize(
    ("args", "env", "logged"),
    [
        ([], {}, False),
        ([], {"RINGSERVE_ACCESS_LOG": "yes"}, True),
        (["--no-access-log"], {"RINGSERVE_ACCESS_LOG": "1"}, False),
        (["--access-log", "--log-level", "warning"], {}, False),
    ],
)
def test_on_and_off(args: list[str], env: dict[str, str], logged: bool) -> None:
    assert len(_run(args, env, 2)) == (2 if logged else 0)
