"""Side-by-side tables and plots of `results.Result` records.

Every server (our backends, and with ``compare --peers`` the peer servers) has
a column in each metric's group; metrics marked `ratio` also get a column per
other server with the base server's figure divided by that server's (the base
is uring when it ran, else the first server): ``u/e`` = uring / epoll, above
1 means uring's figure is higher.  With peers, columns are headed by short
names, spelled out under the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.results import Metadata, Result


@dataclass(frozen=True, slots=True)
class Metric:
    label: str
    value: Callable[[Result], float | int | None]
    fmt: str
    ratio: bool = False  # add base/other server columns
    counters: bool = False  # from the server's own counters: peers have none


THROUGHPUT = (
    Metric("req/s", lambda r: r.requests_per_s, "{:,.0f}", ratio=True),
    Metric("p50 ms", lambda r: r.p50_ms, "{:.2f}"),
    Metric("p90 ms", lambda r: r.p90_ms, "{:.2f}"),
    Metric("p99 ms", lambda r: r.p99_ms, "{:.2f}", ratio=True),
    Metric("errors", lambda r: r.errors, "{:d}"),
)
COST = (
    Metric("syscalls/req", lambda r: r.syscalls_per_request, "{:.2f}", ratio=True, counters=True),
    Metric("waits/req", lambda r: r.wait_calls_per_request, "{:.3f}", counters=True),
    Metric("server CPU us/req", lambda r: r.cpu_us_per_request, "{:.1f}", ratio=True),
    Metric("user us/req", lambda r: r.user_us_per_request, "{:.2f}"),
    Metric("sys us/req", lambda r: r.system_us_per_request, "{:.2f}"),
    Metric("server CPU %", lambda r: r.cpu_s / r.window_s * 100 if r.window_s else None, "{:.0f}"),
    Metric("peak RSS MiB", lambda r: r.peak_rss_kib / 1024, "{:.1f}"),
    Metric("client CPU %", lambda r: r.client_cpu_util * 100, "{:.0f}"),
)


def _cell(metric: Metric, result: Result | None) -> str:
    if result is None:
        return "-"
    value = metric.value(result)
    return "-" if value is None else metric.fmt.format(value)


def _ratio(metric: Metric, a: Result | None, b: Result | None) -> str:
    if a is None or b is None:
        return "-"
    x, y = metric.value(a), metric.value(b)
    # A zero (e.g. Locust's whole-millisecond p99 on loopback) makes no ratio.
    return "-" if not x or not y else f"{x / y:.2f}"


# Short names for column heads and ratio labels.
SHORT = {
    "uring": "u",
    "epoll": "e",
    "uvloop-h11": "uv-h11",
    "uvicorn": "uvicorn",
    "uvloop-echo": "uv-echo",
    "c-uring-echo": "c-echo",
}
OWN_BACKENDS = ("uring", "epoll")


def short(server: str) -> str:
    return SHORT.get(server, server)


def ratio_pairs(servers: Sequence[str]) -> list[tuple[str, str]]:
    """(base, other) for every other server; the base is uring if present, else the first."""
    if len(servers) < 2:
        return []
    base = "uring" if "uring" in servers else servers[0]
    return [(base, other) for other in servers if other != base]


def legend(servers: Sequence[str]) -> str:
    return "ratio columns: base/other; " + ", ".join(f"{short(s)} = {s}" for s in servers)


def render_table(
    title: str, results: Sequence[Result], servers: Sequence[str], metrics: Sequence[Metric]
) -> str:
    """One row per connection count; each metric gets a column per server.

    Metrics marked `ratio` also get a "base/other" column per other server
    (`ratio_pairs`), except where one side has no counters (a peer).  Only
    our two backends: heads are the backend names; with peers, short names.
    """
    by_key = {(r.connections, r.backend): r for r in results}
    heads_of = (lambda s: s) if set(servers) <= set(OWN_BACKENDS) else short
    counted = {
        s
        for s in servers
        if any(r.backend == s and r.syscalls_per_request is not None for r in results)
    }

    def pairs(metric: Metric) -> list[tuple[str, str]]:
        if not metric.ratio:
            return []
        every = ratio_pairs(servers)
        if metric.counters:
            every = [(a, b) for a, b in every if a in counted and b in counted]
        return every

    groups = [
        (m.label, [heads_of(s) for s in servers] + [f"{short(a)}/{short(b)}" for a, b in pairs(m)])
        for m in metrics
    ]
    rows = []
    for point in sorted({r.connections for r in results}):
        row = [str(point)]
        for metric in metrics:
            row += [_cell(metric, by_key.get((point, s))) for s in servers]
            row += [
                _ratio(metric, by_key.get((point, a)), by_key.get((point, b)))
                for a, b in pairs(metric)
            ]
        rows.append(row)
    heads = ["conns"] + [h for _, hs in groups for h in hs]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    _widen_for_labels(widths, groups)
    labels = [""] + [label for label, _ in groups]
    label_line = _join(labels, widths, groups, center=True)
    head_line = _join(heads, widths, groups)
    lines = [title, label_line, head_line, "-" * len(head_line)]
    lines += [_join(r, widths, groups) for r in rows]
    return "\n".join(lines)


def _widen_for_labels(widths: list[int], groups: Sequence[tuple[str, list[str]]]) -> None:
    """Widen each group's last column so the group's label fits above it."""
    col = 1
    for label, heads in groups:
        span = sum(widths[col : col + len(heads)]) + 2 * (len(heads) - 1)
        widths[col + len(heads) - 1] += max(0, len(label) - span)
        col += len(heads)


def _join(
    cells: Sequence[str],
    widths: Sequence[int],
    groups: Sequence[tuple[str, list[str]]],
    center: bool = False,
) -> str:
    """Cells right-aligned, two spaces apart, " | " between groups.

    With `center`, `cells` holds one label per group (after the first
    column) and each is centred over its group.
    """
    parts = [cells[0].rjust(widths[0])]
    col = 1
    for i, (_, heads) in enumerate(groups, start=1):
        span = widths[col : col + len(heads)]
        if center:
            parts.append(cells[i].center(sum(span) + 2 * (len(span) - 1)))
        else:
            chunk = zip(cells[col : col + len(heads)], span, strict=True)
            parts.append("  ".join(c.rjust(w) for c, w in chunk))
        col += len(heads)
    return " | ".join(parts)


def ceiling_lines(
    results: Sequence[Result], servers: Sequence[str], ceiling: float, end: float | None = None
) -> list[str]:
    """Per point: each server's requests/s as a share of the in-memory h11 ceiling.

    With `end` (the ceiling measured again after the runs) a share is a range
    over the two, lower first, unless they round to the same percentage.
    """
    other = ceiling if end is None else end
    ceilings = (max(ceiling, other), min(ceiling, other))
    measured = f"{ceiling:,.0f} req/s in memory"
    if end is not None:
        measured = f"{ceiling:,.0f} req/s in memory before the runs, {end:,.0f} after"

    def share(rps: float) -> str:
        low, high = (round(rps / c * 100) for c in ceilings)
        return f"{low}%" if low == high else f"{low}-{high}%"

    by_key = {(r.connections, r.backend): r for r in results}
    lines = []
    for point in sorted({r.connections for r in results}):
        shares = [
            (s, share(by_key[(point, s)].requests_per_s)) for s in servers if (point, s) in by_key
        ]
        if not shares:
            continue
        (first, pct), rest = shares[0], shares[1:]
        line = f"c={point}: {first} reaches {pct} of the h11 ceiling ({measured})"
        if rest:
            line += "; " + ", ".join(f"{s} {p}" for s, p in rest)
        lines.append(line)
    return lines


def tables(results: Sequence[Result], servers: Sequence[str], meta: Metadata) -> str:
    """Both tables (throughput and latency; cost per request) for every tool.

    After wrk's tables (HTTP ``GET /``), when the h11 ceiling was measured,
    a line per point with each server's share of it (uring first).
    """
    order = sorted(servers, key=lambda s: s != "uring")  # uring first, the rest as given
    out = []
    for tool in dict.fromkeys(r.tool for r in results):
        mine = [r for r in results if r.tool == tool]
        runs = max(r.runs for r in mine)
        head = (
            f"{meta.protocol} / {tool}: median of {runs} run(s), {meta.duration_s} s per point "
            f"after {meta.warmup_s:g} s warm-up"
        )
        throughput = render_table(head + " -- throughput and latency", mine, servers, THROUGHPUT)
        cost = render_table(head + " -- server cost", mine, servers, COST)
        if not set(servers) <= set(OWN_BACKENDS):
            throughput += "\n" + legend(servers)
            cost += (
                "\nsyscalls/req and waits/req come from our backends' counters (peers: -); "
                "a peer's CPU us/req is over the generator's count"
            )
        out += [throughput, cost]
        if tool == "wrk" and meta.h11_ceiling_rps:
            out.append(
                "\n".join(
                    ceiling_lines(mine, order, meta.h11_ceiling_rps, meta.h11_ceiling_end_rps)
                )
            )
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
            if not points:
                continue
            xs = [r.connections for r in points]
            ax_rps.plot(xs, [r.requests_per_s for r in points], marker="o", label=server)
            ax_p99.plot(xs, [r.p99_ms for r in points], marker="o", label=server)
        if tool == "wrk" and meta.h11_ceiling_rps:
            ax_rps.axhline(
                meta.h11_ceiling_rps, color="grey", linestyle="--", label="h11 ceiling (in memory)"
            )
        connections = sorted({r.connections for r in mine})
        for ax, ylabel in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)")):
            if connections[-1] >= 10 * connections[0]:
                ax.set_xscale("log")
            ax.set_xticks(connections, [str(c) for c in connections])
            ax.minorticks_off()
            ax.set_xlabel("connections")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle(
            f"ringserve {meta.protocol} / {tool} -- kernel {meta.kernel}, "
            f"{meta.cpu_count} CPUs, {meta.duration_s} s per point",
            fontsize=10,
        )
        fig.tight_layout()
        path = out_dir / f"{meta.protocol}_{tool}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
