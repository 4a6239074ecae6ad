"""Small, strict test clients: raw sockets, exact bytes, bounded waits.

Nothing here trusts the server: every read has a timeout, HTTP responses are
parsed by hand (so a malformed one fails the test instead of being
"repaired" by a lenient client library) and EOF is told apart from a reset.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

TIMEOUT = 10.0
HELLO = b"Hello from ringserve\n"
# RFC 9110 IMF-fixdate, as email.utils.formatdate(usegmt=True) writes it.
DATE_RE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    rb" \d{4} \d\d:\d\d:\d\d GMT"
)


def connect(address: tuple[str, int], timeout: float = TIMEOUT, **opts: int) -> socket.socket:
    """A blocking client socket with a timeout; `rcvbuf=` sets SO_RCVBUF before connecting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if "rcvbuf" in opts:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, opts["rcvbuf"])
    sock.connect(address)
    return sock


def set_linger_zero(sock: socket.socket) -> None:
    """Make close() send a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    """Everything until a clean EOF (a reset raises)."""
    buf = bytearray()
    while chunk := sock.recv(1 << 20):
        buf += chunk
        assert len(buf) <= limit, "peer sent more than expected"
    return bytes(buf)


def assert_eof(sock: socket.socket) -> None:
    """The peer closed cleanly (FIN, not RST) and sent nothing more."""
    try:
        data = sock.recv(65536)
    except ConnectionResetError as exc:  # pragma: no cover - reported as a failure
        raise AssertionError("connection reset instead of a clean EOF") from exc
    assert data == b"", f"expected EOF, got {data[:200]!r}"


def assert_silent(sock: socket.socket, seconds: float) -> None:
    """Nothing arrives (and the connection stays open) for `seconds`."""
    old = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    finally:
        sock.settimeout(old)
    raise AssertionError(f"expected silence, got {data[:200]!r}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(n: int, seed: int = 0) -> bytes:
    """`n` deterministic pseudo-random bytes (a misordered chunk cannot hash equal)."""
    return random.Random(seed).randbytes(n)


class Sender(threading.Thread):
    """sendall() in a thread (so the test can read at the same time); errors kept."""

    def __init__(self, sock: socket.socket, data: bytes, shut_wr: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.data = data
        self.shut_wr = shut_wr
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sock.sendall(self.data)
            if self.shut_wr:
                self.sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = TIMEOUT) -> None:
        self.join(timeout)
        assert not self.is_alive(), "sender thread is stuck"
        if self.error is not None:
            raise self.error


class Repeater(threading.Thread):
    """Runs `step(i)` for i = 0, 1, ... until `finish()`; the first error is kept.

    For "another client is served at the same time": the test does its thing
    while a Repeater keeps a second connection busy and checks every answer.
    """

    def __init__(self, step: Callable[[int], None]) -> None:
        super().__init__(daemon=True)
        self.step = step
        self.rounds = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.step(self.rounds)
            except BaseException as exc:
                self.error = exc
                return
            self.rounds += 1

    def wait_rounds(self, n: int, timeout: float = 10.0) -> None:
        """Wait until `n` more rounds have completed (fails on the step's error)."""
        target = self.rounds + n
        wait_for(
            lambda: self.rounds >= target or self.error is not None or not self.is_alive(),
            timeout=timeout,
            what=f"{n} more rounds of the other client",
        )
        if self.error is not None:
            raise self.error

    def finish(self, timeout: float = TIMEOUT) -> int:
        self._stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "the other client is stuck"
        if self.error is not None:
            raise self.error
        return self.rounds


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str | Callable[[], str] = "",
) -> Any:
    """Poll until `predicate()` is truthy; fail after `timeout` seconds.

    `what` names the condition in the failure message; a callable is called
    then (e.g. to show the server's statistics at the moment of failure).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out waiting for {text or predicate}")
        time.sleep(interval)


# -- HTTP ---------------------------------------------------------------------


def refused(address: tuple[str, int]) -> bool:
    """True once connecting is refused: the listener is closed.

    A reset instead of a refusal means the SYN reached the listener just as it closed (the
    kernel resets the connections still in its backlog): not the steady state yet, so False.
    """
    try:
        connect(address, timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def request(
    method: str = "GET",
    target: str = "/",
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test"]
    hdrs = list(headers)
    lines += [f"{k}: {v}" for k, v in hdrs]
    framed = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs)
    if (body or method in ("POST", "PUT")) and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class HttpResponse:
    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes = field(repr=False)

    def header(self, name: str) -> bytes | None:
        key = name.lower().encode()
        values = [v for k, v in self.headers if k.lower() == key]
        assert len(values) <= 1, f"header {name} repeated: {values}"
        return values[0] if values else None

    @property
    def normalized_head(self) -> bytes:
        """The head with the Date value (checked for format) replaced by <date>."""
        head, count = DATE_RE.subn(b"<date>", self.raw_head)
        assert count == 1, f"expected exactly one well-formed Date: {self.raw_head!r}"
        return head


class HttpReader:
    """Reads responses from a socket, one at a time, with a byte buffer.

    Bodies framed by Content-Length or chunked encoding (or, failing both,
    the close) are supported.
    """

    def __init__(self, sock: socket.socket, max_head: int = 64 << 10) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.max_head = max_head

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError(f"EOF with {len(self.buf)} bytes buffered: {bytes(self.buf[:200])!r}")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            assert len(self.buf) < self.max_head, "line too long"
            self._fill()
        return self._take(i + 2)[:-2]

    def read_response(self, head_request: bool = False) -> HttpResponse:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            assert len(self.buf) < self.max_head, "response head too long"
            self._fill()
        raw_head = self._take(end + 4)
        lines = raw_head[:-4].split(b"\r\n")
        m = re.fullmatch(rb"HTTP/(\d\.\d) (\d{3}) (.*)", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep and name == name.strip(), f"bad header line {line!r}"
            headers.append((name, value.strip()))
        resp = HttpResponse(m[1], int(m[2]), m[3], headers, b"", raw_head)
        status = resp.status
        if head_request or status in (204, 304) or 100 <= status < 200:
            return resp
        te = resp.header("transfer-encoding")
        length = resp.header("content-length")
        if te is not None:
            assert te.lower() == b"chunked", te
            assert length is None, "both Content-Length and Transfer-Encoding"
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._take(size))
                assert self._take(2) == b"\r\n"
            resp.body = b"".join(parts)
        elif length is not None:
            resp.body = self._take(int(length))
        else:
            resp.body = bytes(self.buf) + recv_until_eof(self.sock)
            self.buf.clear()
        return resp

    def assert_eof(self) -> None:
        assert not self.buf, f"unexpected bytes after the response: {bytes(self.buf[:200])!r}"
        assert_eof(self.sock)


def exchange(sock: socket.socket, data: bytes, count: int = 1) -> list[HttpResponse]:
    """Send `data` and read `count` responses."""
    sock.sendall(data)
    reader = HttpReader(sock)
    out = [reader.read_response() for _ in range(count)]
    assert not reader.buf, f"unexpected extra bytes: {bytes(reader.buf[:200])!r}"
    return out


def fetch(address: tuple[str, int], data: bytes) -> HttpResponse:
    """One request on a fresh connection (the request should ask for a close)."""
    with connect(address) as sock:
        return exchange(sock, data)[0]


def error_head(status: int, reason: str) -> bytes:
    """The exact head ringserve sends for a client error (Date normalized)."""
    body_len = len(f"{status} {reason}\n")
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {body_len}\r\n"
        "connection: close\r\n"
        "server: ringserve\r\n"
        "date: <date>\r\n\r\n"
    ).encode()


def read_error_then_eof(sock: socket.socket, status: int, reason: str) -> None:
    """Read one client-error response: its exact head and body, then EOF."""
    reader = HttpReader(sock)
    resp = reader.read_response()
    assert resp.normalized_head == error_head(status, reason)
    assert resp.body == f"{status} {reason}\n".encode()
    reader.assert_eof()


def read_last_echo(sock: socket.socket, body: bytes) -> None:
    """Read the response to a POST /echo of `body` that ends the connection, then EOF."""
    reader = HttpReader(sock)
    resp = reader.read_response()
    assert resp.status == 200
    assert resp.header("connection") == b"close"
    assert len(resp.body) == len(body)
    assert sha256(resp.body) == sha256(body)
    reader.assert_eof()
