"""Helpers of the ASGI socket suites: exact bytes with the Date normalized, raw reads."""

from __future__ import annotations

import socket
import time

from tests.backends.client import DATE_RE, TIMEOUT

DATE_LENGTH = len(b"Sun, 06 Nov 1994 08:49:37 GMT")

# The 500 the server sends when an ASGI app fails before its response started: the
# app-error response, and a close.
APP_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\n"
    b"content-type: text/plain\r\n"
    b"content-length: 26\r\n"
    b"server: ringserve\r\n"
    b"date: <date>\r\n"
    b"connection: close\r\n\r\n"
    b"500 Internal Server Error\n"
)


def norm(data: bytes) -> bytes:
    """`data` with every Date value (checked for format) replaced by ``<date>``."""
    return DATE_RE.sub(b"<date>", data)


def head(status_line: bytes, *lines: bytes, close: bool = False) -> bytes:
    """A response head as the server writes it: the app's header lines, then server and
    date, then `lines` the server adds itself (framing, Connection)."""
    app_lines = [line for line in lines if not line.startswith((b"Transfer", b"Connection"))]
    added = [line for line in lines if line.startswith((b"Transfer", b"Connection"))]
    out = [status_line, *app_lines, b"server: ringserve", b"date: <date>"]
    if close:
        out.append(b"connection: close")
    out.extend(added)
    return b"\r\n".join(out) + b"\r\n\r\n"


def whole(status_line: bytes, body: bytes, *lines: bytes, close: bool = False) -> bytes:
    """A whole response from `tests.asgi.apps` (content-type text/plain and its length)."""
    return (
        head(
            status_line,
            b"content-type: text/plain",
            b"content-length: %d" % len(body),
            *lines,
            close=close,
        )
        + body
    )


def read_until_eof(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Everything until a clean EOF within `timeout` s (a reset or the timeout fails)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no EOF within {timeout} s; got {bytes(buf[:300])!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError as exc:
            raise AssertionError(f"reset instead of EOF after {bytes(buf[:300])!r}") from exc
        if not chunk:
            return bytes(buf)
        buf += chunk


def read_exactly(sock: socket.socket, n: int, timeout: float = TIMEOUT) -> bytes:
    """`n` bytes, failing on EOF or after `timeout` s."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{len(buf)} of {n} bytes in {timeout} s: {bytes(buf[:300])!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            continue
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes: {bytes(buf[:300])!r}")
        buf += chunk
    return bytes(buf)


def read_expected(sock: socket.socket, expected: bytes, timeout: float = TIMEOUT) -> bytes:
    """As many bytes as `expected` (whose Date values are ``<date>``) stands for, normalized:
    compare them with `expected`."""
    n = len(expected) + expected.count(b"<date>") * (DATE_LENGTH - len(b"<date>"))
    return norm(read_exactly(sock, n, timeout))


def wait_stable(read: object, seconds: float = 1.0, timeout: float = 20.0) -> int:
    """Poll `read()` (a growing count) until it has not changed for `seconds`; its value.

    For "the peer stopped": progress that stops is observable only as progress that does
    not resume; `seconds` is generous, and a test asserts what the plateau must be.
    """
    assert callable(read)
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while True:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return int(value)
        if time.monotonic() > deadline:
            raise AssertionError(f"still moving after {timeout} s (at {value})")
