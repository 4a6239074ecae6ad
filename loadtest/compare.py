"""Compare the uring and epoll backends under load: ``python -m loadtest.compare``.

For every tool, connection count, repeat and backend it starts a fresh server
(same settings each time; pinned to the first usable CPU with ``taskset``
when there are two or more, the load generator pinned to the others), drives
it, reads the server's counters over the generator's measured window, and
stops it.  Repeats alternate the backends' order run by run and report
medians.  At the end it prints a side-by-side table per tool, and writes
``results.csv``, ``results.json``, ``runs.csv`` (every run) and a PNG per
tool into ``--out``; ``logs/`` there keeps each server's and generator's
output.

``--peers`` adds other servers to every point, under the same load and
pinning, in the same alternation: for HTTP ``uvloop-h11`` (our HttpConnection
and built-in app on uvloop) and ``uvicorn`` (h11, uvloop,
`loadtest.peers.uvicorn_app`, which serves ``GET /`` and ``POST /echo`` like
the built-in app, so Locust's users run against it unchanged); for echo
``uvloop-echo`` and ``c-uring-echo`` (`loadtest/peers/uring_echo.c`, built
into ``--out`` with ``cc`` first; it binds 127.0.0.1 only).  ``--peers a,b``
picks some.  A peer has no counters: its syscalls/request and waits/request
are blank; its CPU seconds and peak RSS are measured as for ours.  Each peer
gets a free port of its own (or ``--port``) and is ready once it listens.

For HTTP with the saturation tool it runs `loadtest.h11_ceiling` on the
server's CPU (for ``--duration`` seconds) before the first run and again
after the last: our HTTP path in memory, no I/O, on exactly wrk's request.
The report gives each server's wrk figure as a share of it, as a range when
the two measurements differ (the host's speed can drift during a run), and
results carry both (``h11_ceiling_rps``, ``h11_ceiling_end_rps``).

Tools: ``locust`` (validating users, ``-u N -r N``, warm-up discarded by a
stats reset) and ``saturation`` (``wrk`` for HTTP; `loadtest.echo_client`
for echo).  Connection counts default to 1, 10, 100, 1000, plus 10000 when
the open-file limit allows it; Locust runs at most ``--users`` users (each
holds one connection), so higher counts are run once at that cap.

Exit status: 0 done; 1 a server, generator or the machine failed (port in
use, wrk missing, a server that does not start); 2 bad arguments.  Whatever
happens, no server or generator is left running.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from loadtest import PROJECT_ROOT, sysinfo
from loadtest.procs import (
    GeneratorError,
    PeerProcess,
    ServerProcess,
    ServerSnapshot,
    ServerStartError,
    WindowHooks,
    kill_all,
    run_command,
)
from loadtest.report import plot, tables
from loadtest.results import (
    Metadata,
    Result,
    median_result,
    result_from_run,
    write_csv,
    write_json,
)
from loadtest.tools import (
    SLACK_S,
    LoadSpec,
    LoadTool,
    LocustTool,
    Target,
    saturation_tool,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ECHO_BENCH_SOURCE = PROJECT_ROOT / "loadtest" / "echo_bench.c"
BACKENDS = ("uring", "epoll")
TOOLS = ("locust", "saturation")
DEFAULT_CONNECTIONS = (1, 10, 100, 1000)
LARGE_POINT = 10_000
DEFAULT_USERS = 100
# File descriptors a process needs beyond one per connection.
FD_MARGIN = 128
PEERS = {"http": ("uvloop-h11", "uvicorn"), "echo": ("uvloop-echo", "c-uring-echo")}
URING_ECHO_SOURCE = PROJECT_ROOT / "loadtest" / "peers" / "uring_echo.c"
URING_ECHO_HOST = "127.0.0.1"  # where uring_echo.c binds, whatever --host says


class SetupError(Exception):
    """The machine cannot run the comparison as asked (wrk missing, port in use...)."""


@dataclass(frozen=True, slots=True)
class Options:
    protocol: str
    backends: tuple[str, ...]
    connections: tuple[int, ...]
    duration: int
    warmup: float
    users: int
    out: Path
    tools: tuple[str, ...]
    repeat: int
    pipeline: int
    host: str
    port: int
    peers: tuple[str, ...] = ()
    echo_client: str = "native"
    server_args: tuple[str, ...] = ()

    @property
    def servers(self) -> tuple[str, ...]:
        """Our backends, then the peers."""
        return self.backends + self.peers


# -- arguments -------------------------------------------------------------------


def _csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"{text!r} repeats an item")
    return items


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = _csv_list(text)
        if bad := [i for i in items if i not in allowed]:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)} (choose from {', '.join(allowed)})"
            )
        return tuple(items)

    return parse


def _connections(text: str) -> tuple[int, ...]:
    try:
        counts = [int(i) for i in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError("connection counts must be at least 1")
    return tuple(sorted(counts))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.compare",
        description="Benchmark ringserve's uring and epoll backends side by side.",
    )
    p.add_argument(
        "--protocol", choices=["http", "echo"], default="http", help="what the servers speak"
    )
    p.add_argument(
        "--backends", type=_choices(BACKENDS), default=BACKENDS, help="default: uring,epoll"
    )
    p.add_argument(
        "--connections",
        type=_connections,
        default=None,
        help="connection counts (default: 1,10,100,1000, and 10000 when RLIMIT_NOFILE allows)",
    )
    p.add_argument(
        "--duration",
        type=_positive_int,
        default=10,
        help="measured seconds per point, whole (wrk and Locust count whole seconds) (10)",
    )
    p.add_argument(
        "--warmup",
        type=_seconds,
        default=2.0,
        help="seconds of load discarded before each measurement; wrk and Locust round it "
        "up to whole seconds (2)",
    )
    p.add_argument(
        "--users",
        type=_positive_int,
        default=DEFAULT_USERS,
        help=f"most Locust users (= connections) per point ({DEFAULT_USERS})",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (results/<time>)")
    p.add_argument("--tools", type=_choices(TOOLS), default=TOOLS, help="locust,saturation (both)")
    p.add_argument("--repeat", type=_positive_int, default=1, help="runs per point (medians)")
    p.add_argument(
        "--pipeline",
        type=_positive_int,
        default=1,
        help="echo saturation client: messages in flight per connection (1: ping-pong)",
    )
    p.add_argument(
        "--echo-client",
        choices=("native", "python"),
        default="native",
        help="echo saturation client: native (loadtest/echo_bench.c, built with cc; "
        "ping-pong only) or python (loadtest.echo_client; supports --pipeline)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the servers bind (127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="server port (0: a free one each run)")
    p.add_argument(
        "--peers",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="also run peer servers at every point: http uvloop-h11,uvicorn; "
        "echo uvloop-echo,c-uring-echo (bare --peers: both)",
    )
    p.add_argument(
        "--server-args",
        type=shlex.split,
        default=[],
        metavar="ARGS",
        help="more options for our servers, both backends alike, e.g. "
        "--server-args='--no-tcp-nodelay --cq-factor 32' (not the peers)",
    )
    return p


def fd_limit() -> int:
    """The most open files this process can have: the hard RLIMIT_NOFILE."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return sys.maxsize if hard == resource.RLIM_INFINITY else hard


