"""The load generators `compare` drives, behind one small interface.

- `LocustTool`: Locust headless with this package's locustfile (validating
  users; ``--warmup-seconds`` discards the warm-up, rounded up to whole
  seconds as Locust's ``-t`` counts them).  Locust's latencies are
  whole milliseconds below 100 ms (its histogram's buckets), so on loopback
  its percentiles read 0 or 1; ``avg_ms`` is exact.
- `WrkTool`: wrk for HTTP, ``GET /``, a separate warm-up run first (whole
  seconds too).
- `EchoClientTool`: `loadtest.echo_client`, the ping-pong saturation client.

Each returns a `ToolResult` and calls the window hooks around its measured
window, so `compare` reads the server's counters over the same window.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loadtest import ECHO_MESSAGE_BYTES, PROJECT_ROOT
from loadtest.procs import GeneratorError, GeneratorRun, WindowHooks, run_generator, run_quietly

LOCUSTFILE = PROJECT_ROOT / "loadtest" / "locustfile.py"
# Beyond warm-up + duration: startup, connecting, shutting down.
SLACK_S = 60.0


@dataclass(frozen=True, slots=True)
class Target:
    protocol: str  # "http" or "echo"
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One measurement: how hard, how long, and where the generator may run."""

    connections: int
    duration_s: int
    warmup_s: float
    cpu_prefix: tuple[str, ...]  # e.g. ("taskset", "-c", "1"), or ()
    cpus: int  # CPUs the generator may use
    log_prefix: Path  # files of this run: <prefix>.tool.log, Locust's CSV, ...


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


class LoadTool(Protocol):
    name: str

    def run(self, target: Target, spec: LoadSpec, hooks: WindowHooks) -> ToolResult: ...


def _cpu_util(run: GeneratorRun, spec: LoadSpec) -> float:
    return run.cpu_s / (run.window_s * spec.cpus) if run.window_s > 0 else 0.0


# -- Locust --------------------------------------------------------------------


class LocustTool:
    """Locust headless, one process, ``-u N -r N``; validating users."""

    name = "locust"

    def run(self, target: Target, spec: LoadSpec, hooks: WindowHooks) -> ToolResult:
        users = str(spec.connections)
        prefix = str(spec.log_prefix) + ".locust"
        if target.protocol == "http":
            url, user_class = f"http://{target.host}:{target.port}", "HttpAppUser"
        else:
            url, user_class = f"tcp://{target.host}:{target.port}", "EchoUser"
        # Locust's -t takes whole seconds: round the warm-up up, so the
        # window after it is exactly the duration.
        warmup = math.ceil(spec.warmup_s)
        run_time = warmup + spec.duration_s
        argv = [
            *spec.cpu_prefix,
            sys.executable, "-m", "locust",
            "-f", str(LOCUSTFILE),
            "--headless", "-u", users, "-r", users, "-t", f"{run_time}s",
            "--warmup-seconds", str(warmup),
            "--host", url,
            "--csv", prefix, "--json-file", prefix, "--only-summary",
            user_class,
        ]  # fmt: skip
        run = run_generator(
            "locust",
            argv,
            PROJECT_ROOT,
            hooks,
            Path(prefix + ".log"),
            timeout=run_time + SLACK_S,
            markers=True,
        )
        json_path = Path(prefix + ".json")
        if run.returncode not in (0, 1) or not json_path.exists():  # 1: some requests failed
            raise GeneratorError(
                f"locust exited with status {run.returncode}:\n{run.stderr_tail[-2000:].strip()}"
            )
        stats = summarize_locust(json.loads(json_path.read_text()))
        return ToolResult(**stats, client_cpu_util=_cpu_util(run, spec))


