"""The load generators `compare` drives, and how a generator run is measured.

`run_locust` runs Locust headless with this package's locustfile and the
workload's user (``--warmup-seconds`` discards the warm-up; Locust's latencies
are whole milliseconds below 100 ms, so on loopback its percentiles read 0 or
1 while ``avg_ms`` is exact); `run_wrk` runs wrk for HTTP ``GET /`` (or the
workload's path) after a separate warm-up run; `run_echo_client` the native
``loadtest/echo_bench.c`` or `loadtest.client`, which print the same JSON.
Each runs its generator with `run_generator`, which marks a `Window`
(snapshots of the server) at the edges of the generator's measured window,
so the server's counters cover exactly the window the generator reports on.
"""

from __future__ import annotations

import json
import math
import re
import resource
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from loadtest import ECHO_MESSAGE_BYTES, PROJECT_ROOT, WINDOW_END_MARKER, WINDOW_START_MARKER
from loadtest.servers import RunError, ServerSnapshot, kill, process_tree_cpu_times, pump, spawn

SLACK_S = 60.0  # beyond warm-up + duration: startup, connecting, shutting down


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One measurement: where, how hard, how long, and where the generator may run."""

    protocol: str  # "http" or "echo"
    host: str
    port: int
    connections: int
    duration_s: int
    warmup_s: float
    cpu_prefix: tuple[str, ...]  # e.g. ("taskset", "-c", "1"), or ()
    cpus: int  # CPUs the generator may use
    log_prefix: Path  # files of this run: <prefix>.wrk.log, Locust's CSV, ...
    path: str = "/"  # what wrk requests (HTTP)
    locust_user: str = ""  # the Locust user class ("": HttpAppUser, or EchoUser for echo)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What the generator measured in its window."""

    requests: int
    requests_per_s: float
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    client_cpu_util: float  # generator CPU seconds / (window x CPUs it may use)
    window_s: float


class Window:
    """The server's snapshots, and the generator's CPU seconds, at the window's two edges."""

    def __init__(self, snapshot: Callable[[], ServerSnapshot]) -> None:
        self.snapshot = snapshot
        self.before: ServerSnapshot | None = None
        self.after: ServerSnapshot | None = None
        self.edges: list[tuple[float, float]] = []  # (time.monotonic(), generator CPU s)

    def mark(self, cpu: float) -> None:
        """The window opens (the first call) or closes (the second)."""
        setattr(self, "after" if self.edges else "before", self.snapshot())
        self.edges.append((time.monotonic(), cpu))

    def cpu_util(self, cpus: int) -> float:
        (opened, cpu0), (closed, cpu1) = self.edges
        return max(0.0, cpu1 - cpu0) / ((closed - opened) * cpus) if closed > opened else 0.0


class LoadTool(NamedTuple):
    """A load generator: its name in results, and what runs it for one measurement."""

    name: str
    run: Callable[[LoadSpec, Window], ToolResult]


def children_cpu_s() -> float:
    """CPU seconds of every child this process has reaped so far."""
    return sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])


