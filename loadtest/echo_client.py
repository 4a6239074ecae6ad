"""A saturation client for the echo protocol: many connections, ping-pong, epoll.

``python -m loadtest.echo_client --port P --connections 100 --duration 10``

Each connection sends a 64-byte message, waits for exactly those bytes back
(any difference is an error), then sends the next; ``--pipeline D`` keeps D
messages in flight per connection instead of one.  Connections are split over
``--processes`` worker processes, each a tight single-threaded epoll loop on
raw non-blocking sockets, so the client costs little per message beyond the
two syscalls it must make.

The measured window opens after ``--warmup`` seconds; the parent prints the
`loadtest` window markers on stderr when it opens and closes, and one JSON
line on stdout at the end: messages, messages/s, latency percentiles (ms),
errors, and the workers' CPU utilisation over the window.  A utilisation near
1.0 (per process) means the client, not the server, was the limit.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import multiprocessing.connection
import resource
import select
import socket
import sys
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadtest import ECHO_MESSAGE_BYTES, WINDOW_END_MARKER, WINDOW_START_MARKER

CONNECT_TIMEOUT_S = 10.0
RECV_BYTES = 65536
POLL_TIMEOUT_S = 0.05
# Messages differ from one to the next, and connection i starts at message i,
# so a reordered or repeated echo, or one sent to the wrong connection, fails.
MESSAGE_VARIANTS = 256


@dataclass(frozen=True, slots=True)
class Plan:
    """What one worker process does."""

    host: str
    port: int
    connections: int
    first_index: int  # connection numbers first_index.. (they name the messages)
    size: int
    pipeline: int


@dataclass(slots=True)
class WorkerReport:
    messages: int = 0  # echoed and checked inside the window
    errors: int = 0  # over the whole run, warm-up included
    cpu_s: float = 0.0  # this process's CPU time inside the window
    latencies_us: bytes = b""  # array("q").tobytes(), one per message in the window
    error_sample: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    """The client's result; printed as one JSON line."""

    connections: int
    processes: int
    pipeline: int
    message_bytes: int
    duration_s: float
    messages: int
    messages_per_s: float
    errors: int
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_s: float
    cpu_util: float  # CPU seconds / (window seconds x processes): near 1.0, the client limits
    error_sample: str


def make_messages(size: int) -> list[bytes]:
    """`MESSAGE_VARIANTS` distinct messages of `size` bytes, shared by all connections."""
    return [(b"%d:" % i + b"m" * size)[:size] for i in range(MESSAGE_VARIANTS)]


class _Conn:
    """One connection's state: the messages it expects back, and when each was sent."""

    __slots__ = ("buf", "expected", "index", "next_seq", "sent_at", "sock")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.buf = b""
        self.expected: deque[bytes] = deque()
        self.sent_at: deque[int] = deque()
        self.next_seq = index


