"""The h11 ceiling: ringserve's HTTP path with no I/O at all.

``python -m loadtest.h11_ceiling [--http h11|httptools] [--app M:F] [--path /] [--duration 5]
[--json]``

Feeds the connection class of ``--http`` (default `server.protocols.http.
h11_impl.H11Connection`; ``httptools``: ``httptools_impl.HttptoolsConnection``)
with the built-in app
(`server.apps.builtin.BuiltinApp`; ``--app``: a WSGI app in the server's
adapter, as ``python -m server --app`` serves it) exactly the request wrk sends for
``GET /`` (``GET / HTTP/1.1``, ``Host: 127.0.0.1:PORT``, nothing else; ``--path``:
another target), round-robin over ``--connections`` keep-alive connection objects,
in memory: no sockets, no event loop, no syscalls.  Each response is produced exactly
as a backend would produce it (parsing, the app, the Date header,
serialising), so the requests/s printed is the most any backend of this
server could reach on one CPU with this request; ``compare --protocol http``
runs it once and reports each server's wrk figure as a share of it.

An ASGI ``--app`` (a coroutine function, as the server's ``--interface auto``
decides: ``compare --app asgi`` and ``--app fastapi``) runs as the server
runs it: the parser's ASGI connection class (`server.protocols.http.framing.
AsyncMode`) on our event loop (`server.aio`, the epoll backend: nothing waits
on it), each request's app started as an eager Task, after the app's lifespan
startup, with ``receive_data`` called from loop callbacks as the server's
dispatch calls it (outside any Task).  A response the app's first step
completes comes back from ``receive_data``, as on the server (the hello's and
the FastAPI example's all do); one that suspends (a threadpool, a sleep) is
polled once per loop iteration and collected from the connection's in-memory
transport.

It pins itself to one CPU with ``os.sched_setaffinity`` (``--cpu``, default
the first CPU it may use), discards ``--warmup`` seconds, then counts for
``--duration`` seconds and prints requests/s and microseconds per request
(wall clock; CPU time is reported too).  With ``--json`` it prints one JSON
line instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, get_args

from server.aio import new_event_loop
from server.apps.asgi import AsgiApp, Lifespan, is_asgi
from server.apps.builtin import HELLO, BuiltinApp
from server.apps.wsgi import WsgiAdapter, load_app
from server.protocols.http import HttpName, load_http
from server.protocols.http.common import App, Counters, HttpLimits

DEFAULT_PORT = 8080


def wrk_request(host: str = "127.0.0.1", port: int = DEFAULT_PORT, path: str = "/") -> bytes:
    """The bytes wrk sends for ``wrk http://HOST:PORT/PATH`` (its default ``GET /``)."""
    return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path.encode(), host.encode(), port)