def parse_args(argv: Sequence[str] | None) -> Options:
    """Parse and check the command line; exits with status 2 on a bad one."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    limit = fd_limit()
    if ns.connections is None:
        large_ok = limit >= LARGE_POINT + FD_MARGIN
        ns.connections = DEFAULT_CONNECTIONS + ((LARGE_POINT,) if large_ok else ())
    elif max(ns.connections) + FD_MARGIN > limit:
        parser.error(
            f"--connections {max(ns.connections)} needs an open-file limit of at least "
            f"{max(ns.connections) + FD_MARGIN}; the hard limit is {limit} (see ulimit -Hn)"
        )
    peers: tuple[str, ...] = ()
    if ns.peers is not None:
        available = PEERS[ns.protocol]
        try:
            peers = available if ns.peers == "all" else _choices(available)(ns.peers)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"--peers for --protocol {ns.protocol}: {exc}")
        if "c-uring-echo" in peers and ns.host != URING_ECHO_HOST:
            parser.error(
                f"--peers: c-uring-echo listens on {URING_ECHO_HOST} only, so the load would "
                f"differ; use --host {URING_ECHO_HOST} or --peers uvloop-echo"
            )
    owned = ("--backend", "--protocol", "--host", "--port", "--log-level", "--workers")
    if clash := [a for a in ns.server_args if a.split("=")[0] in owned]:
        parser.error(f"--server-args: {', '.join(clash)} is set by the compare command itself")
    out = ns.out or Path("results") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Options(
        protocol=ns.protocol,
        backends=tuple(ns.backends),
        connections=tuple(ns.connections),
        duration=ns.duration,
        warmup=ns.warmup,
        users=ns.users,
        out=out,
        tools=tuple(ns.tools),
        repeat=ns.repeat,
        pipeline=ns.pipeline,
        echo_client=ns.echo_client,
        host=ns.host,
        port=ns.port,
        peers=peers,
        server_args=tuple(ns.server_args),
    )


# -- the machine ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pinning:
    server_prefix: tuple[str, ...]
    generator_prefix: tuple[str, ...]
    generator_cpus: int
    description: str
    server_cpu: int | None = None  # the server's CPU when pinned


def plan_pinning(cpus: Sequence[int], taskset: str | None) -> Pinning:
    """Server on the first usable CPU, generators on the rest, when there are >= 2."""
    if len(cpus) < 2:
        return Pinning((), (), 1, f"not pinned: only {len(cpus)} usable CPU")
    if taskset is None:
        return Pinning((), (), len(cpus), "not pinned: taskset not found")
    server_cpu = str(cpus[0])
    rest = ",".join(str(c) for c in cpus[1:])
    plural = "s" if len(cpus) > 2 else ""
    return Pinning(
        (taskset, "-c", server_cpu),
        (taskset, "-c", rest),
        len(cpus) - 1,
        f"server on CPU {server_cpu} (taskset -c {server_cpu}), "
        f"load generators on CPU{plural} {rest} (taskset -c {rest})",
        cpus[0],
    )


def check_port_free(host: str, port: int) -> None:
    """Raises SetupError if `port` cannot be bound (the server would fail the same way)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            raise SetupError(f"cannot use port {port} on {host}: {exc.strerror}") from None