def run_generator(
    name: str, argv: Sequence[str], spec: LoadSpec, window: Window, log: Path, markers: bool
) -> tuple[int, str, str]:
    """Run a generator to completion, marking `window`; its status, stdout and stderr's tail.

    With `markers` the window is what it marks on stderr, and its CPU time its
    process tree's (psutil) there; without, its whole life and getrusage's
    RUSAGE_CHILDREN.  RunError if it times out, never opens its window, or
    the server fails.
    """
    out, tail, failed = [], deque[str](maxlen=30), []
    timeout = spec.warmup_s + spec.duration_s + SLACK_S

    def on_stderr(line: str) -> None:
        tail.append(line)
        log_file.write(line)
        edge = WINDOW_START_MARKER if not window.edges else WINDOW_END_MARKER
        if markers and len(window.edges) < 2 and edge in line:
            try:
                window.mark(sum(process_tree_cpu_times(proc.pid)))
            except RunError as exc:  # the server failed: stop the generator, report it
                failed.append(exc)
                kill(proc)

    with log.open("w") as log_file:
        if not markers:
            window.mark(children_cpu_s())
        proc = spawn(argv)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [pump(proc.stdout, out.append), pump(proc.stderr, on_stderr)]
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RunError(f"{name} did not finish within {timeout:.0f} s") from None
        finally:
            kill(proc)
            for reader in readers:
                reader.join(5)
    if failed:
        raise failed[0]
    if not window.edges:
        why = "".join(list(tail)[-8:]).strip()
        raise RunError(f"{name} exited with status {proc.returncode} before its window:\n{why}")
    if len(window.edges) == 1:  # exited without the end marker (or has none): close at exit
        window.mark(0.0 if markers else children_cpu_s())
    return proc.returncode, "".join(out), "".join(tail)


