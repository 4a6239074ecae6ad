"""Helpers for the reliability suite: the rules every output obeys, raw clients, limits.

Nothing here trusts the server: responses are parsed strictly
(`tests.backends.client.parse_one`: a response h11 or a browser would
"repair" fails the test), every socket read has a deadline, and a clean
close (FIN) is told apart from a reset.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.backends.client import (
    HELLO,
    TIMEOUT,
    HttpReader,
    HttpResponse,
    Malformed,
    Sender,
    connect,
    parse_all,
    parse_one,
    set_linger_zero,
    sha256,
)
from tests.backends.client import wait_for as _client_wait_for

# The suite's modules take the client helpers from here too.
__all__ = [
    "APP_STATUSES",
    "GET",
    "GET_CLOSE",
    "HELLO",
    "TIMEOUT",
    "BurstResult",
    "HttpReader",
    "HttpResponse",
    "Malformed",
    "ReadResult",
    "Sender",
    "burst",
    "check_response_sequence",
    "close_all",
    "collect_hellos",
    "connect",
    "error_records",
    "get_hello",
    "nofile_at_least",
    "open_many",
    "parse_all",
    "parse_one",
    "read_until_close",
    "request_many",
    "set_linger_zero",
    "sha256",
    "wait_for",
]

GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"

# Statuses the built-in app answers itself and keeps the connection for.
APP_STATUSES = {200, 404, 405}


def check_response_sequence(responses: list[HttpResponse], closed: bool) -> None:
    """The rules every output obeys, whatever the input.

    - 1xx is only ``100 Continue``;
    - an error the server answers itself (any 4xx/5xx but the app's 404 and
      405) says ``connection: close`` and is the last response, and the
      connection then closes (`closed`);
    - a response saying ``connection: close`` is the last one;
    - a response framed by the close is the last one and the connection closes.
    """
    for i, resp in enumerate(responses):
        last = i == len(responses) - 1
        if resp.status < 200:
            assert resp.status == 100, f"unexpected informational {resp.status}"
            continue
        if resp.status >= 400 and resp.status not in APP_STATUSES:
            assert resp.closes, f"{resp.status} without connection: close: {resp.raw[:300]!r}"
            assert last, f"{resp.status} followed by more output"
            assert closed, f"{resp.status} but the connection stays open"
        if resp.closes:
            assert last, "bytes after a connection: close response"
            assert closed, "connection: close response but the connection stays open"
        if resp.framed_by_close:
            assert closed, "a response framed by the close, on a connection kept open"


# -- raw clients ---------------------------------------------------------------------


@dataclass
class ReadResult:
    data: bytes
    end: str  # "eof", "reset" or "timeout"


def read_until_close(sock: socket.socket, timeout: float = TIMEOUT) -> ReadResult:
    """Everything until EOF, a reset or `timeout` seconds."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return ReadResult(bytes(buf), "timeout")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            return ReadResult(bytes(buf), "timeout")
        except ConnectionResetError:
            return ReadResult(bytes(buf), "reset")
        if not chunk:
            return ReadResult(bytes(buf), "eof")
        buf += chunk


def get_hello(address: tuple[str, int], timeout: float = TIMEOUT) -> float:
    """One GET / with Connection: close on a fresh connection; returns its latency."""
    t0 = time.monotonic()
    with connect(address, timeout) as sock:
        sock.sendall(GET_CLOSE)
        reader = HttpReader(sock)
        resp = reader.read_response(timeout=timeout)
        assert resp.status == 200 and resp.body == HELLO, resp
        reader.assert_eof()
    return time.monotonic() - t0


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str | Callable[[], str] = ""
) -> Any:
    """`tests.backends.client.wait_for` with this suite's longer default timeout."""
    return _client_wait_for(predicate, timeout=timeout, interval=0.02, what=what)


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records at ERROR or above from the server's loggers."""
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and (r.name == "server" or r.name.startswith("server."))
    ]


# -- fds -----------------------------------------------------------------------------


