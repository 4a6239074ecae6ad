"""Soak test: steady load for a long time, watching the server's RSS and fds.

``python -m loadtest.soak --backend uring|epoll|both --duration 600 --connections 32
--protocol http|echo --out DIR``

Per backend: a warm-up with `loadtest.client --churn` (connections that
reconnect every few dozen requests, half of the time by ``Connection:
close``), then the baseline RSS and fds once no connection is open, then
``--duration`` seconds of load, then the same once the clients are gone:
RSS at most ``--rss-tolerance`` (5%) above the baseline, the fds exactly
the baseline, and after SIGTERM exit 0 with nothing open or in flight.  Any
client error, server log line at ERROR or above, accept error, timeout or
refused request fails it too.  RSS, fds, the server's counters and the
client's totals are sampled every second into ``DIR/samples-<backend>.csv``
and ``.json``, plotted in ``DIR/soak.png``; the verdicts go to
``DIR/summary.json``, and the exit status is 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest import non_negative_float
from loadtest.results import write_csv, write_json
from loadtest.servers import ServerProcess, server_argv
from server.config import positive_float, positive_int

SETTLE_TIMEOUT_S = 15.0
SAMPLE_INTERVAL_S = 1.0


class LoadClient(ServerProcess):
    """`loadtest.client` as a child, ready at once; `events` holds its last progress line."""

    def _ready(self) -> bool:
        return True


@dataclass(slots=True)
class Sample:
    t_s: float
    phase: str
    rss_kib: int
    fds: int
    open_connections: int
    requests: int
    accepted: int
    client_ops: int
    client_errors: int


@dataclass(slots=True)
class Result:
    backend: str
    protocol: str
    connections: int
    warmup_s: float
    duration_s: float
    baseline_rss_kib: int = 0
    baseline_fds: int = 0
    final_rss_kib: int = 0
    final_fds: int = 0
    peak_rss_kib: int = 0
    rss_drift_pct: float = 0.0
    client_ops: int = 0
    client_ops_per_s: float = 0.0
    client_connections: int = 0
    client_errors: int = 0
    client_error_samples: list[str] = field(default_factory=list)
    server_error_lines: list[str] = field(default_factory=list)
    server_stats: dict[str, Any] = field(default_factory=dict)
    exit_status: int | None = None
    exit_stats: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


class Soak:
    """One backend's soak run; see the module docstring."""

    def __init__(self, args: argparse.Namespace, backend: str) -> None:
        self.args, self.backend, self.phase, self.started = args, backend, "start", 0.0
        self.result = Result(backend, args.protocol, args.connections, args.warmup, args.duration)
        self.server = ServerProcess(server_argv(backend, args.protocol, ["--log-level", "info"]))
        self.client: LoadClient | None = None
        self._stats: dict[str, Any] = {}

    def log(self, text: str) -> None:
        print(f"[soak {self.backend}] {text}", file=sys.stderr, flush=True)

    def sample(self) -> Sample:
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            self._stats = self.server.stats()
        st, client = self._stats, self.client.events.get("progress", {}) if self.client else {}
        s = Sample(round(time.monotonic() - self.started, 3), self.phase, self.server.rss_kib(),
                   self.server.fds(), int(st.get("open_connections", -1)),
                   int(st.get("requests", 0)), int(st.get("accepted", 0)),
                   int(client.get("messages", 0)), int(client.get("errors", 0)))  # fmt: skip
        self.result.samples.append(s)
        return s

    def run_client(self, phase: str, duration: float) -> dict[str, Any]:
        """Load for `duration` s, sampling every second; returns the client's summary."""
        self.phase = phase
        host, port = self.server.address
        argv = [sys.executable, "-m", "loadtest.client", "--protocol", self.args.protocol,
                "--host", host, "--port", str(port), "--connections", str(self.args.connections),
                "--duration", str(duration), "--warmup", "0", "--churn", "--progress"]  # fmt: skip
        with LoadClient(argv) as client:
            self.client, next_sample = client, time.monotonic()
            while client.proc is not None and client.proc.poll() is None:
                if time.monotonic() >= next_sample:
                    self.sample()
                    next_sample += SAMPLE_INTERVAL_S
                time.sleep(0.05)
            client.wait(60)
        self.client = None
        if (done := client.events.get("done")) is None:
            why = f"the client exited with status {client.proc and client.proc.returncode}"
            return {"errors": 1, "error_samples": [f"{why}: {''.join(client.stderr_lines[-3:])}"]}
        return done

    def settle(self, phase: str) -> Sample:
        """Wait until the server has no connection open; then one more second."""
        self.phase = phase
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while (s := self.sample()).open_connections != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        if s.open_connections != 0:
            self.result.failures.append(
                f"{s.open_connections} connections still open {SETTLE_TIMEOUT_S} s "
                f"after the clients left ({phase})"
            )
        time.sleep(SAMPLE_INTERVAL_S)
        return self.sample()

    def run(self) -> Result:
        r = self.result
        warm: dict[str, Any] = {}
        totals: dict[str, Any] = {}
        try:
            self.server.start()
            self.started = time.monotonic()
            self.log(f"server pid {self.server.pid} on {self.server.address}")
            self.sample()
            warm = self.run_client("warmup", self.args.warmup)
            base = self.settle("baseline")
            r.baseline_rss_kib, r.baseline_fds = base.rss_kib, base.fds
            self.log(f"baseline after warm-up: RSS {base.rss_kib} KiB, {base.fds} fds")
            totals = self.run_client("load", self.args.duration)
            end = self.settle("end")
            r.final_rss_kib, r.final_fds = end.rss_kib, end.fds
            r.server_stats = dict(self._stats)
            self.phase = "stop"
            # Not stop(), which kills a server still running after the timeout and
            # returns that status: here a server that does not exit aborts the soak.
            self.server.signal(signal.SIGTERM)
            r.exit_status = self.server.wait(30.0)
            r.exit_stats = self.server.exit_stats
        except Exception as exc:  # report, do not crash: the other backend still runs
            r.failures.append(f"soak aborted: {exc!r}")
        finally:
            self.server.kill()
        r.client_ops = int(totals.get("messages", 0))
        r.client_ops_per_s = round(r.client_ops / self.args.duration, 1)
        r.client_connections = int(totals.get("connections_opened", 0))
        r.client_errors = int(totals.get("errors", 0)) + int(warm.get("errors", 0))
        r.client_error_samples = [*warm.get("error_samples", []), *totals.get("error_samples", [])]
        r.server_error_lines = self.server.error_lines()[:20]
        r.peak_rss_kib = max((s.rss_kib for s in r.samples), default=0)
        if r.baseline_rss_kib:
            r.rss_drift_pct = round(100.0 * (r.final_rss_kib / r.baseline_rss_kib - 1.0), 2)
        if not (r.failures and r.failures[0].startswith("soak aborted")):
            self.check()
        return r

    def check(self) -> None:
        r, f = self.result, self.result.failures
        limit = 1.0 + self.args.rss_tolerance
        if r.final_rss_kib > r.baseline_rss_kib * limit:
            f.append(
                f"RSS grew {r.rss_drift_pct}% ({r.baseline_rss_kib} -> {r.final_rss_kib} KiB), "
                f"over {self.args.rss_tolerance:.0%}"
            )
        if r.final_fds != r.baseline_fds:
            f.append(f"open fds {r.baseline_fds} at baseline but {r.final_fds} at the end")
        if r.client_errors:
            f.append(f"{r.client_errors} client errors: {r.client_error_samples[:5]}")
        if r.client_ops == 0:
            f.append("the client completed no request")
        if r.server_error_lines:
            f.append(f"server logged errors: {r.server_error_lines[:5]}")
        stats = r.server_stats
        for key in ("accept_errors", "client_errors", "app_errors", "internal_errors", "timeouts"):
            if stats.get(key):
                f.append(f"server {key} = {stats[key]}")
        if r.exit_status != 0:
            f.append(f"server exit status {r.exit_status}")
        ex = r.exit_stats or {}
        if ex.get("open_connections") != 0 or ex.get("ops_in_flight") != 0:
            f.append(f"exit line not clean: {ex or 'missing'}")


