"""Result records: one per run, medians over repeats, and the CSV/JSON files.

Server-side figures come from the server's own counters read at the edges of
the generator's measured window (`procs.ServerSnapshot`):

- ``server_requests``: HTTP requests completed, or for echo the messages
  echoed, ``bytes_in / 64``;
- ``syscalls_per_request``: the backend's syscall counter over that (for uring
  mostly ``io_uring_enter``; for epoll every ``epoll_wait``, ``recv``, ``send``
  and ``epoll_ctl``);
- ``wait_calls_per_request``: ``io_uring_enter`` calls (uring) or
  ``epoll_wait`` calls (epoll) per request;
- ``cpu_s`` and ``cpu_us_per_request``: the server process's user + system
  CPU over the window; ``user_us_per_request`` and ``system_us_per_request``
  split it.  System time is the kernel working inside the server's syscalls
  (for echo almost all of it is loopback TCP, the same work for every
  server), user time the server's own code: the split shows which part a
  faster server could still shrink.

A peer server (``compare --peers``: uvloop, uvicorn, the C echo server) has
no counters: its ``server_requests``, ``syscalls_per_request`` and
``wait_calls_per_request`` are None (blank in the CSV), and its
``cpu_us_per_request`` divides its CPU seconds (psutil, as for ours) by the
generator's count.  ``backend`` is the server's name either way.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from loadtest import ECHO_MESSAGE_BYTES
from loadtest.procs import ServerSnapshot
from loadtest.tools import ToolResult


@dataclass(frozen=True, slots=True)
class Metadata:
    """Recorded with every result."""

    started_at: str
    protocol: str
    duration_s: int
    warmup_s: float
    repeat: int
    echo_pipeline: int  # messages in flight per connection (echo saturation client)
    kernel: str
    cpu_model: str
    cpu_count: int
    python: str
    liburing: str
    h11: str
    locust: str
    wrk: str
    pinning: str
    server_command: str
    peers: str  # "name: command; ..." for the peer servers run (--peers), or ""
    uvloop: str
    uvicorn: str
    # In-memory requests/s of HttpConnection + the built-in app on GET / (the
    # request wrk sends), pinned like the server: `loadtest.h11_ceiling`;
    # None when not measured (echo, or no saturation tool).
    h11_ceiling_rps: float | None = None
    h11_ceiling_us_per_request: float | None = None
    # The same, measured again after the last run (None: not measured).
    h11_ceiling_end_rps: float | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """One server, tool and point: a single run, or the medians of `runs` runs."""

    protocol: str
    tool: str
    backend: str  # the server: "uring", "epoll", or a peer's name
    connections: int
    runs: int
    requests_per_s: float
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # summed over runs, not a median: every error shows
    requests: int  # counted by the generator in its window
    server_requests: int | None  # counted by the server in the same window (None: a peer)
    syscalls_per_request: float | None
    wait_calls_per_request: float | None
    cpu_s: float
    cpu_us_per_request: float | None
    user_us_per_request: float | None
    system_us_per_request: float | None
    peak_rss_kib: int
    client_cpu_util: float
    window_s: float
    server_exit_status: int  # of the last run


def _per(value: float, count: int) -> float | None:
    return value / count if count > 0 else None


def _us_per(seconds: float, count: int) -> float | None:
    return seconds * 1e6 / count if count > 0 else None


def result_from_run(
    protocol: str,
    tool: str,
    backend: str,
    connections: int,
    measured: ToolResult,
    before: ServerSnapshot,
    after: ServerSnapshot,
    peak_rss_kib: int,
    server_exit_status: int,
) -> Result:
    """Combine the generator's figures with the server's counter deltas.

    Snapshots without counters (a peer's) leave the counter figures None.
    """
    cpu_s = after.cpu_s - before.cpu_s
    user_s = after.user_s - before.user_s
    system_s = after.system_s - before.system_s
    if before.stats is None or after.stats is None:
        count = measured.requests
        server_requests = syscalls_per = waits_per = None
    else:
        b, a = before.stats, after.stats

        def delta(key: str) -> int:
            return int(a.get(key, 0)) - int(b.get(key, 0))

        if protocol == "echo":
            server_requests = delta("bytes_in") // ECHO_MESSAGE_BYTES
        else:
            server_requests = delta("requests")
        count = server_requests
        syscalls_per = _per(delta("syscalls"), server_requests)
        waits_per = _per(delta("wait_calls"), server_requests)
    return Result(
        protocol=protocol,
        tool=tool,
        backend=backend,
        connections=connections,
        runs=1,
        requests_per_s=measured.requests_per_s,
        avg_ms=measured.avg_ms,
        p50_ms=measured.p50_ms,
        p90_ms=measured.p90_ms,
        p99_ms=measured.p99_ms,
        errors=measured.errors,
        requests=measured.requests,
        server_requests=server_requests,
        syscalls_per_request=syscalls_per,
        wait_calls_per_request=waits_per,
        cpu_s=cpu_s,
        cpu_us_per_request=_us_per(cpu_s, count),
        user_us_per_request=_us_per(user_s, count),
        system_us_per_request=_us_per(system_s, count),
        peak_rss_kib=peak_rss_kib,
        client_cpu_util=measured.client_cpu_util,
        window_s=measured.window_s,
        server_exit_status=server_exit_status,
    )


def _median(values: Sequence[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    middle = statistics.median(present)
    return round(middle) if isinstance(present[0], int) else middle


def median_result(runs: Sequence[Result]) -> Result:
    """Medians of every figure over `runs` (same server, tool and point)."""
    first = runs[0]
    if len(runs) == 1:
        return first
    keep = {"protocol", "tool", "backend", "connections", "server_exit_status"}
    changes: dict[str, Any] = {"runs": len(runs), "errors": sum(r.errors for r in runs)}
    for f in fields(Result):
        if f.name not in keep and f.name not in changes:
            changes[f.name] = _median([getattr(r, f.name) for r in runs])
    changes["server_exit_status"] = next(
        (r.server_exit_status for r in runs if r.server_exit_status != 0), 0
    )
    return replace(first, **changes)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def records(results: Sequence[Result], meta: Metadata) -> list[dict[str, Any]]:
    """Flat dicts: each result's fields, then the metadata's (``protocol`` is in both)."""
    return [{k: _clean(v) for k, v in {**asdict(r), **asdict(meta)}.items()} for r in results]


def write_csv(path: Path, results: Sequence[Result], meta: Metadata) -> None:
    rows = records(results, meta)
    columns = list(dict.fromkeys(f.name for f in (*fields(Result), *fields(Metadata))))
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, results: Sequence[Result], meta: Metadata) -> None:
    path.write_text(json.dumps(records(results, meta), indent=2) + "\n")