@contextlib.contextmanager
def nofile_at_least(needed: int) -> Iterator[int]:
    """Raise the soft RLIMIT_NOFILE up to the hard limit for a block (or skip the test)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} fds this test needs")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_many(
    address: tuple[str, int], count: int, timeout: float = 30.0, in_flight: int = 256
) -> list[socket.socket]:
    """`count` connected non-blocking sockets, made `in_flight` at a time."""
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    pending = 0
    started = 0
    deadline = time.monotonic() + timeout
    try:
        while len(done) < count:
            while started < count and pending < in_flight:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex(address)
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
                sel.register(s, selectors.EVENT_WRITE)
                pending += 1
                started += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(done)} of {count} connections in {timeout} s")
            for key, _ in sel.select(0.5):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                sel.unregister(s)
                pending -= 1
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    s.close()
                    raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
                done.append(s)
    except BaseException:
        for s in done:
            s.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        raise
    finally:
        sel.close()
    return done


def close_all(socks: Sequence[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


# -- many clients at once, from one thread ----------------------------------------------


@dataclass
class BurstResult:
    ok: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def error(self, why: str) -> None:
        self.errors += 1
        if len(self.samples) < 10:
            self.samples.append(why)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def burst(
    address: tuple[str, int],
    total: int,
    in_flight: int = 64,
    request: bytes = GET_CLOSE,
    timeout: float = 120.0,
) -> BurstResult:
    """`total` short connections, `in_flight` at a time: connect, one request, read to EOF.

    Each must end with a clean EOF after exactly one ``200`` carrying the
    hello and ``connection: close``.
    """
    result = BurstResult()
    sel = selectors.DefaultSelector()
    started = 0
    live = 0
    t0 = time.monotonic()
    deadline = t0 + timeout

    def start() -> None:
        nonlocal started, live
        started += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            result.error(f"connect: {os.strerror(err)}")
            return
        live += 1
        sel.register(s, selectors.EVENT_WRITE, [b"", time.monotonic()])

    def finish(s: socket.socket) -> None:
        nonlocal live
        live -= 1
        sel.unregister(s)
        s.close()

    try:
        while result.ok + result.errors < total:
            while started < total and live < in_flight:
                start()
            now = time.monotonic()
            if now > deadline:
                result.error(f"gave up after {timeout} s with {live} in flight")
                break
            for key, events in sel.select(1.0):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                state = key.data
                if events & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        result.error(f"connect: {os.strerror(err)}")
                        finish(s)
                        continue
                    try:
                        s.send(request)
                    except OSError as exc:
                        result.error(f"send: {exc}")
                        finish(s)
                        continue
                    sel.modify(s, selectors.EVENT_READ, state)
                    continue
                try:
                    chunk = s.recv(65536)
                except OSError as exc:
                    result.error(f"recv: {exc!r} after {state[0][:100]!r}")
                    finish(s)
                    continue
                if chunk:
                    state[0] += chunk
                    continue
                try:
                    (resp,) = parse_all(state[0])
                    assert resp.status == 200 and resp.body == HELLO and resp.closes, resp
                except (AssertionError, ValueError) as exc:
                    result.error(f"bad response: {exc!s:.200}")
                else:
                    result.ok += 1
                finish(s)
            for key in list(sel.get_map().values()):
                if now - key.data[1] > TIMEOUT:
                    result.error(f"no answer in {TIMEOUT} s: {key.data[0][:100]!r}")
                    finish(key.fileobj)  # type: ignore[arg-type]
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
        result.seconds = time.monotonic() - t0
    return result


def request_many(
    socks: Sequence[socket.socket], request: bytes = GET, timeout: float = 60.0
) -> list[str]:
    """Send `request` on every socket and read one hello from each; returns the errors.

    The sockets stay open (non-blocking), with nothing buffered.
    """
    errors: list[str] = []
    sent = []
    for s in socks:
        s.setblocking(False)
        try:
            n = s.send(request)
        except OSError as exc:
            errors.append(f"send: {exc}")
            continue
        if n != len(request):
            errors.append(f"short send {n}")
            continue
        sent.append(s)
    _, more_errors, missing = collect_hellos(sent, timeout)
    errors += more_errors
    if missing:
        errors.append(f"{len(missing)} responses missing after {timeout} s")
    return errors


def collect_hellos(
    socks: Sequence[socket.socket], timeout: float, want: int | None = None
) -> tuple[list[socket.socket], list[str], list[socket.socket]]:
    """Read one hello response from each socket, for up to `timeout` seconds
    (or until `want` are answered).

    Returns the sockets answered, the errors, and the sockets still silent.
    """
    errors: list[str] = []
    answered: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytes] = {}
    for s in socks:
        s.setblocking(False)
        bufs[s] = b""
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while sel.get_map() and (want is None or len(answered) < want):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 1.0)):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    chunk = s.recv(65536)
                except OSError as exc:
                    errors.append(f"recv: {exc}")
                    sel.unregister(s)
                    continue
                if not chunk:
                    errors.append(f"EOF after {bufs[s][:100]!r}")
                    sel.unregister(s)
                    continue
                bufs[s] += chunk
                try:
                    parsed = parse_one(bufs[s])
                except Malformed as exc:
                    errors.append(str(exc))
                    sel.unregister(s)
                    continue
                if parsed is not None and not parsed[0].framed_by_close:
                    resp, end = parsed
                    sel.unregister(s)
                    if resp.status != 200 or resp.body != HELLO or end != len(bufs[s]):
                        errors.append(f"unexpected {resp} + {bufs[s][end:][:100]!r}")
                    else:
                        answered.append(s)
        missing = [key.fileobj for key in sel.get_map().values()]
    finally:
        sel.close()
    return answered, errors, missing  # type: ignore[return-value]
