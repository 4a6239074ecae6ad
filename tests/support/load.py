"""Load clients that count every failure, for the tests of restarts and reloads.

A reload test passes only if clients saw nothing go wrong, so these count
what a client can see, by kind: a refused connect, a reset, a connection
closed before its response, a timeout, a status other than 200.  `Hammer`
opens a new connection per request (what the accept queue sees);
`KeepAlive` keeps its connections, and reconnects only when a response says
``Connection: close`` (what a retiring worker's drain sees).  `Wrk` runs wrk
for a whole number of seconds and reads its error counts.
"""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from loadtest.tools import parse_wrk
from tests.backends.client import HttpReader

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
Connect = Callable[[], socket.socket]


def tcp(address: tuple[str, int], timeout: float = 10.0) -> Connect:
    return lambda: socket.create_connection(address, timeout=timeout)


def unix(path: str, timeout: float = 10.0) -> Connect:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def _failure(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, EOFError):
        return "closed before the response"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


class _Threads:
    """`threads` threads running `self._run` until `stop()`; outcomes in `counts`."""

    def __init__(self, connect: Connect, threads: int) -> None:
        self.connect = connect
        self.counts: collections.Counter[str] = collections.Counter()
        self.first_errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> _Threads:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> collections.Counter[str]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a load thread is stuck"
        return self.counts

    @property
    def ok(self) -> int:
        with self._lock:
            return self.counts["ok"]

    def errors(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.counts.items() if k != "ok"}

    def _count(self, outcome: str, detail: str = "") -> None:
        with self._lock:
            self.counts[outcome] += 1
            if outcome != "ok" and len(self.first_errors) < 5:
                self.first_errors.append(f"{outcome}: {detail}")

    def _run(self) -> None:
        raise NotImplementedError


class Hammer(_Threads):
    """A new connection per request (``Connection: close``), as fast as it goes."""

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.connect() as sock:
                    sock.sendall(GET_CLOSE)
                    resp = HttpReader(sock).read_response()
            except (OSError, EOFError) as exc:
                self._count(_failure(exc), repr(exc))
                continue
            if resp.status == 200:
                self._count("ok")
            else:
                self._count(f"status {resp.status}")


class KeepAlive(_Threads):
    """Keep-alive connections; a new one only after a ``Connection: close`` response."""

    def _run(self) -> None:
        sock: socket.socket | None = None
        reader: HttpReader | None = None
        try:
            while not self._stop.is_set():
                if sock is None:
                    try:
                        sock = self.connect()
                    except OSError as exc:
                        self._count(_failure(exc), repr(exc))
                        continue
                    reader = HttpReader(sock)
                assert reader is not None
                try:
                    sock.sendall(GET)
                    resp = reader.read_response()
                except (OSError, EOFError) as exc:
                    self._count(_failure(exc), repr(exc))
                    sock.close()
                    sock = None
                    continue
                self._count("ok" if resp.status == 200 else f"status {resp.status}")
                if (resp.header("connection") or b"").lower() == b"close":
                    self._count_close()
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()

    def _count_close(self) -> None:
        with self._lock:
            self.counts["closes asked"] += 1

    def errors(self) -> dict[str, int]:
        return {k: v for k, v in super().errors().items() if k != "closes asked"}


class Wrk:
    """``wrk -t2 -cC -dDs`` on `url` in the background; `result()` once it is done."""

    def __init__(self, url: str, seconds: int, connections: int = 32) -> None:
        wrk = shutil.which("wrk")
        assert wrk is not None
        argv = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", url]
        self.seconds = seconds
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def result(self) -> tuple[dict[str, Any], str]:
        """(parse_wrk's summary, wrk's output)."""
        out, _ = self.proc.communicate(timeout=self.seconds + 30)
        assert self.proc.returncode == 0, out
        return parse_wrk(out), out


def wait_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))