def write_outputs(out: Path, results: list[Result]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        write_csv(out / f"samples-{r.backend}.csv", [asdict(s) for s in r.samples])
        write_json(out / f"samples-{r.backend}.json", asdict(r))
    backends = {r.backend: {k: v for k, v in asdict(r).items() if k != "samples"} for r in results}
    summary = {"passed": all(r.passed for r in results), "backends": backends}
    write_json(out / "summary.json", summary)
    plot(out / "soak.png", results)


def plot(path: Path, results: list[Result]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_fds) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    for r in results:
        t = [s.t_s for s in r.samples]
        (line,) = ax_rss.plot(t, [s.rss_kib / 1024 for s in r.samples], label=r.backend)
        ax_fds.plot(t, [s.fds for s in r.samples], label=r.backend, color=line.get_color())
        if r.baseline_rss_kib:
            ax_rss.axhline(r.baseline_rss_kib / 1024, color=line.get_color(), ls=":", lw=0.8)
            ax_fds.axhline(r.baseline_fds, color=line.get_color(), ls=":", lw=0.8)
    ax_rss.set(ylabel="server RSS (MiB)", title="ringserve soak (dotted: baseline after warm-up)")
    ax_fds.set(ylabel="server open fds", xlabel="time since server start (s)")
    ax_rss.legend()
    for ax in (ax_rss, ax_fds):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(results: list[Result]) -> None:
    for r in results:  # one line per backend, then its failures
        verdict = "PASS" if r.passed else "FAIL"
        print(
            f"{r.backend:5} {r.protocol}: {verdict}  RSS baseline {r.baseline_rss_kib} KiB, "
            f"end {r.final_rss_kib} KiB ({r.rss_drift_pct:+.2f}%), peak {r.peak_rss_kib} KiB; "
            f"fds baseline {r.baseline_fds}, end {r.final_fds}; "
            f"{r.client_ops} ops ({r.client_ops_per_s}/s) over {r.client_connections} "
            f"connections, {r.client_errors} client errors; {len(r.samples)} samples"
        )
        for failure in r.failures:
            print(f"      - {failure}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m loadtest.soak", description=__doc__.split("\n")[0])
    # fmt: off
    p.add_argument("--backend", choices=["uring", "epoll", "both"], default="both")
    p.add_argument("--protocol", choices=["http", "echo"], default="http")
    p.add_argument("--duration", type=positive_float, default=600.0, help="seconds of load (600)")
    p.add_argument("--warmup", type=positive_float, help="seconds of warm-up (10%% of the "
                   "duration, 5-60)")
    p.add_argument("--connections", type=positive_int, default=32, help="client connections (32)")
    p.add_argument("--out", type=Path, help="output directory (soak-<time>)")
    p.add_argument("--rss-tolerance", type=non_negative_float, default=0.05,
                   help="allowed RSS growth (0.05 = 5%%)")
    # fmt: on
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(60.0, max(5.0, args.duration / 10))
    out = args.out or Path(f"soak-{time.strftime('%Y%m%d-%H%M%S')}")
    backends = ["epoll", "uring"] if args.backend == "both" else [args.backend]
    results = [Soak(args, backend).run() for backend in backends]
    write_outputs(out, results)
    print_summary(results)
    print(f"samples, summary and plot in {out}/")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