def raise_fd_limit(needed: int) -> None:
    """Lift our soft RLIMIT_NOFILE to `needed` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, fd_limit()), hard))


def server_argv(prefix: Sequence[str], backend: str, opts: Options) -> list[str]:
    return [
        *prefix,
        sys.executable, "-m", "server",
        "--backend", backend, "--protocol", opts.protocol,
        "--host", opts.host, "--port", str(opts.port),
        "--log-level", "info",
        *opts.server_args,
    ]  # fmt: skip


def free_port(host: str) -> int:
    """A port nobody listens on right now (for a peer, which cannot report its own)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def uring_echo_binary(opts: Options) -> Path:
    return opts.out / "uring_echo"


def peer_host(name: str, opts: Options) -> str:
    return URING_ECHO_HOST if name == "c-uring-echo" else opts.host


def peer_argv(name: str, prefix: Sequence[str], opts: Options, port: int) -> list[str]:
    """The command that runs peer `name` on `port` (pinned by `prefix`)."""
    host = peer_host(name, opts)
    if name == "uvloop-h11":
        module = ["-m", "loadtest.peers.uvloop_h11"]
        module += ["--host", host, "--port", str(port)]
    elif name == "uvloop-echo":
        module = ["-m", "loadtest.peers.uvloop_echo"]
        module += ["--host", host, "--port", str(port)]
    elif name == "uvicorn":
        module = [
            "-m", "uvicorn", "loadtest.peers.uvicorn_app:app",
            "--http", "h11", "--loop", "uvloop", "--no-access-log",
            "--host", host, "--port", str(port),
        ]  # fmt: skip
    elif name == "c-uring-echo":
        return [*prefix, str(uring_echo_binary(opts).resolve()), str(port)]
    else:
        raise ValueError(f"unknown peer {name!r}")
    return [*prefix, sys.executable, *module]


# uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
PEER_CLEAN_EXITS = {"uvicorn": (0, -signal.SIGTERM)}


def check_peer_modules(peers: Sequence[str]) -> None:
    """Raises SetupError if a peer's Python package is not installed."""
    needed = {"uvloop"} if any(p != "c-uring-echo" for p in peers) else set()
    if "uvicorn" in peers:
        needed.add("uvicorn")
    if missing := sorted(m for m in needed if importlib.util.find_spec(m) is None):
        raise SetupError(
            f"--peers needs {', '.join(missing)}, which is not installed: "
            "pip install -e '.[loadtest]'"
        )


def uring_echo_build_argv(opts: Options) -> list[str]:
    source = URING_ECHO_SOURCE.relative_to(PROJECT_ROOT)
    return ["cc", "-O2", "-o", str(uring_echo_binary(opts).resolve()), str(source), "-luring"]


def build_uring_echo(opts: Options) -> str:
    """Compile loadtest/peers/uring_echo.c into the output directory; returns the command.

    Raises:
        SetupError: no C compiler, no liburing headers or library, or it does not compile.
    """
    cc = shutil.which("cc")
    if cc is None:
        raise SetupError(
            "c-uring-echo is built from loadtest/peers/uring_echo.c with cc, which is not "
            "installed: apt-get install gcc liburing-dev (or run --peers uvloop-echo)"
        )
    argv = [cc, *uring_echo_build_argv(opts)[1:]]
    try:
        status, out, err = run_command("cc", argv, PROJECT_ROOT, 120)
    except GeneratorError as exc:
        raise SetupError(str(exc)) from None
    if status != 0:
        why = (out + err).strip()
        if "liburing.h" in why:
            raise SetupError(
                "cannot build c-uring-echo: the liburing headers are missing "
                "(apt-get install liburing-dev, or run --peers uvloop-echo)"
            )
        if "-luring" in why:
            raise SetupError(
                "cannot build c-uring-echo: the linker cannot find liburing "
                "(apt-get install liburing-dev, or run --peers uvloop-echo)"
            )
        raise SetupError(f"cannot build c-uring-echo: {shlex.join(argv)} failed:\n{why}")
    return shlex.join(uring_echo_build_argv(opts))


def collect_metadata(opts: Options, pinning: Pinning, wrk: str | None) -> Metadata:
    command = server_argv(pinning.server_prefix, "{uring|epoll}", opts)
    command[len(pinning.server_prefix)] = "python"
    if pinning.server_prefix:
        command[0] = "taskset"
    # The server also reads RINGSERVE_<OPTION> variables: record any that are set.
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("RINGSERVE_")]
    peers = []
    for name in opts.peers:
        argv = peer_argv(name, pinning.server_prefix, opts, 0)
        argv[-1] = "{port}"
        argv = ["python" if a == sys.executable else a for a in argv]
        if pinning.server_prefix:
            argv[0] = "taskset"
        built = ""
        if name == "c-uring-echo":
            argv[len(pinning.server_prefix)] = str(uring_echo_binary(opts))
            cc = shutil.which("cc")
            built = (
                f" (built with {shlex.join(uring_echo_build_argv(opts))}; "
                f"{sysinfo.compiler_version(cc)})"
            )
        peers.append(f"{name}: {shlex.join(argv)}{built}")
    return Metadata(
        started_at=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        protocol=opts.protocol,
        duration_s=opts.duration,
        warmup_s=opts.warmup,
        repeat=opts.repeat,
        echo_pipeline=opts.pipeline,
        kernel=platform.release(),
        cpu_model=sysinfo.cpu_model(),
        cpu_count=len(sysinfo.usable_cpus()),
        python=platform.python_version(),
        liburing=sysinfo.liburing_version(),
        h11=sysinfo.package_version("h11"),
        locust=sysinfo.package_version("locust"),
        wrk=sysinfo.wrk_version(wrk),
        pinning=pinning.description,
        server_command=shlex.join([*env, *command]),
        peers="; ".join(peers),
        uvloop=sysinfo.package_version("uvloop"),
        uvicorn=sysinfo.package_version("uvicorn"),
    )