class Worker:
    """Runs `plan.connections` ping-pong connections on one epoll until told to stop."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.report = WorkerReport()
        self.ep = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.messages = make_messages(plan.size)

    def open_all(self) -> None:
        for index in range(self.plan.first_index, self.plan.first_index + self.plan.connections):
            self._open(index)

    def _open(self, index: int) -> _Conn:
        sock = socket.create_connection((self.plan.host, self.plan.port), CONNECT_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock, index)
        self.conns[sock.fileno()] = conn
        self.ep.register(sock.fileno(), select.EPOLLIN)
        return conn

    def _fail(self, conn: _Conn, why: str) -> None:
        """Count an error, drop the connection and replace it with a fresh one."""
        self.report.errors += 1
        if not self.report.error_sample:
            self.report.error_sample = why
        fd = conn.sock.fileno()
        self.ep.unregister(fd)
        del self.conns[fd]
        conn.sock.close()
        try:
            self._send(self._open(conn.index), self.plan.pipeline)
        except OSError as exc:
            self.report.errors += 1
            self.report.error_sample = self.report.error_sample or f"reconnect: {exc}"

    def _send(self, conn: _Conn, count: int) -> None:
        """Send the connection's next `count` messages."""
        out = []
        now = time.perf_counter_ns()
        for _ in range(count):
            msg = self.messages[conn.next_seq % MESSAGE_VARIANTS]
            conn.next_seq += 1
            conn.expected.append(msg)
            conn.sent_at.append(now)
            out.append(msg)
        data = out[0] if count == 1 else b"".join(out)
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent != len(data):  # the socket buffer is full: finish blocking (rare)
            conn.sock.setblocking(True)
            try:
                conn.sock.sendall(data[sent:])
            finally:
                conn.sock.setblocking(False)

    def run(self, window_start: float, window_end: float) -> WorkerReport:
        """Ping-pong until `window_end` (`time.monotonic()`); count from `window_start`."""
        size = self.plan.size
        for first in list(self.conns.values()):
            self._send(first, self.plan.pipeline)
        report = self.report
        latencies = array("q")
        conns = self.conns
        poll = self.ep.poll
        perf_ns = time.perf_counter_ns
        monotonic = time.monotonic
        send = self._send
        in_window = False
        cpu_start = 0.0
        while True:
            now = monotonic()
            if not in_window and now >= window_start:
                in_window = True
                cpu_start = time.process_time()
                report.messages = 0
                latencies = array("q")
            if now >= window_end:
                break
            for fd, _ in poll(POLL_TIMEOUT_S):
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    data = conn.sock.recv(RECV_BYTES)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    self._fail(conn, f"recv: {exc}")
                    continue
                if not data:
                    self._fail(conn, "the server closed the connection")
                    continue
                buf = conn.buf + data if conn.buf else data
                t = perf_ns()
                done = 0
                while len(buf) >= size:
                    want = conn.expected.popleft()
                    sent_at = conn.sent_at.popleft()
                    if buf[:size] != want:
                        self._fail(conn, f"sent {want[:16]!r}..., got {buf[:16]!r}...")
                        break
                    buf = buf[size:]
                    latencies.append((t - sent_at) // 1000)
                    done += 1
                else:
                    conn.buf = buf
                    if done:
                        report.messages += done
                        send(conn, done)
        report.cpu_s = time.process_time() - cpu_start if in_window else 0.0
        report.latencies_us = latencies.tobytes()
        return report

    def close(self) -> None:
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()
        self.ep.close()


def _worker_main(plan: Plan, pipe: multiprocessing.connection.Connection) -> None:
    """A worker process: connect, report ready, get the window, run, send the report.

    Anything that goes wrong is sent back as a string instead.
    """
    worker = Worker(plan)
    try:
        worker.open_all()
        pipe.send("ready")
        window_start, window_end = pipe.recv()
        pipe.send(asdict(worker.run(window_start, window_end)))
    except Exception as exc:
        pipe.send(f"{type(exc).__name__}: {exc}")
    finally:
        worker.close()
        pipe.close()


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal positive counts (fewer parts if total is small)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """The nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0
    rank = math.ceil(round(fraction * len(sorted_values), 9))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


class ClientError(Exception):
    """The client could not run (could not connect, a worker died)."""


def _receive(pipe: multiprocessing.connection.Connection, timeout: float, what: str) -> object:
    if not pipe.poll(timeout):
        raise ClientError(f"a worker did not {what} within {timeout:.0f} s")
    try:
        message = pipe.recv()
    except EOFError:
        raise ClientError(f"a worker died before it could {what}") from None
    if isinstance(message, str) and message != "ready":
        raise ClientError(message)
    return message


def run_client(
    host: str,
    port: int,
    connections: int,
    duration: float,
    warmup: float,
    processes: int = 1,
    pipeline: int = 1,
    size: int = ECHO_MESSAGE_BYTES,
) -> Summary:
    """Run the whole client and return its summary; prints the window markers on stderr.

    Raises:
        ClientError: a worker could not connect or died.
    """
    ctx = mp.get_context("fork")
    workers: list[tuple[Any, multiprocessing.connection.Connection]] = []  # (process, pipe)
    first = 0
    try:
        for count in split(connections, processes):
            parent_end, child_end = ctx.Pipe()
            plan = Plan(host, port, count, first, size, pipeline)
            proc = ctx.Process(target=_worker_main, args=(plan, child_end), daemon=True)
            proc.start()
            child_end.close()
            workers.append((proc, parent_end))
            first += count
        connect_timeout = CONNECT_TIMEOUT_S + connections / 1000
        for _, pipe in workers:
            _receive(pipe, connect_timeout, "connect")
        window_start = time.monotonic() + warmup
        window_end = window_start + duration
        for _, pipe in workers:
            pipe.send((window_start, window_end))
        _sleep_until(window_start)
        print(WINDOW_START_MARKER, file=sys.stderr, flush=True)
        _sleep_until(window_end)
        print(WINDOW_END_MARKER, file=sys.stderr, flush=True)
        reports = [
            WorkerReport(**_receive(pipe, 30.0, "report"))  # type: ignore[arg-type]
            for _, pipe in workers
        ]
    finally:
        for proc, pipe in workers:
            pipe.close()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return summarize(reports, connections, len(workers), pipeline, size, duration)


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(left)


def summarize(
    reports: list[WorkerReport],
    connections: int,
    processes: int,
    pipeline: int,
    size: int,
    duration: float,
) -> Summary:
    latencies = array("q")
    for report in reports:
        latencies.frombytes(report.latencies_us)
    ordered = sorted(latencies)
    messages = sum(r.messages for r in reports)
    cpu_s = sum(r.cpu_s for r in reports)
    return Summary(
        connections=connections,
        processes=processes,
        pipeline=pipeline,
        message_bytes=size,
        duration_s=duration,
        messages=messages,
        messages_per_s=messages / duration,
        errors=sum(r.errors for r in reports),
        avg_ms=(sum(ordered) / len(ordered) / 1000) if ordered else 0.0,
        p50_ms=percentile(ordered, 0.50) / 1000,
        p90_ms=percentile(ordered, 0.90) / 1000,
        p99_ms=percentile(ordered, 0.99) / 1000,
        cpu_s=cpu_s,
        cpu_util=cpu_s / (duration * processes),
        error_sample=next((r.error_sample for r in reports if r.error_sample), ""),
    )


def raise_fd_limit(needed: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards the hard one if `needed` fds exceed it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new_soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.echo_client",
        description="Saturate a ringserve echo server with ping-pong connections.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds discarded first")
    p.add_argument("--processes", type=int, default=1, help="worker processes")
    p.add_argument("--pipeline", type=int, default=1, help="messages in flight per connection")
    p.add_argument("--size", type=int, default=ECHO_MESSAGE_BYTES, help="bytes per message")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("connections", "processes", "pipeline", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    raise_fd_limit(args.connections + 64)
    try:
        summary = run_client(
            args.host,
            args.port,
            args.connections,
            args.duration,
            args.warmup,
            args.processes,
            args.pipeline,
            args.size,
        )
    except (ClientError, OSError) as exc:
        print(f"echo_client: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