def run_command(name: str, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run a command to completion; returns its status, stdout and stderr."""
    proc = spawn(argv)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunError(f"{name} did not finish within {timeout:.0f} s") from None
    finally:
        kill(proc)
    return proc.returncode, out, err


def run_locust(spec: LoadSpec, window: Window) -> ToolResult:
    """Locust headless, one process, ``-u N -r N``; validating users."""
    users, prefix = str(spec.connections), f"{spec.log_prefix}.locust"
    url, user = f"tcp://{spec.host}:{spec.port}", spec.locust_user or "EchoUser"
    if spec.protocol == "http":
        url, user = f"http://{spec.host}:{spec.port}", spec.locust_user or "HttpAppUser"
    # Locust's -t takes whole seconds: round the warm-up up, so the
    # window after it is exactly the duration.
    warmup = math.ceil(spec.warmup_s)
    argv = [
        *spec.cpu_prefix, sys.executable, "-m", "locust",
        "-f", str(PROJECT_ROOT / "loadtest" / "locustfile.py"), "--headless",
        "-u", users, "-r", users, "-t", f"{warmup + spec.duration_s}s",
        "--warmup-seconds", str(warmup), "--host", url,
        "--csv", prefix, "--json-file", prefix, "--only-summary", user,
    ]  # fmt: skip
    status, _, tail = run_generator("locust", argv, spec, window, Path(f"{prefix}.log"), True)
    json_path = Path(f"{prefix}.json")
    if status not in (0, 1) or not json_path.exists():  # 1: some requests failed
        raise RunError(f"locust exited with status {status}:\n{tail[-2000:].strip()}")
    stats = summarize_locust(json.loads(json_path.read_text()))
    return ToolResult(**stats, client_cpu_util=window.cpu_util(spec.cpus))


def locust_percentile(histogram: dict[float, int], fraction: float) -> float:
    """Nearest-rank percentile of Locust's response-time histogram (ms -> count)."""
    rank = max(1, math.ceil(fraction * sum(histogram.values())))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return 0.0


def summarize_locust(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate Locust's ``--json-file`` entries (its CSV can miss the last second)."""
    requests = sum(int(e["num_requests"]) for e in entries)
    histogram: dict[float, int] = {}
    for entry in entries:
        for value, count in entry["response_times"].items():
            histogram[float(value)] = histogram.get(float(value), 0) + int(count)
    starts = [e["start_time"] for e in entries if e.get("start_time")]
    ends = [e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")]
    window = (max(ends) - min(starts)) if starts and ends else 0.0
    timed = requests - sum(int(e.get("num_none_requests", 0)) for e in entries)
    return {
        "requests": requests,
        "requests_per_s": requests / window if window > 0 else 0.0,
        "avg_ms": sum(float(e["total_response_time"]) for e in entries) / timed if timed else 0.0,
        **{f"p{p}_ms": locust_percentile(histogram, p / 100) for p in (50, 90, 99)},
        "errors": sum(int(e["num_failures"]) for e in entries),
        "window_s": window,
    }


def run_wrk(wrk: str, spec: LoadSpec, window: Window) -> ToolResult:
    """``wrk -t<T> -c<C> -d<D>s --latency``, GET `spec.path`; warm-up as a separate run."""
    threads = max(1, min(spec.cpus, spec.connections))

    def argv(seconds: int) -> list[str]:
        return [
            *spec.cpu_prefix, wrk, f"-t{threads}", f"-c{spec.connections}", f"-d{seconds}s",
            "--timeout", "10s", "--latency", f"http://{spec.host}:{spec.port}{spec.path}",
        ]  # fmt: skip

    if spec.warmup_s > 0:  # wrk takes whole seconds
        run_command("wrk (warm-up)", argv(math.ceil(spec.warmup_s)), spec.warmup_s + SLACK_S)
    log = Path(f"{spec.log_prefix}.wrk.log")
    status, out, tail = run_generator("wrk", argv(spec.duration_s), spec, window, log, False)
    log.write_text(out + tail)
    if status != 0:
        raise RunError(f"wrk exited with status {status}: {tail.strip()}")
    return ToolResult(**parse_wrk(out), client_cpu_util=window.cpu_util(spec.cpus))


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency (ms) and errors (socket errors, non-2xx/3xx) from ``wrk --latency``.

    RunError if the output lacks the summary lines.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", output, re.M)
    avg = re.search(r"^\s*Latency\s+(\S+)", output, re.M)
    if rps is None or total is None or avg is None:
        raise RunError(f"cannot read wrk's output:\n{output.strip()}")
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.M)}
    counts = re.findall(r"(?:connect|read|write|timeout|Non-2xx or 3xx responses:) (\d+)", output)
    return {
        "requests": int(total.group(1)),
        "requests_per_s": float(rps.group(1)),
        "avg_ms": _ms(avg.group(1)),
        **{f"p{p}_ms": pct.get(p, 0.0) for p in (50, 90, 99)},
        "errors": sum(map(int, counts)),
        "window_s": _ms(total.group(2)) / 1000,
    }


def run_echo_client(
    pipeline: int, binary: str | None, spec: LoadSpec, window: Window
) -> ToolResult:
    """The echo saturation client: the native one (`binary`) or `loadtest.client`.

    A Python client runs out of CPU at about the rate a Python server serves
    (both near 150k msgs/s here); the C one uses well under one CPU where the
    server uses all of its own, so it is the default.
    """
    where = [spec.host, str(spec.port), str(spec.connections)]
    argv = [*spec.cpu_prefix, str(binary), *where, str(spec.duration_s), str(spec.warmup_s)]
    if binary is None:
        argv = [
            *spec.cpu_prefix, sys.executable, "-m", "loadtest.client", "--protocol", "echo",
            "--host", spec.host, "--port", str(spec.port), "--connections", where[2],
            "--duration", str(spec.duration_s), "--warmup", str(spec.warmup_s),
            "--processes", str(max(1, min(spec.cpus, spec.connections))),
            "--size", str(ECHO_MESSAGE_BYTES), "--pipeline", str(pipeline),
        ]  # fmt: skip
    log = Path(f"{spec.log_prefix}.echo-client.log")
    status, out, tail = run_generator("the echo client", argv, spec, window, log, True)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if status != 0 or not lines:
        raise RunError(f"the echo client exited with status {status}:\n{tail.strip()}")
    s = json.loads(lines[-1])
    return ToolResult(
        s["messages"], s["messages_per_s"], s["avg_ms"], s["p50_ms"], s["p90_ms"],
        s["p99_ms"], s["errors"],
        # Its own count: the workers' CPU over the window, per process.
        client_cpu_util=s["cpu_util"] * s["processes"] / spec.cpus,
        window_s=s["duration_s"],
    )  # fmt: skip
