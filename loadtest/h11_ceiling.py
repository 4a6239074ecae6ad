"""The h11 ceiling: ringserve's HTTP path with no I/O at all.

``python -m loadtest.h11_ceiling [--http h11|httptools] [--app M:F] [--duration 5] [--json]``

Feeds the connection class of ``--http`` (default `server.protocols.http.
h11_impl.H11Connection`; ``httptools``: ``httptools_impl.HttptoolsConnection``)
with the built-in app
(`server.apps.builtin.BuiltinApp`; ``--app``: a WSGI app in the server's
adapter, as ``python -m server --app`` serves it) exactly the request wrk sends for
``GET /`` (``GET / HTTP/1.1``, ``Host: 127.0.0.1:PORT``, nothing else),
round-robin over ``--connections`` keep-alive connection objects, in memory:
no sockets, no event loop, no syscalls.  Each response is produced exactly
as a backend would produce it (parsing, the app, the Date header,
serialising), so the requests/s printed is the most any backend of this
server could reach on one CPU with this request; ``compare --protocol http``
runs it once and reports each server's wrk figure as a share of it.

It pins itself to one CPU with ``os.sched_setaffinity`` (``--cpu``, default
the first CPU it may use), discards ``--warmup`` seconds, then counts for
``--duration`` seconds and prints requests/s and microseconds per request
(wall clock; CPU time is reported too).  With ``--json`` it prints one JSON
line instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import get_args

from server.apps.builtin import HELLO, BuiltinApp
from server.apps.wsgi import WsgiAdapter, load_app
from server.protocols.http import HttpName, load_http
from server.protocols.http.common import App, Counters, HttpLimits

DEFAULT_PORT = 8080


def wrk_request(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> bytes:
    """The bytes wrk sends for ``wrk http://HOST:PORT/`` (its default ``GET /``)."""
    return b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port)


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
    app: App | None = None,
) -> Ceiling:
    """Drive the HTTP path in memory for `warmup` + `duration` seconds; count the latter.

    Args:
        http: the parser (``--http``).
        app: another app to serve ``GET /`` (default: the built-in one; e.g.
            ``server.apps.wsgi.WsgiAdapter`` around a WSGI hello).

    Raises:
        RuntimeError: a response is not a 200 (the built-in app's hello, by default).
    """
    if duration <= 0 or connections < 1 or warmup < 0:
        raise ValueError("duration must be positive, connections at least 1, warmup >= 0")
    counters = Counters()
    builtin = app is None
    if app is None:
        app = BuiltinApp(lambda: {"backend": "memory", "requests": counters.requests})
    limits = HttpLimits()
    connection_class = load_http(http)
    conns = [connection_class(app, limits, counters) for _ in range(connections)]
    request = wrk_request()
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
    p.add_argument("--app", help="a WSGI app 'module:callable' instead of the built-in app")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        p.error("--duration must be positive, --warmup not negative, --connections at least 1")
    cpu = pin(args.cpu)
    app = None if args.app is None else WsgiAdapter(load_app(args.app), "127.0.0.1", DEFAULT_PORT)
    result = measure(args.duration, args.connections, args.warmup, args.http, app)
    result = Ceiling(**{**asdict(result), "cpu": cpu})
    if args.json:
        print(json.dumps({**asdict(result), "http": args.http, "app": args.app}), flush=True)
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