def locust_percentile(histogram: dict[float, int], fraction: float) -> float:
    """Nearest-rank percentile of Locust's response-time histogram (ms -> count)."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def summarize_locust(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate Locust's ``--json-file`` entries (one per request name).

    Locust's CSV is rewritten once a second and not at exit, so it can miss
    the last second; the JSON file is written at exit.
    """
    requests = sum(int(e["num_requests"]) for e in entries)
    failures = sum(int(e["num_failures"]) for e in entries)
    histogram: dict[float, int] = {}
    for entry in entries:
        for value, count in entry["response_times"].items():
            histogram[float(value)] = histogram.get(float(value), 0) + int(count)
    starts = [e["start_time"] for e in entries if e.get("start_time")]
    ends = [e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")]
    window = (max(ends) - min(starts)) if starts and ends else 0.0
    total_ms = sum(float(e["total_response_time"]) for e in entries)
    timed = requests - sum(int(e.get("num_none_requests", 0)) for e in entries)
    return {
        "requests": requests,
        "requests_per_s": requests / window if window > 0 else 0.0,
        "avg_ms": total_ms / timed if timed else 0.0,
        "p50_ms": locust_percentile(histogram, 0.50),
        "p90_ms": locust_percentile(histogram, 0.90),
        "p99_ms": locust_percentile(histogram, 0.99),
        "errors": failures,
        "window_s": window,
    }


# -- wrk -----------------------------------------------------------------------


class WrkTool:
    """``wrk -t<T> -c<C> -d<D>s --latency``, GET /; warm-up as a separate run."""

    name = "wrk"

    def __init__(self, wrk: str) -> None:
        self.wrk = wrk

    def argv(self, target: Target, spec: LoadSpec, seconds: int) -> list[str]:
        threads = max(1, min(spec.cpus, spec.connections))
        return [
            *spec.cpu_prefix,
            self.wrk,
            f"-t{threads}",
            f"-c{spec.connections}",
            f"-d{seconds}s",
            "--timeout", "10s",
            "--latency",
            f"http://{target.host}:{target.port}/",
        ]  # fmt: skip

    def run(self, target: Target, spec: LoadSpec, hooks: WindowHooks) -> ToolResult:
        if target.protocol != "http":
            raise ValueError("wrk speaks HTTP only")
        if spec.warmup_s > 0:  # wrk takes whole seconds
            warmup = math.ceil(spec.warmup_s)
            argv = self.argv(target, spec, warmup)
            run_quietly("wrk (warm-up)", argv, PROJECT_ROOT, warmup + SLACK_S)
        log = Path(str(spec.log_prefix) + ".wrk.log")
        argv = self.argv(target, spec, spec.duration_s)
        run = run_generator(
            "wrk", argv, PROJECT_ROOT, hooks, log, spec.duration_s + SLACK_S, markers=False
        )
        log.write_text(run.stdout + run.stderr_tail)
        if run.returncode != 0:
            why = run.stderr_tail.strip()
            raise GeneratorError(f"wrk exited with status {run.returncode}: {why}")
        stats = parse_wrk(run.stdout)
        return ToolResult(**stats, client_cpu_util=_cpu_util(run, spec))


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency (avg, p50, p90, p99 in ms) and errors from ``wrk --latency``.

    Errors are socket errors (connect, read, write, timeout) plus non-2xx/3xx
    responses.

    Raises:
        GeneratorError: the output lacks the summary lines.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+)", output, re.M)
    avg = re.search(r"^\s*Latency\s+(\S+)", output, re.M)
    if rps is None or total is None or avg is None:
        raise GeneratorError(f"cannot read wrk's output:\n{output.strip()}")
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.M)}
    errors = 0
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(g) for g in sock.groups())
    if non2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non2xx.group(1))
    return {
        "requests": int(total.group(1)),
        "requests_per_s": float(rps.group(1)),
        "avg_ms": _ms(avg.group(1)),
        "p50_ms": pct.get(50, 0.0),
        "p90_ms": pct.get(90, 0.0),
        "p99_ms": pct.get(99, 0.0),
        "errors": errors,
        "window_s": _ms(total.group(2)) / 1000,
    }


# -- the echo saturation client -------------------------------------------------


class EchoClientTool:
    """`loadtest.echo_client`: ping-pong, 64-byte messages, one process per CPU it may use."""

    name = "echo-client"

    def __init__(self, pipeline: int = 1) -> None:
        self.pipeline = pipeline

    def argv(self, target: Target, spec: LoadSpec) -> list[str]:
        return [
            *spec.cpu_prefix,
            sys.executable, "-m", "loadtest.echo_client",
            "--host", target.host, "--port", str(target.port),
            "--connections", str(spec.connections),
            "--duration", str(spec.duration_s), "--warmup", str(spec.warmup_s),
            "--processes", str(max(1, min(spec.cpus, spec.connections))),
            "--size", str(ECHO_MESSAGE_BYTES), "--pipeline", str(self.pipeline),
        ]  # fmt: skip

    def run(self, target: Target, spec: LoadSpec, hooks: WindowHooks) -> ToolResult:
        if target.protocol != "echo":
            raise ValueError("the echo client speaks the echo protocol only")
        argv = self.argv(target, spec)
        log = Path(str(spec.log_prefix) + ".echo-client.log")
        timeout = spec.warmup_s + spec.duration_s + SLACK_S
        run = run_generator("echo client", argv, PROJECT_ROOT, hooks, log, timeout, markers=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        if run.returncode != 0 or not lines:
            raise GeneratorError(
                f"the echo client exited with status {run.returncode}:\n{run.stderr_tail.strip()}"
            )
        s = json.loads(lines[-1])
        return ToolResult(
            requests=s["messages"],
            requests_per_s=s["messages_per_s"],
            avg_ms=s["avg_ms"],
            p50_ms=s["p50_ms"],
            p90_ms=s["p90_ms"],
            p99_ms=s["p99_ms"],
            errors=s["errors"],
            # Its own count: the workers' CPU over the window, per process.
            client_cpu_util=s["cpu_util"] * s["processes"] / spec.cpus,
            window_s=s["duration_s"],
        )


class NativeEchoClientTool(EchoClientTool):
    """loadtest/echo_bench.c: the same ping-pong in C on one epoll loop.

    A Python client runs out of CPU at about the rate a Python server serves
    (both near 150k msgs/s here), so the native one is the default: it uses
    well under one CPU where the server uses all of its own.
    """

    name = "echo-client"

    def __init__(self, binary: str) -> None:
        super().__init__(1)
        self.binary = binary

    def argv(self, target: Target, spec: LoadSpec) -> list[str]:
        return [
            *spec.cpu_prefix, self.binary, target.host, str(target.port),
            str(spec.connections), str(spec.duration_s), str(spec.warmup_s),
        ]  # fmt: skip


def saturation_tool(
    protocol: str, wrk: str | None, pipeline: int = 1, echo_bench: str | None = None
) -> LoadTool:
    """wrk for HTTP; for echo the native client when built, else the Python one."""
    if protocol == "http":
        if wrk is None:
            raise GeneratorError(
                "the HTTP saturation tool is wrk, which is not installed: "
                "apt-get install wrk (or run --tools locust)"
            )
        return WrkTool(wrk)
    if echo_bench is not None and pipeline == 1:
        return NativeEchoClientTool(echo_bench)
    return EchoClientTool(pipeline)