class MemoryTransport:
    """An ASGI connection's transport, in memory: what it writes after `receive_data`."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer, self.written, self.closed = peer, bytearray(), False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


@dataclass(frozen=True, slots=True)
class Ceiling:
    requests: int
    seconds: float
    cpu_seconds: float
    connections: int
    requests_per_s: float
    us_per_request: float  # wall clock
    cpu_us_per_request: float
    cpu: int | None  # the CPU it was pinned to, if any
    python: str


def measure(
    duration: float,
    connections: int = 100,
    warmup: float = 0.5,
    http: HttpName = "h11",
    app: App | AsgiApp | None = None,
    path: str = "/",
) -> Ceiling:
    """Drive the HTTP path in memory for `warmup` + `duration` seconds; count the latter.

    Args:
        http: the parser (``--http``).
        app: another app to serve the request (default: the built-in one; e.g.
            ``server.apps.wsgi.WsgiAdapter`` around a WSGI hello, or an
            `AsgiApp`, driven on the event loop: `measure_asgi`).
        path: the request's target.

    Raises:
        RuntimeError: a response is not a 200 (the built-in app's hello, by default).
    """
    if duration <= 0 or connections < 1 or warmup < 0:
        raise ValueError("duration must be positive, connections at least 1, warmup >= 0")
    if isinstance(app, AsgiApp):
        return measure_asgi(app, duration, connections, warmup, http, path)
    counters = Counters()
    builtin = app is None
    if app is None:
        app = BuiltinApp(lambda: {"backend": "memory", "requests": counters.requests})
    limits = HttpLimits()
    connection_class = load_http(http)
    conns = [connection_class(app, limits, counters) for _ in range(connections)]
    request = wrk_request(path=path)
    first = conns[0].receive_data(request)
    if not first.startswith(b"HTTP/1.1 200 ") or (builtin and not first.endswith(HELLO)):
        raise RuntimeError(f"unexpected response: {first[:200]!r}")

    def spin(until: float) -> int:
        done = 0
        now = time.perf_counter()
        while now < until:
            for conn in conns:
                if not conn.receive_data(request):
                    raise RuntimeError("a connection produced no response")
            done += connections
            now = time.perf_counter()
        return done

    if warmup:
        spin(time.perf_counter() + warmup)
    cpu0, t0 = time.process_time(), time.perf_counter()
    requests = spin(t0 + duration)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0
    if any(conn.should_close for conn in conns):
        raise RuntimeError("a keep-alive connection was closed")
    return _ceiling(requests, seconds, cpu_seconds, connections)


def _ceiling(requests: int, seconds: float, cpu_seconds: float, connections: int) -> Ceiling:
    return Ceiling(
        requests=requests,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        connections=connections,
        requests_per_s=requests / seconds,
        us_per_request=seconds / requests * 1e6,
        cpu_us_per_request=cpu_seconds / requests * 1e6,
        cpu=None,
        python=platform.python_version(),
    )


ANSWER_TIMEOUT_S = 10.0  # for one response that the app finishes after its first step


class _Driver:
    """Answers `request` on `conns` round-robin in loop callbacks, as the server's dispatch
    does (outside any Task: an eager Task cannot start inside another), until `until` or
    `limit` responses; `done` gets the count.  A response still pending after
    ``receive_data`` is polled once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conns: list[tuple[Any, MemoryTransport]],
                 request: bytes, until: float, limit: int | None = None) -> None:  # fmt: skip
        self.loop, self.conns, self.request, self.until, self.limit = (
            loop,
            conns,
            request,
            until,
            limit,
        )
        self.count, self.last = 0, b""
        self.done: asyncio.Future[int] = loop.create_future()

    def step(self) -> None:
        try:
            conns, request, n = self.conns, self.request, len(self.conns)
            while time.perf_counter() < self.until and self.count != self.limit:
                conn, transport = conns[self.count % n]
                out = conn.receive_data(request)
                if conn.responding:  # the app suspended: the loop runs it on
                    deadline = time.perf_counter() + ANSWER_TIMEOUT_S
                    self.loop.call_soon(self.wait, conn, transport, out, deadline)
                    return
                self.answered(conn, transport, out)
            self.done.set_result(self.count)
        except Exception as exc:
            self.done.set_exception(exc)

    def wait(self, conn: Any, transport: MemoryTransport, out: bytes, deadline: float) -> None:
        try:
            if conn.responding:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"no response within {ANSWER_TIMEOUT_S:.0f} s")
                self.loop.call_soon(self.wait, conn, transport, out, deadline)
                return
            self.answered(conn, transport, out)
            self.loop.call_soon(self.step)
        except Exception as exc:
            self.done.set_exception(exc)

    def answered(self, conn: Any, transport: MemoryTransport, out: bytes) -> None:
        if transport.written:  # what the app wrote after receive_data returned
            out, transport.written = out + bytes(transport.written), bytearray()
        if not out or conn.should_close:
            raise RuntimeError(f"a connection closed or produced no response: {out[:200]!r}")
        self.count, self.last = self.count + 1, out


