"""Result records (a run, or medians over repeats), their CSV/JSON files, tables and plots.

Server-side figures come from the server's own counters over the
generator's window: requests (echo: ``bytes_in / 64``), syscalls and waits
(``io_uring_enter`` or ``epoll_wait``) per request, and its CPU split into
user time (the server's own code) and system time (the kernel inside its
syscalls, for echo mostly loopback TCP, the same for every server), which
shows what a faster server could still shrink.  A peer has no counters:
those figures are None and its CPU per request is over the generator's
count.  A table's ratio column divides one server's figure by another's
(``compare.ratio_pairs`` says which): ``u/e`` above 1 means uring's is
higher.  A point where the load generator used more than `CLIENT_BOUND` of
its CPU is client-bound: its throughput may be the generator's limit.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from loadtest import ECHO_MESSAGE_BYTES
from loadtest.servers import ServerSnapshot
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
    parsers: str  # our servers' HTTP parsers, "h11,httptools" ("": echo)
    app: str  # the workload: builtin, wsgi, asgi or fastapi ("": echo)
    httptools: str
    granian: str
    commit: str  # of this checkout
    baseline_checkout: str  # "DIR at COMMIT" of --baseline, or ""
    # In-memory requests/s of each parser's HttpConnection + the workload's app
    # on the request wrk sends (GET / or the workload's path), pinned like the server:
    # `loadtest.h11_ceiling`; None when not measured (echo, no saturation tool,
    # a parser not asked).
    h11_ceiling_rps: float | None = None
    h11_ceiling_us_per_request: float | None = None
    # The same, measured again after the last run (None: not measured).
    h11_ceiling_end_rps: float | None = None
    httptools_ceiling_rps: float | None = None
    httptools_ceiling_us_per_request: float | None = None
    httptools_ceiling_end_rps: float | None = None
    # The ASGI framework's versions (they are part of what --app fastapi measures).
    fastapi: str = ""
    starlette: str = ""
    pydantic: str = ""


CEILINGS = ("h11", "httptools")  # the parsers with <parser>_ceiling_* fields above


@dataclass(frozen=True, slots=True)
class Result:
    """One server, tool and point: a single run, or the medians of `runs` runs."""

    protocol: str
    tool: str
    backend: str  # the server: "uring", "epoll", "uring-h11", "epoll@base"..., or a peer's name
    http: str | None  # its HTTP parser (granian's: hyper; None: echo)
    baseline: bool  # one of ours from the --baseline checkout
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
    server_exit_status: int  # of the last run that did not exit 0, else 0


def _per(value: float, count: int) -> float | None:
    return value / count if count > 0 else None


def result_from_run(
    protocol: str, tool: str, backend: str, connections: int, measured: ToolResult,
    before: ServerSnapshot, after: ServerSnapshot, peak_rss_kib: int, server_exit_status: int,
    *, http: str | None = None, baseline: bool = False,
) -> Result:  # fmt: skip
    """The generator's figures and the server's counter deltas (None for a peer)."""
    count, server_requests, syscalls, waits = measured.requests, None, None, None
    if before.stats is not None and after.stats is not None:
        delta = {k: int(v) - int(before.stats.get(k, 0)) for k, v in after.stats.items()
                 if isinstance(v, int)}  # fmt: skip
        echo = protocol == "echo"
        count = server_requests = (
            delta["bytes_in"] // ECHO_MESSAGE_BYTES if echo else delta["requests"]
        )
        syscalls, waits = _per(delta["syscalls"], count), _per(delta["wait_calls"], count)
    user, system = after.user_s - before.user_s, after.system_s - before.system_s
    return Result(
        protocol, tool, backend, http, baseline, connections, 1, measured.requests_per_s,
        measured.avg_ms, measured.p50_ms, measured.p90_ms, measured.p99_ms, measured.errors,
        measured.requests, server_requests, syscalls, waits, user + system,
        _per((user + system) * 1e6, count), _per(user * 1e6, count), _per(system * 1e6, count),
        peak_rss_kib, measured.client_cpu_util, measured.window_s, server_exit_status,
    )  # fmt: skip


def median_result(runs: Sequence[Result]) -> Result:
    """Medians of every figure over `runs` (same server, tool and point)."""
    changes: dict[str, Any] = {
        "runs": len(runs),
        "errors": sum(r.errors for r in runs),
        "server_exit_status": next((r.server_exit_status for r in runs if r.server_exit_status), 0),
    }
    for f in fields(Result)[7:]:
        present = [v for r in runs if (v := getattr(r, f.name)) is not None]
        if f.name not in changes:
            middle = statistics.median(present) if present else None
            changes[f.name] = round(middle) if present and isinstance(present[0], int) else middle
    return replace(runs[0], **changes)


CLIENT_BOUND = 0.9  # of the generator's CPU


def client_bound(r: Result) -> bool:
    """Whether the load generator was near its own limit (above ~100k req/s one wrk thread is)."""
    return r.client_cpu_util > CLIENT_BOUND


def records(results: Sequence[Result], meta: Metadata) -> list[dict[str, Any]]:
    """Flat dicts: each result's fields and `client_bound`, then the metadata's (``protocol``
    is in both)."""
    rows = [{**asdict(r), "client_bound": client_bound(r), **asdict(meta)} for r in results]
    return [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """`rows` as CSV, with the first row's keys as the columns."""
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


