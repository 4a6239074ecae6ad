"""Small, strict test clients: raw sockets, exact bytes, bounded waits.

Nothing here trusts the server: every read has a timeout, HTTP responses are
parsed by hand and strictly (`parse_one`: a malformed one fails the test
instead of being "repaired" by a lenient client library) and EOF is told
apart from a reset.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
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


# -- a strict HTTP/1.1 response parser ---------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(;[^\r\n]*)?")
MAX_HEAD = 64 * 1024


class Malformed(AssertionError):
    """The server's output is not a well-formed HTTP/1.1 response."""


@dataclass
class HttpResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # names in lower case
    body: bytes
    framed_by_close: bool = False
    raw: bytes = field(default=b"", repr=False)  # the whole response as it came

    def header(self, name: str | bytes) -> bytes | None:
        key = (name.encode() if isinstance(name, str) else name).lower()
        values = [v for k, v in self.headers if k == key]
        if len(values) > 1:
            raise Malformed(f"header {key!r} repeated: {values}")
        return values[0] if values else None

    @property
    def raw_head(self) -> bytes:
        return self.raw[: self.raw.index(b"\r\n\r\n") + 4]

    @property
    def normalized_head(self) -> bytes:
        """The head with the Date value (checked for format) replaced by <date>."""
        head, count = DATE_RE.subn(b"<date>", self.raw_head)
        assert count == 1, f"expected exactly one well-formed Date: {self.raw_head!r}"
        return head

    @property
    def closes(self) -> bool:
        value = self.header(b"connection")
        return value is not None and b"close" in value.lower().replace(b" ", b"").split(b",")


def parse_one(
    buf: bytes, start: int = 0, head_request: bool = False
) -> tuple[HttpResponse, int] | None:
    """The response at `buf[start:]` and where it ends, or None if incomplete.

    A response framed by the close (neither Content-Length nor chunked) takes
    everything to the end of `buf`.

    Raises:
        Malformed: the bytes cannot be the start of a well-formed response.
    """
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) - start > MAX_HEAD:
            raise Malformed(f"no end of head in {MAX_HEAD} bytes: {buf[start : start + 200]!r}")
        # Whatever is there must at least look like the start of a status line.
        prefix = buf[start : start + 9]
        if prefix and not b"HTTP/1.1 ".startswith(prefix) and not prefix.startswith(b"HTTP/1.1 "):
            raise Malformed(f"not a status line: {buf[start : start + 200]!r}")
        return None
    head = buf[start:end]
    lines = head.split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line or b"\0" in line:
            raise Malformed(f"bare CR/LF or NUL in response head: {head[:300]!r}")
    m = _STATUS_LINE.fullmatch(lines[0])
    if not m:
        raise Malformed(f"bad status line {lines[0][:200]!r}")
    status = int(m[1])
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise Malformed(f"bad header line {line[:200]!r}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise Malformed(f"bad header value {line[:200]!r}")
        headers.append((name.lower(), value))
    resp = HttpResponse(status, m[2], headers, b"")
    pos = end + 4
    te = resp.header(b"transfer-encoding")
    cl = resp.header(b"content-length")
    if status == 101:
        raise Malformed("101 Switching Protocols: nothing is upgraded here")
    if head_request or status < 200 or status in (204, 304):
        if status < 200 and (te is not None or cl is not None):
            raise Malformed(f"framing headers on a {status}")
    elif te is not None:
        if cl is not None:
            raise Malformed("both Transfer-Encoding and Content-Length")
        if te.lower() != b"chunked":
            raise Malformed(f"transfer-encoding {te!r}")
        parts = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            cm = _CHUNK_SIZE.fullmatch(buf[pos:eol])
            if not cm:
                raise Malformed(f"bad chunk size line {buf[pos : pos + 80]!r}")
            size = int(cm[1], 16)
            pos = eol + 2
            if size == 0:
                while True:  # trailers, then an empty line
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        return None
                    line, pos = buf[pos:eol], eol + 2
                    if not line:
                        break
                    name, colon, _ = line.partition(b":")
                    if not colon or not _TOKEN.fullmatch(name):
                        raise Malformed(f"bad trailer {line[:200]!r}")
                break
            if len(buf) < pos + size + 2:
                return None
            parts.append(buf[pos : pos + size])
            if buf[pos + size : pos + size + 2] != b"\r\n":
                raise Malformed("chunk data not followed by CRLF")
            pos += size + 2
        resp.body = b"".join(parts)
    elif cl is not None:
        if not cl.isdigit():
            raise Malformed(f"content-length {cl!r}")
        n = int(cl)
        if len(buf) < pos + n:
            return None
        resp.body = buf[pos : pos + n]
        pos += n
    else:
        resp.body = buf[pos:]
        resp.framed_by_close = True
        pos = len(buf)
    resp.raw = buf[start:pos]
    return resp, pos


def parse_all(data: bytes, head_requests: Sequence[bool] = ()) -> list[HttpResponse]:
    """Every response in `data`, which must end exactly after the last one.

    `head_requests[i]` says the i-th final (non-1xx) response answers a HEAD.
    """
    out: list[HttpResponse] = []
    pos = 0
    finals = 0
    while pos < len(data):
        head = finals < len(head_requests) and head_requests[finals]
        parsed = parse_one(data, pos, head_request=head)
        if parsed is None:
            raise Malformed(f"truncated response at byte {pos}: {data[pos : pos + 300]!r}")
        resp, pos = parsed
        out.append(resp)
        if resp.status >= 200:
            finals += 1
    return out


class HttpReader:
    """Reads whole responses from a socket with `parse_one`, keeping what follows in `buf`.

    Each read waits as long as the socket's timeout allows, or `timeout` s in all.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read_response(
        self, head_request: bool = False, timeout: float | None = None
    ) -> HttpResponse:
        deadline = None if timeout is None else time.monotonic() + timeout
        old = self.sock.gettimeout()
        try:
            while True:
                parsed = parse_one(self.buf, 0, head_request)
                if parsed is not None and not parsed[0].framed_by_close:
                    self.buf = self.buf[parsed[1] :]
                    return parsed[0]
                if deadline is not None:
                    if (left := deadline - time.monotonic()) <= 0:
                        raise TimeoutError(f"no whole response in {timeout} s: {self.buf[:200]!r}")
                    self.sock.settimeout(left)
                if not (chunk := self.sock.recv(1 << 20)):
                    if parsed is not None:  # framed by the close
                        self.buf = b""
                        return parsed[0]
                    raise EOFError(f"EOF after {len(self.buf)} bytes: {self.buf[:200]!r}")
                self.buf += chunk
        finally:
            self.sock.settimeout(old)

    def assert_eof(self) -> None:
        """Nothing more is buffered or arrives, and the peer closes cleanly."""
        assert not self.buf, f"unexpected bytes after the response: {self.buf[:200]!r}"
        assert_eof(self.sock)


def exchange(sock: socket.socket, data: bytes, count: int = 1) -> list[HttpResponse]:
    """Send `data` and read `count` responses."""
    sock.sendall(data)
    reader = HttpReader(sock)
    out = [reader.read_response() for _ in range(count)]
    assert not reader.buf, f"unexpected extra bytes: {reader.buf[:200]!r}"
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