# -- runs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    tool: LoadTool
    backend: str  # the server: one of our backends or a peer
    connections: int
    run: int  # 1-based


def plan_jobs(opts: Options, tools: Sequence[LoadTool]) -> list[Job]:
    """Tool by tool, point by point; within a point the servers alternate their order."""
    jobs = []
    for tool in tools:
        points = opts.connections
        if tool.name == "locust":
            points = tuple(sorted({min(c, opts.users) for c in points}))
        for connections in points:
            for run in range(1, opts.repeat + 1):
                order = opts.servers if run % 2 else tuple(reversed(opts.servers))
                jobs += [Job(tool, backend, connections, run) for backend in order]
    return jobs


class ServerWindow(WindowHooks):
    """Snapshots the server's counters when the generator's window opens and closes."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.before: ServerSnapshot | None = None
        self.after: ServerSnapshot | None = None

    def open(self) -> None:
        self.before = self.server.snapshot()

    def close(self) -> None:
        self.after = self.server.snapshot()


PEER_START_TRIES = 3  # a peer's free port can be taken by someone else before it binds


def start_server(job: Job, opts: Options, pinning: Pinning, log: Path) -> ServerProcess:
    """Start `job`'s server (ours or a peer) and return it, listening.

    Raises:
        ServerStartError: it did not start.
    """
    if job.backend in BACKENDS:
        server = ServerProcess(
            server_argv(pinning.server_prefix, job.backend, opts), PROJECT_ROOT, log
        )
        server.start()
        return server
    host = peer_host(job.backend, opts)
    tries = 1 if opts.port else PEER_START_TRIES
    for attempt in range(1, tries + 1):
        port = opts.port or free_port(host)
        argv = peer_argv(job.backend, pinning.server_prefix, opts, port)
        clean = PEER_CLEAN_EXITS.get(job.backend, (0,))
        server = PeerProcess(argv, PROJECT_ROOT, log, (host, port), clean)
        try:
            server.start()
        except ServerStartError as exc:
            if attempt == tries or "already in use" not in str(exc).lower():
                raise
            continue
        return server
    raise AssertionError("unreachable")


def run_job(job: Job, opts: Options, pinning: Pinning, logs: Path) -> Result:
    """One fresh server, one measurement, the server stopped again.

    Raises:
        ServerStartError: the server did not start.
        GeneratorError: the generator or the server failed during the run.
    """
    stem = f"{opts.protocol}-{job.tool.name}-c{job.connections}-{job.backend}-r{job.run}"
    server = start_server(job, opts, pinning, logs / f"{stem}.server.log")
    with server:
        assert server.address is not None
        host, port = server.address
        window = ServerWindow(server)
        spec = LoadSpec(
            connections=job.connections,
            duration_s=opts.duration,
            warmup_s=opts.warmup,
            cpu_prefix=pinning.generator_prefix,
            cpus=pinning.generator_cpus,
            log_prefix=logs / stem,
        )
        measured = job.tool.run(Target(opts.protocol, host, port), spec, window)
        if window.before is None or window.after is None:
            raise GeneratorError(f"{job.tool.name} did not report a measurement window")
        peak_rss_kib = server.peak_rss_kib()
        status = server.stop()
    return result_from_run(
        opts.protocol,
        job.tool.name,
        job.backend,
        job.connections,
        measured,
        window.before,
        window.after,
        peak_rss_kib,
        status,
    )


def describe(result: Result) -> str:
    sys_per = result.syscalls_per_request
    return (
        f"{result.requests_per_s:>10,.0f} req/s  p99 {result.p99_ms:6.2f} ms  "
        f"{result.errors} errors  "
        f"{'-' if sys_per is None else f'{sys_per:.2f}'} syscalls/req  "
        f"server {result.cpu_s:.2f} CPU-s  client CPU {result.client_cpu_util * 100:.0f}%"
    )


def run_all(
    jobs: Sequence[Job], opts: Options, pinning: Pinning, logs: Path
) -> tuple[list[Result], str | None]:
    """Run every job with progress on stderr; stops at the first failure.

    Returns the results so far and the failure's message (None if all ran).
    """
    results: list[Result] = []
    width = len(str(len(jobs)))
    name_width = max(len(s) for s in opts.servers)
    started = time.monotonic()
    for i, job in enumerate(jobs, start=1):
        label = (
            f"[{i:>{width}}/{len(jobs)}] {opts.protocol} {job.tool.name:<11} "
            f"c={job.connections:<5} {job.backend:<{name_width}} run {job.run}/{opts.repeat}"
        )
        print(f"{label} ...", file=sys.stderr, flush=True)
        try:
            result = run_job(job, opts, pinning, logs)
        except (ServerStartError, GeneratorError) as exc:
            return results, f"{label}: {exc}"
        results.append(result)
        elapsed = time.monotonic() - started
        print(f"{label}: {describe(result)}  [{elapsed:.0f} s]", file=sys.stderr, flush=True)
        if result.server_exit_status != 0:
            print(
                f"{label}: warning: the server exited with status {result.server_exit_status}",
                file=sys.stderr,
            )
    return results, None


def run_ceiling(
    opts: Options, pinning: Pinning, logs: Path, log_name: str | None = None
) -> dict[str, float]:
    """`loadtest.h11_ceiling` once, on the server's CPU, for --duration seconds.

    Raises:
        GeneratorError: it failed.
    """
    argv = [
        sys.executable, "-m", "loadtest.h11_ceiling", "--json",
        "--duration", str(opts.duration), "--warmup", str(min(opts.warmup, 2.0)),
    ]  # fmt: skip
    if pinning.server_cpu is not None:
        argv += ["--cpu", str(pinning.server_cpu)]
    timeout = opts.duration + opts.warmup + SLACK_S
    status, out, err = run_command("the h11 ceiling", argv, PROJECT_ROOT, timeout)
    (logs / (log_name or "h11_ceiling.log")).write_text(out + err)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if status != 0 or not lines:
        raise GeneratorError(f"the h11 ceiling exited with status {status}:\n{err.strip()}")
    return json.loads(lines[-1])


def summarize(runs: Sequence[Result]) -> list[Result]:
    """Medians per (tool, connections, server), in run order."""
    groups: dict[tuple[str, int, str], list[Result]] = {}
    for r in runs:
        groups.setdefault((r.tool, r.connections, r.backend), []).append(r)
    return [median_result(rs) for rs in groups.values()]


def write_outputs(
    out: Path, runs: Sequence[Result], opts: Options, meta: Metadata
) -> tuple[list[Result], list[Path]]:
    results = summarize(runs)
    write_csv(out / "results.csv", results, meta)
    write_json(out / "results.json", results, meta)
    write_csv(out / "runs.csv", runs, meta)
    pngs = plot(results, opts.servers, meta, out)
    return results, [out / "results.csv", out / "results.json", out / "runs.csv", *pngs]


def measure_ceiling(
    opts: Options, pinning: Pinning, logs: Path, meta: Metadata, *, end: bool = False
) -> Metadata:
    """Run the h11 ceiling and record it in `meta` (`end`: the one after the runs).

    A failure is a warning, not fatal.
    """
    when = "after the runs" if end else "before the runs"
    print(f"h11 ceiling (in memory, the server's CPU, {when}) ...", file=sys.stderr, flush=True)
    try:
        ceiling = run_ceiling(opts, pinning, logs, "h11_ceiling_end.log" if end else None)
    except (GeneratorError, ValueError) as exc:
        print(f"compare: warning: no h11 ceiling {when}: {exc}", file=sys.stderr)
        return meta
    rps, us = float(ceiling["requests_per_s"]), float(ceiling["us_per_request"])
    print(f"h11 ceiling: {rps:,.0f} req/s in memory, {us:.2f} us/request", file=sys.stderr)
    if end:
        return dataclasses.replace(meta, h11_ceiling_end_rps=rps)
    return dataclasses.replace(meta, h11_ceiling_rps=rps, h11_ceiling_us_per_request=us)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def build_echo_bench(opts: Options) -> str | None:
    """Compile the native echo client into --out when it will be used; its path, or None.

    Raises:
        SetupError: it was asked for and cannot be built.
    """
    wanted = opts.protocol == "echo" and "saturation" in opts.tools
    if not wanted or opts.echo_client != "native" or opts.pipeline != 1:
        return None
    cc = shutil.which("cc")
    if cc is None:
        raise SetupError(
            "the native echo client is built with cc, which is not installed: "
            "apt-get install gcc (or run --echo-client python)"
        )
    opts.out.mkdir(parents=True, exist_ok=True)
    binary = (opts.out / "echo_bench").resolve()
    argv = [cc, "-O2", "-o", str(binary), str(ECHO_BENCH_SOURCE)]
    try:
        status, out, err = run_command("cc", argv, PROJECT_ROOT, 120)
    except GeneratorError as exc:
        raise SetupError(str(exc)) from None
    if status != 0:
        raise SetupError(f"cannot build the native echo client:\n{(out + err).strip()}")
    return str(binary)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    wrk = shutil.which("wrk")
    try:
        echo_bench = build_echo_bench(opts)
        tools: list[LoadTool] = [
            LocustTool()
            if name == "locust"
            else saturation_tool(opts.protocol, wrk, opts.pipeline, echo_bench)
            for name in opts.tools
        ]
        if opts.port != 0:
            check_port_free(opts.host, opts.port)
        check_peer_modules(opts.peers)
    except (SetupError, GeneratorError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    raise_fd_limit(max(opts.connections) + FD_MARGIN)
    pinning = plan_pinning(sysinfo.usable_cpus(), shutil.which("taskset"))
    meta = collect_metadata(opts, pinning, wrk)
    logs = opts.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if "c-uring-echo" in opts.peers:
        try:
            build = build_uring_echo(opts)
        except SetupError as exc:
            print(f"compare: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"compare: built c-uring-echo: {build}", file=sys.stderr)
    jobs = plan_jobs(opts, tools)
    peers = f", peers {', '.join(opts.peers)}" if opts.peers else ""
    print(
        f"ringserve compare: {opts.protocol}, backends {', '.join(opts.backends)}{peers}, "
        f"tools {', '.join(t.name for t in tools)}, connections "
        f"{', '.join(map(str, opts.connections))} (Locust: at most {opts.users} users), "
        f"{opts.duration} s per point after {opts.warmup:g} s warm-up, {opts.repeat} run(s) each"
        f"\nkernel {meta.kernel}; {meta.cpu_model} x{meta.cpu_count}; Python {meta.python}; "
        f"{meta.liburing}; h11 {meta.h11}; locust {meta.locust}; {meta.wrk}"
        f"\npinning: {pinning.description}\noutput: {opts.out}",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    status = EXIT_OK
    runs: list[Result] = []
    try:
        ceiling = opts.protocol == "http" and "saturation" in opts.tools
        if ceiling:
            meta = measure_ceiling(opts, pinning, logs, meta)
        runs, failure = run_all(jobs, opts, pinning, logs)
        if ceiling and runs and failure is None:
            meta = measure_ceiling(opts, pinning, logs, meta, end=True)
        if failure is not None:
            print(f"compare: error: {failure}", file=sys.stderr)
            print(f"compare: the logs are in {logs}", file=sys.stderr)
            status = EXIT_FAILED
    except KeyboardInterrupt:
        print("compare: interrupted", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if leftovers := kill_all():
            print(f"compare: killed leftover processes {leftovers}", file=sys.stderr)
    if runs:
        results, files = write_outputs(opts.out, runs, opts, meta)
        print()
        print(tables(results, opts.servers, meta))
        print("\nwritten: " + ", ".join(str(f) for f in files))
    return status


if __name__ == "__main__":
    sys.exit(main())
