"""``--metrics HOST:PORT``: the server's counters for Prometheus, on a listener of their own.

``GET /metrics`` answers `Server.statistics()` (the built-in app's
``/stats`` fields) in the text exposition format, version 0.0.4: a
``# HELP`` and a ``# TYPE`` line per metric, counters named ``..._total``,
gauges for what goes up and down, every name prefixed ``ringserve_``.  The
listener is an `asyncio` server on the server's own loop
(`server.aio.RingEventLoop`: the backend watches its file descriptors like
any app's), so it needs no thread and it answers whatever ``--app`` serves.
Its connections are not the backend's: a scrape changes no counter but
``wait_calls`` and ``syscalls`` (the loop passes it takes) and, on uring,
``sqes_submitted``, ``cqes_reaped`` and ``ops_in_flight`` (the polls that
watch its sockets).

It speaks just enough HTTP/1.1 for a scraper: one request per connection,
``GET`` or ``HEAD`` of ``/metrics`` (any query), 404 for another path, 405
for another method, 400 for a head that is not one, then a close; a head
larger than `MAX_HEAD_BYTES` or slower than `TIMEOUT_S` is dropped.

With ``--workers N`` each worker has its own counters and serves them on
its own port: worker i (from 0) on PORT + i.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Final

MAX_HEAD_BYTES: Final = 8192
TIMEOUT_S: Final = 10.0
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "ringserve_"

# statistics() key -> (metric name without the prefix, type, help).
METRICS: Final[dict[str, tuple[str, str, str]]] = {
    "open_connections": ("open_connections", "gauge", "Connections open now."),
    "ops_in_flight": ("ops_in_flight", "gauge", "I/O operations submitted and not completed."),
    "accepted": ("accepted_total", "counter", "Connections accepted."),
    "bytes_in": ("received_bytes_total", "counter", "Bytes received from clients."),
    "bytes_out": ("sent_bytes_total", "counter", "Bytes sent to clients."),
    "wait_calls": ("wait_calls_total", "counter", "epoll_wait or io_uring_enter calls."),
    "syscalls": ("syscalls_total", "counter", "Syscalls the backend made for I/O."),
    "sqes_submitted": ("sqes_submitted_total", "counter", "io_uring SQEs submitted."),
    "cqes_reaped": ("cqes_reaped_total", "counter", "io_uring CQEs reaped."),
    "accept_errors": ("accept_errors_total", "counter", "accept() calls that failed."),
    "paused_reads": ("paused_reads_total", "counter", "Times a connection's reading paused."),
    "requests": ("requests_total", "counter", "Responses to complete requests."),
    "client_errors": ("client_errors_total", "counter", "Requests refused with a 4xx/505."),
    "app_errors": ("app_errors_total", "counter", "500s: the app raised or answered badly."),
    "timeouts": ("timeouts_total", "counter", "Connections timed out."),
    "internal_errors": ("internal_errors_total", "counter", "Connections closed by a bug."),
    "uptime_s": ("uptime_seconds", "gauge", "Seconds since the server started."),
}


def exposition(stats: dict[str, Any]) -> bytes:
    """`stats` (a `Server.statistics()` dict) in the text exposition format 0.0.4."""
    lines = [
        f"# HELP {PREFIX}info The server's backend and process.",
        f"# TYPE {PREFIX}info gauge",
        f'{PREFIX}info{{backend="{stats.get("backend", "")}",pid="{stats.get("pid", "")}"}} 1',
    ]
    for key, (name, kind, help_text) in METRICS.items():
        if key not in stats:
            continue
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.append(f"{PREFIX}{name} {stats[key]}")
    return ("\n".join(lines) + "\n").encode()


_REQUEST_LINE: Final = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r?\n")


class _MetricsProtocol(asyncio.Protocol):
    """One scrape: read a head, answer, close."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(TIMEOUT_S, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            end = self._buf.find(b"\n\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                transport.abort()
            return
        match = _REQUEST_LINE.match(self._buf)
        if match is None:
            self._answer(400, b"400 Bad Request\n")
            return
        method, target = match[1], match[2]
        if target.partition(b"?")[0] != b"/metrics":
            self._answer(404, b"404 Not Found\n")
        elif method not in (b"GET", b"HEAD"):
            self._answer(405, b"405 Method Not Allowed\n", [(b"allow", b"GET, HEAD")])
        else:
            body = exposition(self._stats())
            self._answer(200, body, [(b"content-type", CONTENT_TYPE)], head_only=method == b"HEAD")

    def _answer(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        head_only: bool = False,
    ) -> None:
        assert self._transport is not None
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
        head = [b"HTTP/1.1 %d %s" % (status, reason[status])]
        head += [b"%s: %s" % h for h in headers or [(b"content-type", b"text/plain")]]
        head += [b"content-length: %d" % len(body), b"connection: close", b"", b""]
        self._transport.write(b"\r\n".join(head) + (b"" if head_only else body))
        self._transport.close()


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port).

    Raises:
        ValueError: not that shape, or the port is not 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 host in brackets, [{host}]:{port}")
    value = int(port)
    if value > 65535:
        raise ValueError(f"{value} is not a TCP port")
    return host, value


async def start_metrics(
    host: str, port: int, stats: Callable[[], dict[str, Any]], reuse_port: bool = False
) -> asyncio.base_events.Server:
    """Listen on (host, port) in the running loop and answer scrapes from `stats`
    (`reuse_port`: with SO_REUSEPORT).

    Raises:
        OSError: the address cannot be bound.
    """
    loop = asyncio.get_running_loop()
    # SO_REUSEPORT: during a rolling reload (SIGHUP, --max-requests) a slot's
    # new worker binds its port while the old one still drains.
    return await loop.create_server(
        lambda: _MetricsProtocol(stats), host, port, reuse_address=True, reuse_port=reuse_port
    )
