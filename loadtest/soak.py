"""Soak test: steady load for a long time, watching the server's RSS and fds.

``python -m loadtest.soak --backend uring|epoll|both --duration 600 --connections 32
--protocol http|echo --out DIR``

For each backend it starts ``python -m server`` as a child process
(`loadtest.procs.local_server`), and:

1. warm-up: runs the load client (another child process) for ``--warmup``
   seconds, then lets every connection close;
2. baseline: once the server reports no open connection, records its RSS
   (``VmRSS`` in ``/proc/PID/status``) and its open fds (``/proc/PID/fd``);
3. steady load for ``--duration`` seconds: ``--connections`` keep-alive
   connections, each sending requests (``GET /``, ``POST /echo`` with a
   random body, checked byte for byte) or echo messages back to back, and
   reconnecting every few dozen requests, half of the time by asking the
   server to close (``Connection: close``), half by closing itself;
4. end: once the clients are gone and the server reports no open
   connection, checks that RSS is at most ``--rss-tolerance`` (5%) above the
   baseline and the fd count is exactly the baseline; then SIGTERM, and the
   server must exit 0 with ``open_connections`` and ``ops_in_flight`` 0 in
   its exit line.

The server's RSS, fds and counters (read with SIGUSR1) are sampled every
second throughout.  Any client error (reset, timeout, wrong byte), any
server log line at ERROR or above, any accept error, timeout or protocol
error (the client only sends valid requests) fails the run.  The samples go
to ``DIR/samples-<backend>.csv`` and ``.json``, a plot of RSS and fds over
time to ``DIR/soak.png``, and the verdicts to ``DIR/summary.json``.  Exits 0
when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from loadtest import PROJECT_ROOT
from loadtest.procs import local_server

SETTLE_TIMEOUT_S = 15.0
SAMPLE_INTERVAL_S = 1.0
CLIENT_IO_TIMEOUT_S = 10.0
MAX_CLIENT_ERRORS = 100  # the client stops early after this many
HELLO = b"Hello from ringserve\n"
ECHO_MESSAGE_BYTES = 64


# -- the load client (runs in its own process) ----------------------------------


@dataclass(slots=True)
class ClientTotals:
    ops: int = 0  # requests answered (http) or messages echoed, each checked
    connections: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


class _Conn:
    __slots__ = (
        "buf",
        "close_after",
        "expect",
        "last_io",
        "left",
        "phase",
        "sock",
        "want",
    )

    def __init__(self, sock: socket.socket, ops: int) -> None:
        self.sock = sock
        self.left = ops  # requests before this connection is closed
        self.phase = "connect"  # connect -> recv (-> eof) -> ...
        self.buf = bytearray()
        self.want = b""  # the expected response body or echo
        self.expect = 0  # echo: bytes still to come back
        self.close_after = False  # the last request asked for Connection: close
        self.last_io = time.monotonic()


class LoadClient:
    """Keep-alive connections doing checked request/response pairs, back to back."""

    def __init__(
        self, address: tuple[str, int], protocol: str, connections: int, seed: int = 1
    ) -> None:
        self.address = address
        self.protocol = protocol
        self.connections = connections
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.totals = ClientTotals()
        self.conns: set[_Conn] = set()
        self.stopping = False

    def _error(self, conn: _Conn | None, why: str) -> None:
        self.totals.errors += 1
        if len(self.totals.error_samples) < 20:
            self.totals.error_samples.append(why)
        if conn is not None:
            self._drop(conn)

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._error(None, f"connect: {os.strerror(err)}")
            return
        conn = _Conn(sock, self.rng.randint(20, 200))
        self.conns.add(conn)
        self.totals.connections += 1
        self.sel.register(sock, selectors.EVENT_WRITE, conn)

    def _drop(self, conn: _Conn) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            self.sel.unregister(conn.sock)
            conn.sock.close()

    def _next_request(self, conn: _Conn) -> bytes:
        conn.left -= 1
        last = conn.left <= 0
        if self.protocol == "echo":
            msg = self.rng.randbytes(ECHO_MESSAGE_BYTES)
            conn.want = msg
            return msg
        conn.close_after = last and self.rng.random() < 0.5
        extra = b"Connection: close\r\n" if conn.close_after else b""
        if self.rng.random() < 0.5:
            conn.want = HELLO
            return b"GET / HTTP/1.1\r\nHost: soak\r\n" + extra + b"\r\n"
        body = self.rng.randbytes(self.rng.randint(0, 2048))
        conn.want = body
        return b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n%s\r\n%s" % (
            len(body),
            extra,
            body,
        )

    def _send_next(self, conn: _Conn) -> None:
        data = self._next_request(conn)
        try:
            n = conn.sock.send(data)
        except OSError as exc:
            self._error(conn, f"send: {exc}")
            return
        if n != len(data):  # requests are small; a short send here is a surprise
            self._error(conn, f"short send of {n}/{len(data)} bytes")
            return
        conn.phase = "recv"
        conn.buf.clear()
        conn.last_io = time.monotonic()
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _response_done(self, conn: _Conn) -> bool | None:
        """True: a whole, correct response; None: need more; False: wrong (reported)."""
        buf = conn.buf
        if self.protocol == "echo":
            if len(buf) < len(conn.want):
                return None
            if bytes(buf) != conn.want:
                self._error(conn, "echo mismatch")
                return False
            return True
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).split(b"\r\n")
        if not head[0].startswith(b"HTTP/1.1 200 "):
            self._error(conn, f"status line {head[0][:80]!r}")
            return False
        length = -1
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length < 0:
            self._error(conn, "no content-length")
            return False
        if len(buf) < end + 4 + length:
            return None
        if bytes(buf[end + 4 :]) != conn.want:
            self._error(conn, "wrong body or extra bytes")
            return False
        return True

    def _on_event(self, conn: _Conn, mask: int) -> None:
        sock = conn.sock
        if conn.phase == "connect":
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._error(conn, f"connect: {os.strerror(err)}")
            elif self.stopping:
                self._drop(conn)
            else:
                self._send_next(conn)
            return
        try:
            data = sock.recv(65536)
        except OSError as exc:
            self._error(conn, f"recv: {exc}")
            return
        conn.last_io = time.monotonic()
        if conn.phase == "eof":
            if data:
                self._error(conn, "bytes after a Connection: close response")
            else:
                self._drop(conn)
            return
        if not data:
            self._error(conn, "unexpected EOF")
            return
        conn.buf += data
        done = self._response_done(conn)
        if not done:
            return
        self.totals.ops += 1
        if self.stopping and not conn.close_after:
            self._drop(conn)  # winding down: no next request
        elif conn.close_after:
            conn.phase = "eof"  # the server closes; wait for its EOF
        elif conn.left <= 0:
            if self.protocol == "echo":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                conn.phase = "eof"  # the echo server closes on our EOF
            else:
                self._drop(conn)
        else:
            self._send_next(conn)

    def run(self, duration: float, progress: IO[str] | None = None) -> ClientTotals:
        start = time.monotonic()
        end = start + duration
        next_report = start + 1.0
        while True:
            now = time.monotonic()
            if now >= end and not self.stopping:
                # Let the requests in flight finish, so none is cut off.
                self.stopping = True
                end = now + CLIENT_IO_TIMEOUT_S
            if self.stopping and (not self.conns or now >= end):
                break
            while not self.stopping and len(self.conns) < self.connections:
                self._open()
            for key, mask in self.sel.select(0.1):
                self._on_event(key.data, mask)
            now = time.monotonic()
            for conn in [c for c in self.conns if now - c.last_io > CLIENT_IO_TIMEOUT_S]:
                self._error(conn, f"no progress for {CLIENT_IO_TIMEOUT_S} s ({conn.phase})")
            if self.totals.errors >= MAX_CLIENT_ERRORS:
                self.totals.error_samples.append(f"gave up after {self.totals.errors} errors")
                break
            if progress is not None and now >= next_report:
                next_report += 1.0
                line = {"event": "progress", "t": round(now - start, 3), **asdict(self.totals)}
                line.pop("error_samples")
                print(json.dumps(line), file=progress, flush=True)
        self.close_all()
        return self.totals

    def close_all(self) -> None:
        for conn in list(self.conns):
            self._drop(conn)
        self.sel.close()


def client_main(address: str, protocol: str, connections: int, duration: float) -> int:
    host, _, port = address.rpartition(":")
    client = LoadClient((host, int(port)), protocol, connections, seed=os.getpid())
    totals = client.run(duration, progress=sys.stdout)
    print(json.dumps({"event": "done", **asdict(totals)}), flush=True)
    return 0


class ClientProcess:
    """The load client as a child process; its JSON lines are read in a thread."""

    def __init__(
        self, address: tuple[str, int], protocol: str, connections: int, duration: float
    ) -> None:
        self.duration = duration
        self.latest: dict[str, Any] = {}
        self.done: dict[str, Any] | None = None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtest.soak",
                "--client-of",
                f"{address[0]}:{address[1]}",
                "--protocol",
                protocol,
                "--connections",
                str(connections),
                "--duration",
                str(duration),
            ],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == "done":
                        self.done = record
                    else:
                        self.latest = record

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reader.join(5)
        if self.done is None:
            return {"ops": 0, "errors": 1, "error_samples": ["the client did not finish"]}
        return self.done

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# -- the soak -----------------------------------------------------------------------


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
        self.args = args
        self.backend = backend
        self.result = Result(backend, args.protocol, args.connections, args.warmup, args.duration)
        self.server = local_server(backend, args.protocol, ["--log-level", "info"])
        self.started = 0.0
        self.client: ClientProcess | None = None
        self.phase = "start"
        self._stats: dict[str, Any] = {}

    def log(self, text: str) -> None:
        print(f"[soak {self.backend}] {text}", file=sys.stderr, flush=True)

    def sample(self) -> Sample:
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            self._stats = self.server.stats()
        client = self.client.latest if self.client is not None else {}
        s = Sample(
            t_s=round(time.monotonic() - self.started, 3),
            phase=self.phase,
            rss_kib=self.server.rss_kib(),
            fds=self.server.fds(),
            open_connections=int(self._stats.get("open_connections", -1)),
            requests=int(self._stats.get("requests", 0)),
            accepted=int(self._stats.get("accepted", 0)),
            client_ops=int(client.get("ops", 0)),
            client_errors=int(client.get("errors", 0)),
        )
        self.result.samples.append(s)
        return s

    def run_client(self, phase: str, duration: float) -> dict[str, Any]:
        """Load for `duration` s, sampling every second; returns the client's totals."""
        self.phase = phase
        self.client = ClientProcess(
            self.server.address, self.args.protocol, self.args.connections, duration
        )
        next_sample = time.monotonic()
        while self.client.running():
            if time.monotonic() >= next_sample:
                self.sample()
                next_sample += SAMPLE_INTERVAL_S
            time.sleep(0.05)
        totals = self.client.finish()
        self.client = None
        return totals

    def settle(self, phase: str) -> Sample:
        """Wait until the server has no connection open; then one more second."""
        self.phase = phase
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            s = self.sample()
            if s.open_connections == 0 or time.monotonic() > deadline:
                break
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
            self.server.kill()
            if self.client is not None:
                self.client.kill()
        r.client_ops = int(totals.get("ops", 0))
        r.client_ops_per_s = round(r.client_ops / self.args.duration, 1)
        r.client_connections = int(totals.get("connections", 0))
        r.client_errors = int(totals.get("errors", 0)) + int(warm.get("errors", 0))
        r.client_error_samples = list(warm.get("error_samples", [])) + list(
            totals.get("error_samples", [])
        )
        r.server_error_lines = self.server.error_lines()[:20]
        r.peak_rss_kib = max((s.rss_kib for s in r.samples), default=0)
        if r.baseline_rss_kib:
            r.rss_drift_pct = round(100.0 * (r.final_rss_kib / r.baseline_rss_kib - 1.0), 2)
        self.check()
        return r

    def check(self) -> None:
        r, f = self.result, self.result.failures
        if f and f[0].startswith("soak aborted"):
            return
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
    columns = list(Sample.__dataclass_fields__)
    for r in results:
        with (out / f"samples-{r.backend}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for s in r.samples:
                w.writerow([getattr(s, c) for c in columns])
        (out / f"samples-{r.backend}.json").write_text(json.dumps(asdict(r), indent=1) + "\n")
    summary = {
        "passed": all(r.passed for r in results),
        "backends": {
            r.backend: {k: v for k, v in asdict(r).items() if k != "samples"} for r in results
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
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
    ax_rss.set_ylabel("server RSS (MiB)")
    ax_fds.set_ylabel("server open fds")
    ax_fds.set_xlabel("time since server start (s)")
    ax_rss.set_title("ringserve soak (dotted: baseline after warm-up)")
    ax_rss.legend()
    ax_rss.grid(alpha=0.3)
    ax_fds.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(results: list[Result]) -> None:
    for r in results:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.soak",
        description="Soak the server under steady load; check RSS and fds return to baseline.",
    )
    p.add_argument("--backend", choices=["uring", "epoll", "both"], default="both")
    p.add_argument("--protocol", choices=["http", "echo"], default="http")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    p.add_argument(
        "--warmup", type=float, default=None, help="seconds of warm-up (10%% of duration, 5-60)"
    )
    p.add_argument("--connections", type=int, default=32, help="client connections (32)")
    p.add_argument("--out", type=Path, default=None, help="output directory (soak-<time>)")
    p.add_argument(
        "--rss-tolerance", type=float, default=0.05, help="allowed RSS growth (0.05 = 5%%)"
    )
    p.add_argument("--client-of", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.client_of:
        return client_main(args.client_of, args.protocol, args.connections, args.duration)
    if args.duration <= 0 or args.connections < 1:
        print("soak: --duration and --connections must be positive", file=sys.stderr)
        return 2
    if args.warmup is None:
        args.warmup = min(60.0, max(5.0, args.duration / 10))
    out = args.out or Path(f"soak-{time.strftime('%Y%m%d-%H%M%S')}")
    backends = ["epoll", "uring"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        soak = Soak(args, backend)
        try:
            results.append(soak.run())
        finally:
            soak.server.kill()
            if soak.client is not None:
                soak.client.kill()
    write_outputs(out, results)
    print_summary(results)
    print(f"samples, summary and plot in {out}/")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
