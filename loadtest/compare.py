"""Compare the uring and epoll backends under load: ``python -m loadtest.compare``.

Every run gets a fresh server with the same settings, pinned with
``taskset`` to the first usable CPU while the load generator runs on the
others, and the server's own counters are read over exactly the window the
generator measures (SIGUSR1 at its markers); repeats alternate the
servers' order and report medians, so a slow spell of a shared host hits
both backends alike.  ``--http`` runs our servers with each parser asked,
``--baseline`` adds the servers of another checkout, ``--app`` picks the
workload (`WORKLOADS`: the built-in app, a WSGI or ASGI hello, the FastAPI
example; each server's answer to the workload's request is checked before
each run), and ``--peers`` adds uvloop, uvicorn (also on our event loop) and
granian (HTTP) or uvloop and a C liburing server (echo) under the same load;
for HTTP with wrk, `loadtest.h11_ceiling` runs on the server's CPU before and
after the runs for each parser, and each server's figure is reported as a
share of its parser's (a range: the host's speed drifts).  The README's
"The compare command" tells what is written where.  Exit status: 0 done; 1 a
server, generator or the machine failed (port in use, wrk missing, a server
that does not start); 2 bad arguments (a --baseline that is not a built
ringserve checkout too).
Whatever happens, no server or generator is left running.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

from loadtest import PROJECT_ROOT, non_negative_float, raise_fd_limit, results, servers, tools
from loadtest.results import Metadata, Result
from loadtest.servers import RunError, ServerProcess, ServerStartError
from loadtest.tools import LoadTool
from server.config import Config, port_number, positive_int
from server.protocols.http import HTTP_IMPLEMENTATIONS

BACKENDS = ("uring", "epoll")
PARSERS = tuple(HTTP_IMPLEMENTATIONS)  # h11 (the default), httptools
TOOLS = ("locust", "saturation")
DEFAULT_CONNECTIONS = (1, 10, 100, 1000)
LARGE_POINT = 10_000
FD_MARGIN = 128  # file descriptors a process needs beyond one per connection
URING_ECHO_HOST = "127.0.0.1"  # where uring_echo.c binds, whatever --host says
_AT = ["--host", "{host}", "--port", "{port}"]
_UVICORN = ["--no-access-log", *_AT]
# Like ours: one serving process (beside granian's supervisor), one Python thread running the
# app (granian's WSGI default is backlog/2 threads taking turns at the GIL), HTTP/1 only, our
# default listen() backlog.
_GRANIAN = ["--workers", "1", "--runtime-threads", "1", "--blocking-threads", "1", "--http", "1",
            "--backlog", str(Config().backlog), "--no-access-log", *_AT]  # fmt: skip
# Each peer's arguments after the interpreter (c-uring-echo: after its binary); an HTTP
# peer's app, from the workload, follows.
PEERS = {
    "http": {
        "uvloop-h11": ["-m", "loadtest.peers.uvloop_h11", *_AT],
        "uvicorn": ["-m", "uvicorn", "--http", "h11", "--loop", "uvloop", *_UVICORN],
        "uvicorn-httptools": ["-m", "uvicorn", "--http", "httptools", "--loop", "uvloop",
                              *_UVICORN],
        # Our event loop (the server's io_uring backend, RINGSERVE_BACKEND) under uvicorn's
        # httptools protocol: what the loop alone is worth, beside uvicorn-httptools.
        "uvicorn-ringloop": ["-m", "uvicorn", "--http", "httptools", "--loop",
                             "server.aio:new_event_loop", *_UVICORN],
        "granian-asgi": ["-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--no-ws",
                         *_GRANIAN],
        "granian-wsgi": ["-m", "granian", "--interface", "wsgi", *_GRANIAN],
    },
    "echo": {"uvloop-echo": ["-m", "loadtest.peers.uvloop_echo", *_AT], "c-uring-echo": ["{port}"]},
}  # fmt: skip
# The parser each HTTP peer runs (granian: hyper, in Rust): its ratio base and its ceiling.
PEER_HTTP = {"uvloop-h11": "h11", "uvicorn": "h11", "uvicorn-httptools": "httptools",
             "uvicorn-ringloop": "httptools", "granian-asgi": "hyper",
             "granian-wsgi": "hyper"}  # fmt: skip
PEER_NEEDS = {"uvloop-h11": "uvloop", "uvicorn": "uvicorn", "uvicorn-httptools": "uvicorn",
              "uvicorn-ringloop": "uvicorn", "granian-asgi": "granian", "granian-wsgi": "granian",
              "uvloop-echo": "uvloop"}  # fmt: skip
# A peer's environment beyond ours (which it inherits, RINGSERVE_* included).
PEER_ENV = {"uvicorn-ringloop": {"RINGSERVE_BACKEND": "uring"}}
# Our peer programs print the listening line; uvicorn and granian are waited for at their socket.
ANNOUNCED = {"uvloop-h11", "uvloop-echo", "c-uring-echo"}
# uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
PEER_CLEAN_EXITS = {
    p: (0, -signal.SIGTERM) for p in ("uvicorn", "uvicorn-httptools", "uvicorn-ringloop")
}
ASGI_HELLO, WSGI_HELLO = "examples.asgi_hello:app", "loadtest.peers.wsgi_app:app"
FASTAPI_APP = "examples.fastapi_app:app"
HELLO = b"Hello from ringserve\n"  # the built-in app's GET /, and every hello's


@dataclass(frozen=True, slots=True)
class Workload:
    """What the HTTP servers serve (``--app``): our server's arguments (the ceiling's too)
    and each peer's app arguments (a peer missing from `peers` cannot serve it), the
    request wrk sends (`path`) and the body every server must answer it with, checked
    once per run before the load (`check_answer`), the Locust user, and the module the
    app needs."""

    ours: tuple[str, ...]
    peers: dict[str, tuple[str, ...]]
    path: str = "/"
    body: bytes = HELLO
    locust_user: str = "HttpAppUser"
    needs: str | None = None


# uvloop-h11 runs our HttpConnection and app(s) as ours do (not ASGI); granian-wsgi serves
# only WSGI, the other peers only ASGI.
_ASGI_PEERS = ("uvicorn", "uvicorn-httptools", "uvicorn-ringloop", "granian-asgi")
WORKLOADS = {
    "builtin": Workload((), {
        "uvloop-h11": (), **{p: (ASGI_HELLO,) for p in _ASGI_PEERS},
        "granian-wsgi": (WSGI_HELLO,)}),
    "wsgi": Workload(("--app", WSGI_HELLO), {
        "uvloop-h11": ("--app", WSGI_HELLO), "granian-wsgi": (WSGI_HELLO,)}),
    "asgi": Workload(("--app", ASGI_HELLO), {p: (ASGI_HELLO,) for p in _ASGI_PEERS}),
    "fastapi": Workload(("--app", FASTAPI_APP), {p: (FASTAPI_APP,) for p in _ASGI_PEERS},
                        "/items/42?q=hello", b'{"item_id":42,"q":"hello"}', "FastApiUser",
                        "fastapi"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Server:
    """One server of the comparison: `program` is one of our backends or a peer's name."""

    name: str  # in results, tables and logs
    program: str
    http: str | None  # its parser (None: echo)
    baseline: bool = False  # ours, from the --baseline checkout
    ours = property(lambda self: self.program in BACKENDS)