# -- tables ------------------------------------------------------------------------

# (label, the Result field or a function of a Result, format, flags): "r" adds a
# ratio column per pair of servers, "c" marks a figure from the server's own
# counters (a peer has none), "b" marks a client-bound point's figure with "*".
Metric = tuple[str, str | Callable[[Result], float | None], str, str]
THROUGHPUT: list[Metric] = [
    ("req/s", "requests_per_s", "{:,.0f}", "rb"), ("p50 ms", "p50_ms", "{:.2f}", ""),
    ("p90 ms", "p90_ms", "{:.2f}", ""), ("p99 ms", "p99_ms", "{:.2f}", "r"),
    ("errors", "errors", "{:d}", ""),
]  # fmt: skip
COST: list[Metric] = [
    ("syscalls/req", "syscalls_per_request", "{:.2f}", "rc"),
    ("waits/req", "wait_calls_per_request", "{:.3f}", "c"),
    ("server CPU us/req", "cpu_us_per_request", "{:.1f}", "r"),
    ("user us/req", "user_us_per_request", "{:.2f}", ""),
    ("sys us/req", "system_us_per_request", "{:.2f}", ""),
    ("server CPU %", lambda r: r.cpu_s / r.window_s * 100 if r.window_s else None, "{:.0f}", ""),
    ("peak RSS MiB", lambda r: r.peak_rss_kib / 1024, "{:.1f}", ""),
    ("client CPU %", lambda r: r.client_cpu_util * 100, "{:.0f}", ""),
]  # fmt: skip
# Short names for column heads and ratio labels; ours by word (uring-httptools@base: u-ht@base).
SHORT = {"uring": "u", "epoll": "e", "httptools": "ht", "uvloop-h11": "uv-h11",
         "uvloop-echo": "uv-echo", "c-uring-echo": "c-echo", "uvicorn-httptools": "uvi-ht",
         "uvicorn-ringloop": "uvi-ring", "granian-asgi": "gr-asgi",
         "granian-wsgi": "gr-wsgi"}  # fmt: skip


def short(name: str) -> str:
    if name in SHORT:
        return SHORT[name]
    ours, at, base = name.partition("@")
    return "-".join(SHORT.get(word, word) for word in ours.split("-")) + at + base


def render_table(
    title: str, results: Sequence[Result], servers: Sequence[str], metrics: Sequence[Metric],
    pairs: Sequence[tuple[str, str]] = (),
) -> str:  # fmt: skip
    """One row per connection count, a column group per metric with a column per server.

    Ratio metrics add an a/b column per pair (a, b) of `pairs` that ran, unless one
    side has no counters (a peer); beyond plain uring and epoll, heads are
    short names.
    """
    by_key = {(r.connections, r.backend): r for r in results}
    counted = {r.backend for r in results if r.syscalls_per_request is not None}
    shorten = not set(servers) <= {"uring", "epoll"}

    def value(figure: str | Callable[[Result], float | None], point: int, server: str) -> Any:
        if (r := by_key.get((point, server))) is None:
            return None
        return getattr(r, figure) if isinstance(figure, str) else figure(r)

    points = sorted({r.connections for r in results})
    first = max(len("conns"), *(len(str(p)) for p in points))
    labels, heads, lines = (
        [" " * first],
        ["conns".rjust(first)],
        [[str(p).rjust(first)] for p in points],
    )
    for label, figure, fmt, flags in metrics:
        ratios = [(a, b) for a, b in pairs if "r" in flags and {a, b} <= set(servers)]
        ratios = [(a, b) for a, b in ratios if "c" not in flags or {a, b} <= counted]
        names = [short(s) if shorten else s for s in servers]
        names += [f"{short(a)}/{short(b)}" for a, b in ratios]
        rows = []
        for point in points:
            row = [
                "-" if (v := value(figure, point, s)) is None else fmt.format(v) for s in servers
            ]
            if "b" in flags:
                marked = [(r := by_key.get((point, s))) is not None and client_bound(r)
                          for s in servers]  # fmt: skip
                row = [c + "*" if m else c for c, m in zip(row, marked, strict=True)]
            for a, b in ratios:  # a zero (e.g. Locust's whole-ms p99 on loopback) makes no ratio
                x, y = value(figure, point, a), value(figure, point, b)
                row.append(f"{x / y:.2f}" if x and y else "-")
            rows.append(row)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(names)]
        widths[-1] += max(0, len(label) - sum(widths) - 2 * (len(widths) - 1))
        labels.append(label.center(sum(widths) + 2 * (len(widths) - 1)))
        heads.append("  ".join(h.rjust(w) for h, w in zip(names, widths, strict=True)))
        for line, row in zip(lines, rows, strict=True):
            line.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    head = " | ".join(heads)
    table = [title, " | ".join(labels), head, "-" * len(head), *(" | ".join(x) for x in lines)]
    return "\n".join(table)


