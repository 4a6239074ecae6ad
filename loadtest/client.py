"""The load client: many connections on epoll, every answer checked byte for byte.

``python -m loadtest.client --protocol echo|http --port P --connections 100 --duration 10``

Echo: ``--size``-byte messages, each different (a reordered or misdelivered
echo fails), waiting for exactly those bytes back; HTTP: ``GET /`` or
``POST /echo`` with a random body, which must come back in a 200.
``--pipeline D`` keeps D requests in flight per connection; ``--churn``
closes each connection after 20-200 requests, half of the time by asking
the server to (``Connection: close``, or EOF for echo), and opens another.
The parent connects, then forks ``--processes`` workers, each an epoll loop
on its share of the sockets.  An error (a wrong byte, a reset, an early
EOF, 10 s without an answer) replaces the connection; a worker gives up
after 100.  The `loadtest` window markers go to stderr after ``--warmup``
and at the end, ``--progress`` prints running totals every second, and the
last line is a JSON summary with the workers' CPU utilisation (near 1.0 per
process: the client was the limit).  After the window no request is sent
and those in flight are answered first, so none is cut off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import random
import select
import socket
import sys
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import RawArray
from typing import Any

import loadtest
from server.config import port_number, positive_float, positive_int

IO_TIMEOUT_S = 10.0
MAX_ERRORS = 100  # per worker
CHURN = (20, 200)  # requests per connection with --churn
HELLO = b"Hello from ringserve\n"


@dataclass(slots=True)
class Totals:
    """One worker's counts."""

    messages: int = 0  # answered and checked inside the window
    errors: int = 0  # over the whole run, warm-up included
    connections_opened: int = 0
    cpu_s: float = 0.0  # this process's CPU time inside the window
    latencies_us: bytes = b""  # array("I").tobytes(), one per message in the window
    error_samples: list[str] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Conn:
    sock: socket.socket
    index: int
    left: int  # requests still to send before it closes (-1: no limit)
    seq: int
    buf: bytes = b""
    expected: deque[tuple[bytes, int, bool]] = field(default_factory=deque)  # body, sent, closes
    closing: bool = False  # waiting for the server's EOF
    last_io: float = field(default_factory=time.monotonic)