def measure_asgi(
    app: AsgiApp, duration: float, connections: int, warmup: float, http: HttpName, path: str
) -> Ceiling:
    """`measure` for an ASGI app: its lifespan, then the requests, on our event loop.

    Whatever fails, the app's lifespan is shut down and its tasks finish before the
    loop closes (a coroutine left to the garbage collector is closed at random).
    """
    loop = new_event_loop("epoll")
    lifespan, shut = Lifespan(app, "auto"), False

    def drive(until: float, limit: int | None = None) -> _Driver:
        driver = _Driver(loop, conns, request, until, limit)
        loop.call_soon(driver.step)
        loop.run_until_complete(driver.done)
        return driver

    try:
        if not loop.run_until_complete(lifespan.startup()):
            raise RuntimeError(f"the app's lifespan startup failed: {lifespan.error}")
        counters, limits = Counters(), HttpLimits()
        connection_class = load_http(http, asgi=True)
        conns = []
        for i in range(connections):
            conn = connection_class(app, limits, counters)
            conn.connection_made(transport := MemoryTransport(("127.0.0.1", i)))  # type: ignore[attr-defined]
            conns.append((conn, transport))
        request = wrk_request(path=path)
        if not (first := drive(math.inf, 1).last).startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected response: {first[:200]!r}")
        if warmup:
            drive(time.perf_counter() + warmup)
        cpu0, t0 = time.process_time(), time.perf_counter()
        requests = drive(t0 + duration).count
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - cpu0
        shut = True
        if not loop.run_until_complete(lifespan.shutdown()):
            raise RuntimeError(f"the app's lifespan shutdown failed: {lifespan.error}")
    finally:
        if not shut:
            with contextlib.suppress(Exception):
                loop.run_until_complete(lifespan.shutdown())
        if tasks := asyncio.all_tasks(loop):
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
    return _ceiling(requests, seconds, cpu_seconds, connections)


def pin(cpu: int | None) -> int | None:
    """Pin this process to `cpu` (default: the first it may use); None if it cannot."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        chosen = min(os.sched_getaffinity(0)) if cpu is None else cpu
        os.sched_setaffinity(0, {chosen})
        return chosen
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.h11_ceiling",
        description="Requests/s of HttpConnection + the built-in app on wrk's GET /, in memory.",
    )
    p.add_argument(
        "--http", choices=list(get_args(HttpName)), default="h11", help="HTTP parser (h11)"
    )
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (5)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds discarded first (0.5)")
    p.add_argument("--connections", type=int, default=100, help="connection objects (100)")
    p.add_argument("--cpu", type=int, default=None, help="CPU to pin to (the first usable)")
    p.add_argument("--app", help="a WSGI or ASGI app 'module:callable' instead of the built-in app")
    p.add_argument("--path", default="/", help="the request's target (/), e.g. /items/42?q=hello")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        p.error("--duration must be positive, --warmup not negative, --connections at least 1")
    if not args.path.startswith("/"):
        p.error(f"--path {args.path!r} must start with /")
    cpu = pin(args.cpu)
    app: App | AsgiApp | None = None
    if args.app is not None:
        where, obj = ("127.0.0.1", DEFAULT_PORT), load_app(args.app)
        app = AsgiApp(obj, "", where) if is_asgi(obj) else WsgiAdapter(obj, *where)  # type: ignore[arg-type]
    result = measure(args.duration, args.connections, args.warmup, args.http, app, args.path)
    result = Ceiling(**{**asdict(result), "cpu": cpu})
    if args.json:
        record = {**asdict(result), "http": args.http, "app": args.app, "path": args.path}
        print(json.dumps(record), flush=True)
    else:
        where = f"CPU {cpu}" if cpu is not None else "not pinned"
        print(
            f"{args.http} ceiling: {result.requests_per_s:,.0f} req/s in memory, "
            f"{result.us_per_request:.2f} us per request "
            f"({result.cpu_us_per_request:.2f} us CPU); {result.requests:,} requests over "
            f"{result.connections} keep-alive connections in {result.seconds:.2f} s, {where}, "
            f"Python {result.python}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