def ceiling_lines(
    results: Sequence[Result], servers: Sequence[str], ceiling: float, end: float | None = None,
    parser: str = "h11",
) -> list[str]:  # fmt: skip
    """Per point: each server's requests/s as a share of `parser`'s in-memory ceiling.

    With `end` (the ceiling measured again after the runs) a share is a range
    over the two, lower first, unless they round to the same percentage.
    """
    ceilings = (max(ceiling, end or ceiling), min(ceiling, end or ceiling))
    measured = f"{ceiling:,.0f} req/s in memory"
    if end is not None:
        measured += f" before the runs, {end:,.0f} after"

    def share(rps: float) -> str:
        low, high = (round(rps / c * 100) for c in ceilings)
        return f"{low}%" if low == high else f"{low}-{high}%"

    by_key = {(r.connections, r.backend): r for r in results}
    lines = []
    for point in sorted({r.connections for r in results}):
        shares = [
            (s, share(by_key[point, s].requests_per_s)) for s in servers if (point, s) in by_key
        ]
        if shares:
            (first, pct), rest = shares[0], shares[1:]
            line = f"c={point}: {first} reaches {pct} of the {parser} ceiling ({measured})"
            lines.append(line + ("; " + ", ".join(f"{s} {p}" for s, p in rest) if rest else ""))
    return lines


def tables(
    results: Sequence[Result], servers: Sequence[str], meta: Metadata,
    pairs: Sequence[tuple[str, str]] = (),
) -> str:  # fmt: skip
    """Both tables (throughput and latency; cost) per tool, and wrk's ceiling shares: each
    current server's (and peer's) of its own parser's ceiling."""
    out = []
    for tool in dict.fromkeys(r.tool for r in results):
        mine = [r for r in results if r.tool == tool]
        head = (
            f"{meta.protocol} / {tool}: median of {max(r.runs for r in mine)} run(s), "
            f"{meta.duration_s} s per point after {meta.warmup_s:g} s warm-up"
        )
        throughput = render_table(
            head + " -- throughput and latency", mine, servers, THROUGHPUT, pairs
        )
        cost = render_table(head + " -- server cost", mine, servers, COST, pairs)
        if not set(servers) <= {"uring", "epoll"}:
            names = ", ".join(f"{short(s)} = {s}" for s in servers)
            throughput += f"\nratio columns: x/y is x's figure over y's; {names}"
            cost += (
                "\nsyscalls/req and waits/req come from our backends' counters (peers: -); "
                "a peer's CPU us/req is over the generator's count"
            )
        if any(client_bound(r) for r in mine):
            throughput += (
                f"\n* client-bound: the load generator used more than {CLIENT_BOUND:.0%} of its "
                "CPU (client CPU % below), so this figure may be its limit, not the server's"
            )
        out += [throughput, cost]
        shares = []
        for parser in CEILINGS if tool == "wrk" else ():
            if rps := getattr(meta, f"{parser}_ceiling_rps"):
                of = {r.backend for r in mine if r.http == parser and not r.baseline}
                # uring first, the rest as given
                order = sorted((s for s in servers if s in of), key=lambda s: s[:5] != "uring")
                end = getattr(meta, f"{parser}_ceiling_end_rps")
                shares += ceiling_lines(mine, order, rps, end, parser)
        out += ["\n".join(shares)] if shares else []
    return "\n\n".join(out)


def plot(
    results: Sequence[Result], servers: Sequence[str], meta: Metadata, out_dir: Path
) -> list[Path]:
    """Per tool, one PNG: requests/s and p99 against connections, a line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for tool in dict.fromkeys(r.tool for r in results):
        mine = [r for r in results if r.tool == tool]
        fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
        for server in servers:
            points = sorted((r for r in mine if r.backend == server), key=lambda r: r.connections)
            xs = [r.connections for r in points]
            if points:
                ax_rps.plot(xs, [r.requests_per_s for r in points], marker="o", label=server)
                ax_p99.plot(xs, [r.p99_ms for r in points], marker="o", label=server)
        for parser, ls in zip(CEILINGS, ("--", ":"), strict=True):
            if tool == "wrk" and (ceiling := getattr(meta, f"{parser}_ceiling_rps")):
                ax_rps.axhline(ceiling, color="grey", ls=ls, label=f"{parser} ceiling (in memory)")
        connections = sorted({r.connections for r in mine})
        for ax, ylabel in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)")):
            if connections[-1] >= 10 * connections[0]:
                ax.set_xscale("log")
            ax.set_xticks(connections, [str(c) for c in connections])
            ax.minorticks_off()
            ax.set(xlabel="connections", ylabel=ylabel, ylim=(0, None))
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle(
            f"ringserve {meta.protocol} / {tool} -- kernel {meta.kernel}, "
            f"{meta.cpu_count} CPUs, {meta.duration_s} s per point",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(path := out_dir / f"{meta.protocol}_{tool}.png", dpi=110)
        plt.close(fig)
        written.append(path)
    return written