def parse_response(buf: bytes) -> tuple[bytes, bytes, int] | None:
    """(status line, body, end) of the response starting `buf` (None: incomplete)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    fields = (line.partition(b":") for line in lines[1:])
    lengths = [v for n, _, v in fields if n.lower() == b"content-length"]
    if not lengths:
        raise ValueError(f"no content-length in {lines[0][:80]!r}")
    stop = end + 4 + int(lengths[0])
    return (lines[0], buf[end + 4 : stop], stop) if len(buf) >= stop else None


def connect(plan: argparse.Namespace) -> socket.socket:
    sock = socket.create_connection((plan.host, plan.port), IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Worker:
    """Runs `plan.connections` connections on one epoll until its window ends."""

    def __init__(self, plan: Any, socks: list[tuple[int, socket.socket]], progress: Any, slot: int):
        self.plan, self.progress, self.slot = plan, progress, slot  # progress: 3 counts per slot
        self.totals = Totals()
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.missing: list[int] = []  # connections to open again
        self.rng = random.Random(slot)
        self.messages = [(b"%d:" % i + b"m" * plan.size)[: plan.size] for i in range(256)]
        self.latencies = array("I")
        self.in_window = self.stopping = False
        for index, sock in socks:
            self._add(index, sock)

    def _add(self, index: int, sock: socket.socket | None = None) -> _Conn:
        """Add connection `index` on `sock` (None: a new one)."""
        sock = sock or connect(self.plan)
        sock.setblocking(False)
        conn = _Conn(sock, index, self.rng.randint(*CHURN) if self.plan.churn else -1, index)
        self.conns[sock.fileno()] = conn
        self.ep.register(sock.fileno(), select.EPOLLIN)
        self.totals.connections_opened += 1
        return conn

    def _drop(self, conn: _Conn, again: bool = True) -> None:
        """Close it; `again`: open another in its place (unless stopping)."""
        if self.conns.pop(fd := conn.sock.fileno(), None) is not None:
            self.ep.unregister(fd)
            conn.sock.close()
            if again and not self.stopping:
                self.missing.append(conn.index)

    def _error(self, why: str, conn: _Conn | None = None) -> None:
        self.totals.errors += 1
        if len(self.totals.error_samples) < 10:
            self.totals.error_samples.append(why)
        if conn is not None:
            self._drop(conn)

    def _request(self, conn: _Conn) -> tuple[bytes, bytes, bool]:
        """The next request on `conn`: (bytes to send, body expected back, asks to close)."""
        conn.left -= 1
        if self.plan.protocol == "echo":
            msg = self.messages[conn.seq % len(self.messages)]
            conn.seq += 1
            return msg, msg, False
        rng = self.rng
        closes = conn.left == 0 and rng.random() < 0.5
        head = b"Host: loadtest\r\n" + (b"Connection: close\r\n" if closes else b"")
        if rng.random() < 0.5:
            return b"GET / HTTP/1.1\r\n" + head + b"\r\n", HELLO, closes
        body = rng.randbytes(rng.randint(0, 2048))
        length = b"Content-Length: %d\r\n\r\n" % len(body)
        return b"POST /echo HTTP/1.1\r\n" + head + length + body, body, closes

    def _send(self, conn: _Conn, count: int) -> None:
        """Send the connection's next `count` requests (fewer if its churn limit comes first)."""
        out = []
        now = time.perf_counter_ns()
        while len(out) < count and conn.left != 0 and not self.stopping:
            data, want, closes = self._request(conn)
            conn.expected.append((want, now, closes))
            out.append(data)
        data = out[0] if len(out) == 1 else b"".join(out)
        conn.last_io = time.monotonic()
        try:
            if data and (sent := conn.sock.send(data)) != len(data):
                conn.sock.settimeout(IO_TIMEOUT_S)  # the socket buffer is full: block (rare)
                conn.sock.sendall(data[sent:])
                conn.sock.setblocking(False)
        except OSError as exc:
            self._error(f"send: {exc}", conn)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self._error(f"recv: {exc}", conn)
        conn.last_io = time.monotonic()
        if not data or conn.closing:
            if data or not conn.closing:
                return self._error(f"{len(conn.expected)} answers missing, got {data[:40]!r}", conn)
            return self._drop(conn)  # the close it asked for
        buf = conn.buf + data if conn.buf else data
        t = time.perf_counter_ns()
        done = 0
        while conn.expected:
            want, sent_at, closes = conn.expected[0]
            if self.plan.protocol == "echo":
                if len(buf) < len(want):
                    break
                if not buf.startswith(want):
                    return self._error(f"sent {want[:16]!r}..., got {buf[:16]!r}...", conn)
                buf = buf[len(want) :]
            else:
                try:
                    if (parsed := parse_response(buf)) is None:
                        break
                except ValueError as exc:
                    return self._error(str(exc), conn)
                status, body, end = parsed
                if not status.startswith(b"HTTP/1.1 200 ") or body != want:
                    return self._error(f"{status[:40]!r} with {len(body)} body bytes", conn)
                buf, conn.closing = buf[end:], closes
            conn.expected.popleft()
            done += 1
            if self.in_window:
                self.latencies.append((t - sent_at) // 1000)
        conn.buf = buf
        if self.in_window:
            self.totals.messages += done
        if conn.closing and buf:
            self._error(f"bytes after a Connection: close answer: {buf[:40]!r}", conn)
        elif conn.closing or not done:
            pass  # wait for the EOF, or for the rest of an answer
        elif conn.expected or (conn.left != 0 and not self.stopping):
            self._send(conn, done)
        elif conn.left == 0 and self.plan.protocol == "echo":  # the server closes on our EOF
            conn.closing = True
            with contextlib.suppress(OSError):  # a reset shows at the next recv
                conn.sock.shutdown(socket.SHUT_WR)
        else:
            self._drop(conn, again=not self.stopping)

    def run(self, window_start: float, window_end: float) -> Totals:
        """Load until `window_end` (`time.monotonic()`), counting from `window_start`."""
        for conn in list(self.conns.values()):
            self._send(conn, self.plan.pipeline)
        totals, conns = self.totals, self.conns
        cpu_start, next_check, deadline, now = time.process_time(), 0.0, math.inf, 0.0
        while totals.errors < MAX_ERRORS and not (self.stopping and (not conns or now > deadline)):
            now = time.monotonic()
            if not self.in_window and not self.stopping and now >= window_start:
                self.in_window, cpu_start = True, time.process_time()
            if not self.stopping and now >= window_end:
                totals.cpu_s = time.process_time() - cpu_start if self.in_window else 0.0
                self.stopping, self.in_window = True, False
                deadline = now + IO_TIMEOUT_S  # for the answers in flight
                for idle in [c for c in conns.values() if not c.expected and not c.closing]:
                    self._drop(idle)
            while self.missing and not self.stopping:
                try:
                    self._send(self._add(self.missing.pop()), self.plan.pipeline)
                except OSError as exc:
                    self._error(f"connect: {exc}")
            for fd, _ in self.ep.poll(0.05):
                if (conn := conns.get(fd)) is not None:
                    self._on_readable(conn)
            if now >= next_check:  # once a second: the stalled connections
                next_check = now + 1.0
                for conn in [c for c in conns.values() if c.expected or c.closing]:
                    if now - conn.last_io > IO_TIMEOUT_S:
                        self._error(f"no answer for {IO_TIMEOUT_S:.0f} s", conn)
            if self.progress is not None:
                t, i = totals, 3 * self.slot
                self.progress[i : i + 3] = [t.messages, t.errors, t.connections_opened]
        if totals.errors >= MAX_ERRORS:
            totals.error_samples.append(f"gave up after {totals.errors} errors")
            totals.cpu_s = time.process_time() - cpu_start if self.in_window else totals.cpu_s
        totals.latencies_us = self.latencies.tobytes()
        return totals


def run_client(plan: argparse.Namespace) -> dict[str, Any]:
    """Run the client and return its summary (OSError if it cannot connect or a worker fails)."""
    processes, duration = max(1, min(plan.processes, plan.connections)), plan.duration
    socks = [connect(plan) for _ in range(plan.connections)]
    counts = RawArray("q", 3 * processes) if plan.progress else None  # shared with the workers
    window_start = time.monotonic() + plan.warmup
    window_end = window_start + duration
    workers = []
    for slot in range(processes):
        mine = range(
            plan.connections * slot // processes, plan.connections * (slot + 1) // processes
        )
        read_end, write_end = os.pipe()
        if (pid := os.fork()) == 0:  # the worker
            result: Any = "no result"
            try:
                for i in set(range(len(socks))) - set(mine):
                    socks[i].close()  # its own only, or the server sees no close
                worker = Worker(plan, [(i, socks[i]) for i in mine], counts, slot)
                result = worker.run(window_start, window_end)
            except BaseException as exc:
                result = f"{type(exc).__name__}: {exc}"
            finally:
                with os.fdopen(write_end, "wb") as out:
                    pickle.dump(result, out)
                os._exit(0)
        os.close(write_end)
        workers.append((pid, read_end))
    for sock in socks:
        sock.close()
    time.sleep(max(0.0, window_start - time.monotonic()))
    print(loadtest.WINDOW_START_MARKER, file=sys.stderr, flush=True)
    while (left := window_end - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if counts is not None:
            keys = ("messages", "errors", "connections_opened")
            running = {k: sum(counts[i::3]) for i, k in enumerate(keys)}
            t = round(duration - max(0.0, window_end - time.monotonic()), 3)
            print(json.dumps({"event": "progress", "t": t, **running}), flush=True)
    print(loadtest.WINDOW_END_MARKER, file=sys.stderr, flush=True)
    reports: list[Any] = []
    for pid, read_end in workers:
        with os.fdopen(read_end, "rb") as results, contextlib.suppress(EOFError):
            reports.append(pickle.load(results))
        os.waitpid(pid, 0)
    died = ["it died"] * (len(workers) - len(reports))
    if failed := [r for r in reports if isinstance(r, str)] + died:
        raise OSError(f"a worker failed: {failed[0]}")
    latencies = array("I")
    for report in reports:
        latencies.frombytes(report.latencies_us)
    ordered = sorted(latencies)

    def ms(fraction: float) -> float:  # the nearest-rank percentile
        rank = math.ceil(round(fraction * len(ordered), 9))
        return ordered[min(max(rank, 1), len(ordered)) - 1] / 1000 if ordered else 0.0

    messages, cpu_s = sum(r.messages for r in reports), sum(r.cpu_s for r in reports)
    return {
        "event": "done", "protocol": plan.protocol, "connections": plan.connections,
        "processes": processes, "pipeline": plan.pipeline, "message_bytes": plan.size,
        "duration_s": duration, "messages": messages, "messages_per_s": messages / duration,
        "errors": sum(r.errors for r in reports),
        "avg_ms": sum(ordered) / len(ordered) / 1000 if ordered else 0.0,
        "p50_ms": ms(0.50), "p90_ms": ms(0.90), "p99_ms": ms(0.99),
        "cpu_s": cpu_s, "cpu_util": cpu_s / (duration * processes),
        "connections_opened": sum(r.connections_opened for r in reports),
        "error_samples": [s for r in reports for s in r.error_samples][:10],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m loadtest.client", description=__doc__.split("\n")[0])
    p.add_argument("--protocol", choices=["echo", "http"], default="echo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, required=True)
    p.add_argument("--connections", type=positive_int, default=10)
    p.add_argument("--duration", type=positive_float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=loadtest.non_negative_float, default=1.0, help="seconds")
    p.add_argument("--processes", type=positive_int, default=1, help="worker processes")
    p.add_argument("--pipeline", type=positive_int, default=1, help="requests in flight each")
    p.add_argument("--size", type=positive_int, default=64, help="bytes per echo message")
    p.add_argument("--churn", action="store_true", help="reconnect every 20-200 requests")
    p.add_argument("--progress", action="store_true", help="running totals every second")
    plan = p.parse_args(argv)
    loadtest.raise_fd_limit(plan.connections + 64)
    try:
        summary = run_client(plan)
    except OSError as exc:
        print(f"client: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