PEER_START_TRIES = 3  # a peer's free port can be taken by someone else before it binds
LOCUST = LoadTool("locust", tools.run_locust)
DEBS = ("liburing2", "liburing-dev")


class SetupError(Exception):
    """The machine cannot run the comparison as asked (wrk missing, port in use...)."""


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: comma-separated, distinct names from `allowed`."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [i for i in items if i not in allowed]
        if not items or len(set(items)) != len(items) or bad:
            why = f"unknown {', '.join(bad)}" if bad else f"{text!r} is empty or repeats an item"
            raise argparse.ArgumentTypeError(f"{why} (choose from {', '.join(allowed)})")
        return items

    return parse


def _connections(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({positive_int(i) for i in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The checked options (exits 2 on a bad one), and `servers`: our backends, then peers."""
    p = argparse.ArgumentParser("python -m loadtest.compare", description=__doc__.split("\n")[0])
    # fmt: off
    add = p.add_argument
    add("--protocol", choices=["http", "echo"], default="http", help="what the servers speak")
    add("--backends", type=_choices(BACKENDS), default=BACKENDS, help="default: uring,epoll")
    add("--connections", type=_connections, help="counts (1,10,100,1000, 10000 if fds allow)")
    add("--duration", type=positive_int, default=10, help="measured seconds per point, whole (10)")
    add("--warmup", type=non_negative_float, default=2.0, help="seconds discarded first (2)")
    add("--users", type=positive_int, default=100, help="most Locust users per point (100)")
    add("--out", type=Path, help="output directory (results/<time>)")
    add("--tools", type=_choices(TOOLS), default=TOOLS, help="locust,saturation (both)")
    add("--repeat", type=positive_int, default=1, help="runs per point (medians)")
    add("--pipeline", type=positive_int, default=1, help="echo messages in flight per connection")
    add("--echo-client", choices=("native", "python"), default="native",
        help="echo saturation client: native (echo_bench.c; ping-pong only) or python")
    add("--host", default="127.0.0.1", help="address the servers bind (127.0.0.1)")
    add("--port", type=port_number, default=0, help="server port (0: a free one each run)")
    add("--peers", nargs="?", const="all", metavar="NAMES", help="also run peer servers: "
        + "; ".join(f"{k} {','.join(v)}" for k, v in PEERS.items()) + " (bare --peers: all)")
    add("--server-args", type=shlex.split, default=[], metavar="ARGS", help="more options for "
        "all our servers, e.g. --server-args='--no-tcp-nodelay --cq-factor 32'")
    add("--http", type=_choices(PARSERS), default=PARSERS[:1], help="our servers' parsers: "
        "h11 (default), httptools, or both (then named uring-h11, ..., uring-httptools, ...)")
    add("--app", choices=tuple(WORKLOADS), default="builtin", help="workload: builtin (our "
        "built-in app, peers a hello), wsgi (a WSGI hello, ours and the peers that run WSGI), "
        f"asgi (the ASGI hello {ASGI_HELLO}) or fastapi ({FASTAPI_APP}, wrk asking "
        f"{WORKLOADS['fastapi'].path}): ours and the ASGI peers")
    add("--baseline", type=Path, metavar="DIR", help="another ringserve checkout, extension "
        "built in place: its servers run beside ours as uring@base, epoll@base")
    # fmt: on
    ns = p.parse_args(argv)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = sys.maxsize if hard == resource.RLIM_INFINITY else hard
    if ns.connections is None:
        large = (LARGE_POINT,) if limit >= LARGE_POINT + FD_MARGIN else ()
        ns.connections = DEFAULT_CONNECTIONS + large
    elif (need := max(ns.connections) + FD_MARGIN) > limit:
        p.error(f"--connections {max(ns.connections)} needs an open-file limit of at least "
                f"{need}; the hard limit is {limit} (see ulimit -Hn)")  # fmt: skip
    if ns.protocol == "echo" and (ns.http != PARSERS[:1] or ns.app != "builtin"):
        p.error("--http and --app are for --protocol http")
    available = tuple(PEERS[ns.protocol])
    try:
        peers = ",".join(available) if ns.peers == "all" else ns.peers
        ns.peers = () if peers is None else _choices(available)(peers)
    except argparse.ArgumentTypeError as exc:
        p.error(f"--peers for --protocol {ns.protocol}: {exc}")
    if "c-uring-echo" in ns.peers and ns.host != URING_ECHO_HOST:
        p.error(f"--peers: c-uring-echo listens on {URING_ECHO_HOST} only, so the load would "
                f"differ; use --host {URING_ECHO_HOST} or --peers uvloop-echo")  # fmt: skip
    owned = ("--backend", "--protocol", "--host", "--port", "--log-level", "--workers", "--http",
             "--app")  # fmt: skip
    if clash := [a for a in ns.server_args if a.split("=")[0] in owned]:
        p.error(f"--server-args: {', '.join(clash)} is set by the compare command itself")
    if ns.baseline is not None:
        ns.baseline = ns.baseline.resolve()
        if why := baseline_problem(ns.baseline):
            p.error(f"--baseline {ns.baseline}: {why}")
    ns.out = ns.out or Path("results") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # Peers that cannot serve the workload are left out (the header says so).
    serves = WORKLOADS[ns.app].peers if ns.protocol == "http" else PEERS["echo"]
    ns.skipped = tuple(x for x in ns.peers if x not in serves)
    ns.peers = tuple(x for x in ns.peers if x in serves)
    ns.lineup = lineup(ns)
    ns.servers = tuple(ns.lineup)
    return ns


def lineup(opts: argparse.Namespace) -> dict[str, Server]:
    """Our servers, parser by parser (each beside its baseline twin), then the peers."""
    parsers = opts.http if opts.protocol == "http" else (None,)
    ours = []
    for parser in parsers:
        for backend in opts.backends:
            name = f"{backend}-{parser}" if len(parsers) > 1 else backend
            ours += [Server(name, backend, parser)]
            ours += [Server(f"{name}@base", backend, parser, True)] if opts.baseline else []
    peers = [Server(p, p, PEER_HTTP.get(p)) for p in opts.peers]
    return {s.name: s for s in (*ours, *peers)}


def ratio_pairs(servers: dict[str, Server]) -> list[tuple[str, str]]:
    """The ratio columns: uring/epoll per parser, current/baseline, then each peer against our
    uring of its parser (else our first uring, else our first server)."""
    ours = [s for s in servers.values() if s.ours and not s.baseline]
    uring = [s for s in ours if s.program == "uring"]

    def mate(program: str, http: str | None) -> str | None:
        return next((s.name for s in ours if s.program == program and s.http == http), None)

    pairs = [(s.name, e) for s in uring if (e := mate("epoll", s.http))]
    pairs += [(s.name, f"{s.name}@base") for s in ours if f"{s.name}@base" in servers]
    first = (uring or ours)[0].name
    peers = [s for s in servers.values() if not s.ours]
    return pairs + [(mate("uring", s.http) or first, s.name) for s in peers]


def baseline_env(path: Path) -> dict[str, str]:
    """Its own packages first (its cwd too); then ours, for a workload's app (examples/) that
    an older checkout lacks."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join((str(path), str(PROJECT_ROOT)))}


def baseline_problem(path: Path) -> str | None:
    """Why `path` cannot be the baseline (None: it can): not a ringserve checkout, or no
    extension of its own, without which its uring would import the installed one's."""
    if not ((path / "server" / "__main__.py").is_file() and (path / "uring_backend").is_dir()):
        return "not a ringserve checkout (no server/__main__.py and uring_backend/)"
    code = "import uring_backend._liburing as m; print(m.__file__)"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run([sys.executable, "-c", code], cwd=path, env=baseline_env(path),
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if done.returncode == 0 and Path(done.stdout.strip()).resolve().is_relative_to(path):
            return None
    return (f"its extension is not built there; build it in place: cd {path} && "
            f"{sys.executable} setup.py build_ext --inplace")  # fmt: skip


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
    first, rest = str(cpus[0]), ",".join(str(c) for c in cpus[1:])
    where = f"CPU{'s' if len(cpus) > 2 else ''} {rest} (taskset -c {rest})"
    how = f"server on CPU {first} (taskset -c {first}), load generators on {where}"
    return Pinning((taskset, "-c", first), (taskset, "-c", rest), len(cpus) - 1, how, cpus[0])


def free_port(host: str, port: int = 0) -> int:
    """`port` (0: one the kernel picks), checked free; SetupError if it cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            raise SetupError(f"cannot use port {port} on {host}: {exc.strerror}") from None
        return int(sock.getsockname()[1])


def first_line(*argv: str) -> str:
    """The first line a command prints ("" if it cannot run): tools' versions."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return ((done.stdout or done.stderr).strip().splitlines() or [""])[0]
    return ""


# C programs built into --out: name, source, binary, libraries, what to run instead.
ECHO_BENCH = ("the native echo client", "loadtest/echo_bench.c", "echo_bench", (),
              "--echo-client python")  # fmt: skip
URING_ECHO = ("c-uring-echo", "loadtest/peers/uring_echo.c", "uring_echo", ("-luring",),
              "--peers uvloop-echo")  # fmt: skip


def build_argv(program: tuple[str, str, str, tuple[str, ...], str], out: Path) -> list[str]:
    _, source, binary, libs, _ = program
    return ["cc", "-O2", "-o", str((out / binary).resolve()), source, *libs]


def build(program: tuple[str, str, str, tuple[str, ...], str], out: Path) -> str:
    """Compile `program` into `out`; SetupError with the fix if it cannot be built."""
    name, source, _, libs, instead = program
    if (cc := shutil.which("cc")) is None:
        raise SetupError(
            f"{name} is built from {source} with cc, which is not installed: apt-get install "
            f"gcc{' liburing-dev' if libs else ''} (or run {instead})"
        )
    out.mkdir(parents=True, exist_ok=True)
    argv = [cc, *build_argv(program, out)[1:]]
    try:
        status, stdout, stderr = tools.run_command("cc", argv, 120)
    except RunError as exc:
        raise SetupError(str(exc)) from None
    why = (stdout + stderr).strip()
    for clue, what in [("liburing.h", "the liburing headers are missing"),
                       ("-luring", "the linker cannot find liburing")]:  # fmt: skip
        if status != 0 and clue in why:
            raise SetupError(
                f"cannot build {name}: {what} (apt-get install liburing-dev, or run {instead})"
            )
    if status != 0:
        raise SetupError(f"cannot build {name}: {shlex.join(argv)} failed:\n{why}")
    return argv[3]


def our_argv(server: Server, opts: argparse.Namespace, prefix: Sequence[str] = ()) -> list[str]:
    args = ["--log-level", "info"]
    if opts.protocol == "http":
        # h11 is every checkout's default, also one older than --http: a baseline is not told.
        args += [] if server.baseline and server.http == "h11" else ["--http", str(server.http)]
        args += WORKLOADS[opts.app].ours
    args += opts.server_args
    return servers.server_argv(server.program, opts.protocol, args, opts.host, opts.port, prefix)


def peer_argv(
    name: str, opts: argparse.Namespace, port: int | str, prefix: Sequence[str]
) -> list[str]:
    """The command that runs peer `name` on `port` (pinned by `prefix`), serving the workload."""
    host, program = opts.host, sys.executable
    if name == "c-uring-echo":
        host, program = URING_ECHO_HOST, str((opts.out / URING_ECHO[2]).resolve())
    app = WORKLOADS[opts.app].peers[name] if opts.protocol == "http" else ()
    args = [a.format(host=host, port=port) for a in PEERS[opts.protocol][name]]
    return [*prefix, program, *args, *app]


def commit_of(path: Path) -> str:
    """`path`'s git commit, and whether its tracked files differ from it."""
    head = first_line("git", "-C", str(path), "rev-parse", "--short", "HEAD")
    if not re.fullmatch(r"[0-9a-f]{4,40}", head):
        return "no git commit"
    changed = first_line("git", "-C", str(path), "status", "--porcelain", "--untracked-files=no")
    return head + (" with uncommitted changes" if changed else "")


def collect_metadata(opts: argparse.Namespace, pinning: Pinning, wrk: str | None) -> Metadata:
    taskset = pinning.server_prefix[:1]

    def shown(argv: Sequence[str]) -> str:
        return shlex.join(
            "python" if a == sys.executable else "taskset" if (a,) == taskset else a for a in argv
        )

    def version(package: str) -> str:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(package)
        return "not installed"

    parsers = "|".join(opts.http)
    mine = Server("", "{uring|epoll}", f"{{{parsers}}}" if len(opts.http) > 1 else parsers)
    # The server also reads RINGSERVE_<OPTION> variables: record any that are set.
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("RINGSERVE_")]
    peers = []
    for name in opts.peers:
        env_vars = [f"{k}={v}" for k, v in PEER_ENV.get(name, {}).items()]
        argv = peer_argv(name, opts, "{port}", pinning.server_prefix)
        peers.append(f"{name}: {shown([*env_vars, *argv])}")
        if name == "c-uring-echo":
            cc = first_line("cc", "--version") or "cc not installed"
            peers[-1] += f" (built with {shlex.join(build_argv(URING_ECHO, opts.out))}; {cc})"
    # liburing: the Debian packages' versions (runtime and headers), else pkg-config's.
    debs = {p: first_line("dpkg-query", "-W", "-f=${Version}", p) for p in DEBS}
    liburing = ", ".join(f"{p} {v}" for p, v in debs.items() if "no packages" not in v and v)
    pkgconfig = first_line("pkg-config", "--modversion", "liburing")
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = re.findall(r"^model name\s*:\s*(.*?)\s*$", cpuinfo, re.M)
    wrk_version = first_line(wrk, "-v").split(" Copyright")[0].strip() if wrk else ""
    return Metadata(
        started_at=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        protocol=opts.protocol, duration_s=opts.duration, warmup_s=opts.warmup,
        repeat=opts.repeat, echo_pipeline=opts.pipeline, kernel=platform.release(),
        cpu_model=(models or [platform.processor() or "unknown"])[0],
        cpu_count=len(os.sched_getaffinity(0)), python=platform.python_version(),
        liburing=liburing or (f"liburing {pkgconfig}" if pkgconfig else "unknown"),
        h11=version("h11"), locust=version("locust"),
        wrk=wrk_version or ("unknown" if wrk else "not installed"), pinning=pinning.description,
        server_command=shown([*env, *our_argv(mine, opts, pinning.server_prefix)]),
        peers="; ".join(peers), uvloop=version("uvloop"), uvicorn=version("uvicorn"),
        parsers=",".join(opts.http) if opts.protocol == "http" else "",
        granian=version("granian"),
        app=opts.app if opts.protocol == "http" else "", httptools=version("httptools"),
        commit=commit_of(PROJECT_ROOT), fastapi=version("fastapi"),
        starlette=version("starlette"), pydantic=version("pydantic"),
        baseline_checkout=f"{opts.baseline} at {commit_of(opts.baseline)}" if opts.baseline else "",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Job:
    tool: LoadTool
    backend: str  # the server's name (`Server.name`)
    connections: int
    run: int  # 1-based


def plan_jobs(opts: argparse.Namespace, tools: Sequence[LoadTool]) -> list[Job]:
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


def start_server(job: Job, opts: argparse.Namespace, pinning: Pinning, log: Path) -> ServerProcess:
    """Start `job`'s server (ours or a peer) and return it listening; ServerStartError if not."""
    if (mine := opts.lineup[job.backend]).ours:
        argv = our_argv(mine, opts, pinning.server_prefix)
        server = ServerProcess(argv, log)
        if mine.baseline:  # its own server/ and uring_backend/
            env, cwd = baseline_env(opts.baseline), opts.baseline
            server = servers.BaselineProcess(argv, log, env=env, cwd=cwd)
        server.start()
        return server
    host = URING_ECHO_HOST if job.backend == "c-uring-echo" else opts.host
    for attempt in range(1, 1 + (1 if opts.port else PEER_START_TRIES)):
        port = opts.port or free_port(host)
        argv = peer_argv(job.backend, opts, port, pinning.server_prefix)
        clean = PEER_CLEAN_EXITS.get(job.backend, (0,))
        env = {**os.environ, **PEER_ENV[job.backend]} if job.backend in PEER_ENV else None
        peer = servers.PeerProcess(argv, log, (host, port), clean, job.backend in ANNOUNCED, env)
        try:
            peer.start()
            return peer
        except ServerStartError as exc:
            if opts.port or attempt == PEER_START_TRIES or "already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def run_job(job: Job, opts: argparse.Namespace, pinning: Pinning, logs: Path) -> Result:
    """One fresh server, one measurement, the server stopped again."""
    stem = f"{opts.protocol}-{job.tool.name}-c{job.connections}-{job.backend}-r{job.run}"
    workload = WORKLOADS[opts.app] if opts.protocol == "http" else None
    with start_server(job, opts, pinning, logs / f"{stem}.server.log") as server:
        if workload is not None:
            check_answer(server.address, workload.path, workload.body)
        window = tools.Window(server.snapshot)
        spec = tools.LoadSpec(opts.protocol, *server.address, job.connections, opts.duration,
                              opts.warmup, pinning.generator_prefix, pinning.generator_cpus,
                              logs / stem)  # fmt: skip
        if workload is not None:
            spec = dataclasses.replace(spec, path=workload.path, locust_user=workload.locust_user)
        measured = job.tool.run(spec, window)
        if window.before is None or window.after is None:
            raise RunError(f"{job.tool.name} did not report a measurement window")
        peak_rss_kib = server.peak_rss_kib()
        status = server.stop()
    mine = opts.lineup[job.backend]
    return results.result_from_run(opts.protocol, job.tool.name, job.backend, job.connections,
                                   measured, window.before, window.after, peak_rss_kib, status,
                                   http=mine.http, baseline=mine.baseline)  # fmt: skip


def check_answer(address: tuple[str, int], path: str, body: bytes, timeout: float = 10.0) -> None:
    """One ``GET path`` on a fresh connection: RunError unless it is a 200 with exactly
    `body`, so a broken app (a 404, a 500, another answer) cannot benchmark as fast."""
    host, port = address
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        status, got = resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise RunError(f"GET {path} before the load failed: {exc!r}") from None
    finally:
        conn.close()
    if status != 200 or got != body:
        raise RunError(f"GET {path} before the load answered {status} {got[:200]!r}, expected "
                       f"200 {body[:200]!r}: a broken app would benchmark as fast")  # fmt: skip


def run_all(
    jobs: Sequence[Job], opts: argparse.Namespace, pinning: Pinning, logs: Path
) -> tuple[list[Result], str | None]:
    """Every job, progress on stderr; the results and the first failure (None: none)."""
    done: list[Result] = []
    width, name_width = len(str(len(jobs))), max(len(s) for s in opts.servers)
    started = time.monotonic()
    for i, job in enumerate(jobs, start=1):
        where = f"c={job.connections:<5} {job.backend:<{name_width}} run {job.run}/{opts.repeat}"
        label = f"[{i:>{width}}/{len(jobs)}] {opts.protocol} {job.tool.name:<11} {where}"
        print(f"{label} ...", file=sys.stderr, flush=True)
        try:
            r = run_job(job, opts, pinning, logs)
        except (ServerStartError, RunError) as exc:
            return done, f"{label}: {exc}"
        done.append(r)
        per = "-" if r.syscalls_per_request is None else f"{r.syscalls_per_request:.2f}"
        print(f"{label}: {r.requests_per_s:>10,.0f} req/s  p99 {r.p99_ms:6.2f} ms  {r.errors} "
              f"errors  {per} syscalls/req  server {r.cpu_s:.2f} CPU-s  client CPU "
              f"{r.client_cpu_util * 100:.0f}%{' (client-bound)' * results.client_bound(r)}  "
              f"[{time.monotonic() - started:.0f} s]",
              file=sys.stderr, flush=True)  # fmt: skip
        if r.server_exit_status != 0:
            warning = f"warning: the server exited with status {r.server_exit_status}"
            print(f"{label}: {warning}", file=sys.stderr)
    return done, None


def measure_ceiling(
    opts: argparse.Namespace, pinning: Pinning, logs: Path, meta: Metadata, parser: str,
    *, end: bool = False,
) -> Metadata:  # fmt: skip
    """`loadtest.h11_ceiling` for `parser` and the workload, on the server's CPU, into `meta`
    (a failure only warns)."""
    when, name = "after the runs" if end else "before the runs", f"{parser} ceiling"
    print(f"{name} (in memory, the server's CPU, {when}) ...", file=sys.stderr, flush=True)
    argv = [sys.executable, "-m", "loadtest.h11_ceiling", "--json", "--duration",
            str(opts.duration), "--warmup", str(min(opts.warmup, 2.0)), "--http", parser,
            "--path", WORKLOADS[opts.app].path, *WORKLOADS[opts.app].ours]  # fmt: skip
    if pinning.server_cpu is not None:
        argv += ["--cpu", str(pinning.server_cpu)]
    try:
        timeout = opts.duration + opts.warmup + tools.SLACK_S
        status, out, err = tools.run_command(f"the {name}", argv, timeout)
        (logs / f"{parser}_ceiling{'_end' if end else ''}.log").write_text(out + err)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if status != 0 or not lines:
            raise RunError(f"the {name} exited with status {status}:\n{err.strip()}")
        ceiling = json.loads(lines[-1])
    except (RunError, ValueError) as exc:
        print(f"compare: warning: no {name} {when}: {exc}", file=sys.stderr)
        return meta
    rps, us = float(ceiling["requests_per_s"]), float(ceiling["us_per_request"])
    print(f"{name}: {rps:,.0f} req/s in memory, {us:.2f} us/request", file=sys.stderr)
    if end:
        return dataclasses.replace(meta, **{f"{parser}_ceiling_end_rps": rps})
    return dataclasses.replace(
        meta, **{f"{parser}_ceiling_rps": rps, f"{parser}_ceiling_us_per_request": us}
    )


def write_outputs(
    out: Path, runs: Sequence[Result], names: Sequence[str], meta: Metadata
) -> tuple[list[Result], list[Path]]:
    """Medians per (tool, connections, server), in run order, and every file."""
    groups: dict[tuple[str, int, str], list[Result]] = {}
    for r in runs:
        groups.setdefault((r.tool, r.connections, r.backend), []).append(r)
    medians = [results.median_result(rs) for rs in groups.values()]
    results.write_csv(out / "results.csv", results.records(medians, meta))
    results.write_json(out / "results.json", results.records(medians, meta))
    results.write_csv(out / "runs.csv", results.records(runs, meta))
    pngs = results.plot(medians, names, meta, out)
    return medians, [out / "results.csv", out / "results.json", out / "runs.csv", *pngs]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    wrk = shutil.which("wrk")
    try:
        native = opts.echo_client == "native" and opts.pipeline == 1
        echo_bench = None
        if opts.protocol == "echo" and "saturation" in opts.tools and native:
            echo_bench = build(ECHO_BENCH, opts.out)
        if opts.protocol == "http" and "saturation" in opts.tools and wrk is None:
            raise SetupError("the HTTP saturation tool is wrk, which is not installed: "
                             "apt-get install wrk (or run --tools locust)")  # fmt: skip
        saturation = LoadTool("wrk", partial(tools.run_wrk, str(wrk)))
        if opts.protocol == "echo":
            echo = partial(tools.run_echo_client, opts.pipeline, echo_bench)
            saturation = LoadTool("echo-client", echo)
        generators = [saturation if t != "locust" else LOCUST for t in opts.tools]
        if opts.port != 0:
            free_port(opts.host, opts.port)
        needed = dict.fromkeys(PEER_NEEDS[p] for p in opts.peers if p in PEER_NEEDS)
        if missing := [m for m in needed if importlib.util.find_spec(m) is None]:
            raise SetupError(f"--peers needs {', '.join(missing)}, which is not installed: "
                             "pip install -e '.[loadtest]'")  # fmt: skip
        if (need := WORKLOADS[opts.app].needs) and importlib.util.find_spec(need) is None:
            raise SetupError(f"--app {opts.app} needs {need}, which is not installed: "
                             f"pip install -e '.[{need}]'")  # fmt: skip
        logs = opts.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if "c-uring-echo" in opts.peers:
            build(URING_ECHO, opts.out)
            built = shlex.join(build_argv(URING_ECHO, opts.out))
            print(f"compare: built c-uring-echo: {built}", file=sys.stderr)
    except (SetupError, RunError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 1
    raise_fd_limit(max(opts.connections) + FD_MARGIN)
    pinning = plan_pinning(sorted(os.sched_getaffinity(0)), shutil.which("taskset"))
    meta = collect_metadata(opts, pinning, wrk)
    peers = f", peers {', '.join(opts.peers)}" if opts.peers else ""
    if opts.skipped:
        peers += f" ({', '.join(opts.skipped)} skipped: they cannot serve --app {opts.app})"
    if opts.protocol == "http":
        peers = f", parsers {meta.parsers}, app {opts.app}{peers}"
    if opts.baseline:
        peers += f"\nbaseline: {meta.baseline_checkout} (@base); this checkout at {meta.commit}"
    framework = ""
    if opts.app == "fastapi":
        framework = (
            f"; fastapi {meta.fastapi}; starlette {meta.starlette}; pydantic {meta.pydantic}"
        )
    print(
        f"ringserve compare: {opts.protocol}, backends {', '.join(opts.backends)}{peers}\n"
        f"tools {', '.join(t.name for t in generators)}, connections "
        f"{', '.join(map(str, opts.connections))} (Locust: at most {opts.users} users), "
        f"{opts.duration} s per point after {opts.warmup:g} s warm-up, {opts.repeat} run(s) each"
        f"\nkernel {meta.kernel}; {meta.cpu_model} x{meta.cpu_count}; Python {meta.python}; "
        f"{meta.liburing}; h11 {meta.h11}; httptools {meta.httptools}; locust {meta.locust}; "
        f"{meta.wrk}{framework}\npinning: {pinning.description}\noutput: {opts.out}",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    status, runs = 0, []
    try:
        ceiling = opts.protocol == "http" and "saturation" in opts.tools
        for parser in opts.http if ceiling else ():
            meta = measure_ceiling(opts, pinning, logs, meta, parser)
        runs, failure = run_all(plan_jobs(opts, generators), opts, pinning, logs)
        for parser in opts.http if ceiling and runs and failure is None else ():
            meta = measure_ceiling(opts, pinning, logs, meta, parser, end=True)
        if failure is not None:
            print(f"compare: error: {failure}\ncompare: the logs are in {logs}", file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        print("compare: interrupted", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if leftovers := servers.kill_all():
            print(f"compare: killed leftover processes {leftovers}", file=sys.stderr)
    if runs:
        medians, files = write_outputs(opts.out, runs, opts.servers, meta)
        table = results.tables(medians, opts.servers, meta, ratio_pairs(opts.lineup))
        print(f"\n{table}\n\nwritten: {', '.join(map(str, files))}")
    return status


if __name__ == "__main__":
    sys.exit(main())
