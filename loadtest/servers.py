"""Child processes: spawned with cleanup, our server under test, and the peer servers.

Every process started here leads its own session (its process group is its
pid) and is registered, so `kill_all()` in ``compare``'s ``finally`` leaves
nothing running.  `ServerProcess` reads ``python -m server`` through its
JSON lines only: ready at ``{"event": "listening"}`` (printed once it
accepts, its signal handlers installed), counters as ``{"event": "stats"}``
on SIGUSR1, and ``{"event": "exit"}``; stderr is the log.  CPU, RSS and fds
come from psutil, CPU and RSS over the process tree.  A peer (`PeerProcess`)
has no counters: our peer programs announce themselves with the same
listening line, uvicorn and granian are ready once their process tree owns
a listening socket on the port.  `BaselineProcess` is our server from another checkout,
which may be old enough to announce itself with its banner on stderr only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from loadtest import PROJECT_ROOT

# A log line at ERROR or above, or a traceback.
_ERROR_LINE = re.compile(r" (?:ERROR|CRITICAL) |^Traceback|^\S*Error: ")
_live: set[subprocess.Popen[str]] = set()
_live_lock = threading.Lock()


class ServerStartError(Exception):
    """The server exited or stayed silent instead of listening."""


class RunError(Exception):
    """A run is void: the load generator or the server failed during it."""


def spawn(
    argv: Sequence[str], env: Mapping[str, str] | None = None, nofile: int | None = None,
    cwd: Path = PROJECT_ROOT,
) -> subprocess.Popen[str]:  # fmt: skip
    """Start `argv` in `cwd`, in its own session, registered for `kill_all`."""
    limit = (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
        preexec_fn=functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, limit)
        if nofile is not None else None,
    )  # fmt: skip
    with _live_lock:
        _live.add(proc)
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    """Kill `proc`'s process group (its session: the load client's workers too) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    with _live_lock:
        _live.discard(proc)


def kill_all() -> list[int]:
    """Kill every process started here that is still running; returns their pids."""
    with _live_lock:
        procs = list(_live)
    killed = [p.pid for p in procs if p.poll() is None]
    for proc in procs:
        kill(proc)
    return killed


def pump(stream: IO[str], sink: Callable[[str], None]) -> threading.Thread:
    """A thread feeding `stream`'s lines to `sink`; it closes the stream at EOF.

    (Not when the Popen object is collected: a test's fd count would see that.)
    """

    def run() -> None:
        with contextlib.suppress(ValueError, OSError), stream:
            for line in stream:
                sink(line)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def process_tree(pid: int) -> list[psutil.Process]:
    """`pid` and its live descendants (granian's worker, uvicorn's reloader...); [] if gone."""
    with contextlib.suppress(psutil.Error):
        return [proc := psutil.Process(pid), *proc.children(recursive=True)]
    return []


def process_tree_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` and its live descendants ((0, 0) if gone).

    System time includes the kernel's work inside the process's syscalls: for
    uring, the socket work io_uring runs as task work inside ``io_uring_enter``.
    """
    user = system = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            user, system = user + times.user, system + times.system
    return user, system


def process_tree_rss(pid: int) -> int:
    """The summed RSS of `pid` and its live descendants, in bytes (0 if gone)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += int(p.memory_info().rss)
    return total


def owns_listener(pid: int, port: int) -> bool:
    """True once `pid` or a child has a TCP socket listening on `port` (a stray server won't do)."""
    with contextlib.suppress(psutil.Error):
        for p in process_tree(pid):
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    return True
    return False


def server_argv(
    backend: str, protocol: str = "http", args: Sequence[str] = (), host: str | None = "127.0.0.1",
    port: int = 0, prefix: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """``python -m server`` with these settings (`host` None: the server's default)."""
    where = [] if host is None else ["--host", host]
    server = [sys.executable, "-m", "server", "--backend", backend, "--protocol", protocol]
    return [*prefix, *server, *where, "--port", str(port), *args]


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """The server's counters (its /stats dict; None for a peer) and CPU seconds at one moment."""

    stats: dict[str, Any] | None
    user_s: float
    system_s: float


class ServerProcess:
    """A ``python -m server`` child (`argv`: e.g. `server_argv`): start, counters, RSS, stop.

    Its lines go to `stdout_lines` and `stderr_lines` (stderr also to
    `log_path`); the last JSON line of each event is in `events`.  As a
    context manager it starts it (unless started) and kills it at the end.
    """

    def __init__(self, argv: Sequence[str], log_path: Path | None = None, nofile: int | None = None,
                 env: Mapping[str, str] | None = None,
                 cwd: Path = PROJECT_ROOT) -> None:  # fmt: skip
        self.argv, self.log_path, self.nofile, self.env = list(argv), log_path, nofile, env
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.address: tuple[str, int] = ("", 0)  # set once it listens
        self.events: dict[str, dict[str, Any]] = {}  # the last JSON line of each event
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._stats: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()  # one SIGUSR1 request at a time
        self._log: IO[str] | None = None  # written by the stderr reader only
        self._readers: list[threading.Thread] = []
        self._peak_rss = 0
        self._stopped = threading.Event()

    def start(self, timeout: float = 20.0) -> tuple[str, int]:
        """Start it and wait until it is ready (ServerStartError if it exits or is late)."""
        self._log = None if self.log_path is None else self.log_path.open("w")
        self.proc = proc = spawn(self.argv, self.env, self.nofile, self.cwd)
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [pump(proc.stdout, self._on_stdout), pump(proc.stderr, self._on_stderr)]
        deadline = time.monotonic() + timeout
        while not self._ready():
            if (exited := proc.poll() is not None) or time.monotonic() > deadline:
                self._join_readers(2.0)  # its last words
                self.kill()
                why = f"exited with status {proc.returncode}" if exited else self._late(timeout)
                raise ServerStartError(f"the server {why}:\n{self._last_words()}")
            time.sleep(0.01)
        threading.Thread(target=self._sample_rss, daemon=True).start()
        return self.address

    listening = property(lambda self: self.events.get("listening", {}), doc="its listening line")
    exit_stats = property(lambda self: self.events.get("exit"), doc="its exit line, once it exits")

    def _ready(self) -> bool:
        if self.listening:
            self.address = (self.listening["host"], int(self.listening["port"]))
        return bool(self.listening)

    def _late(self, timeout: float) -> str:
        return f"printed no listening line within {timeout:.0f} s"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (kill after `timeout` s); returns its exit status."""
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self.kill()
        return self.proc.returncode

    def signal(self, signum: int) -> None:
        """Send `signum` to the server (nothing happens if it is gone)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Its exit status once it has exited and its output is read (else TimeoutExpired)."""
        assert self.proc is not None
        status = self.proc.wait(timeout)
        self._join_readers(5.0)
        return status

    def kill(self) -> None:
        """Kill it if it still runs, read the rest of its output and close the log."""
        self._stopped.set()
        if self.proc is not None:
            kill(self.proc)
            self._join_readers(2.0)  # they close the pipes at EOF
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """The counters now (SIGUSR1, then its stats line; TimeoutError or ProcessLookupError).

        A line that answered an earlier, timed-out request is dropped first.
        """
        with self._lock:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._stats.get_nowait()
            os.kill(self.pid, signal.SIGUSR1)
            try:
                return self._stats.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no stats line within {timeout} s") from None

    def snapshot(self, timeout: float = 10.0) -> ServerSnapshot:
        """Counters and CPU seconds together; RunError if the server is gone or silent."""
        user, system = process_tree_cpu_times(self.pid)
        try:
            return ServerSnapshot(self.stats(timeout), user, system)
        except (ProcessLookupError, TimeoutError):
            self._check_alive()
            raise RunError(f"the server did not answer SIGUSR1 within {timeout:.0f} s") from None

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            why = f"exited with status {self.proc.returncode} during the run"
            raise RunError(f"the server {why}:\n{self._last_words()}")

    def error_lines(self) -> list[str]:
        """Its log lines at ERROR or above, and tracebacks."""
        return [line for line in self.stderr_lines if _ERROR_LINE.search(line)]

    def rss_kib(self) -> int:
        """Its process tree's RSS now, in KiB (0 if it is gone)."""
        return process_tree_rss(self.pid) // 1024

    def fds(self) -> int:
        """How many fds it has open (-1 if it is gone)."""
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.pid).num_fds())
        return -1

    def peak_rss_kib(self) -> int:
        """The highest RSS seen (sampled every 0.1 s while it runs), in KiB."""
        return max(self._peak_rss // 1024, self.rss_kib())

    def _last_words(self) -> str:
        """Its error lines if it printed any (not the usage text), else its last lines."""
        tail = self.stderr_lines[-20:]
        errors = [line for line in tail if "error:" in line.lower()]
        return "".join(errors[-3:] or tail[-5:]).strip() or "(nothing on stderr)"

    def _join_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    def _on_stdout(self, line: str) -> None:
        self.stdout_lines.append(line)
        with contextlib.suppress(ValueError):
            record = json.loads(line) if line.startswith("{") else {}
            if (event := record.get("event")) == "stats":
                self._stats.put(record)
            elif event and not (event == "listening" and self.listening):
                self.events[event] = record

    def _on_stderr(self, line: str) -> None:
        self.stderr_lines.append(line)
        if self._log is not None:
            self._log.write(line)

    def _sample_rss(self) -> None:
        while not self._stopped.wait(0.1):
            self._peak_rss = max(self._peak_rss, process_tree_rss(self.pid))


class PeerProcess(ServerProcess):
    """A peer server: no counters; ready at its listening line if it `announces` one,
    else once its process tree listens on `address`'s port.

    `clean`: exit statuses `stop` reports as 0 (uvicorn re-raises the SIGTERM
    it handled, so it ends with -SIGTERM); `env`: its whole environment (None:
    ours).  Its stdout goes to the log too.
    """

    def __init__(
        self, argv: list[str], log: Path, address: tuple[str, int], clean: Sequence[int],
        announces: bool = False, env: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(argv, log, env=env)
        self.address, self.clean, self.announces = address, tuple(clean), announces

    def _ready(self) -> bool:
        return super()._ready() if self.announces else owns_listener(self.pid, self.address[1])

    def _late(self, timeout: float) -> str:
        if self.announces:
            return super()._late(timeout)
        return f"did not listen on port {self.address[1]} within {timeout:.0f} s"

    def _on_stdout(self, line: str) -> None:
        super()._on_stdout(line)
        self._on_stderr(line)

    def snapshot(self, timeout: float = 10.0) -> ServerSnapshot:
        """CPU seconds only (`stats` is None); RunError if the peer is gone."""
        self._check_alive()
        return ServerSnapshot(None, *process_tree_cpu_times(self.pid))

    def stop(self, timeout: float = 30.0) -> int:
        status = super().stop(timeout)
        return 0 if status in self.clean else status


# An older server's banner on stderr: "... listening on http://HOST:PORT" (echo: "HOST:PORT").
_BANNER = re.compile(r"listening on (?:http://)?\[?([^\s\]]+?)\]?:(\d+)\s*$")


class BaselineProcess(ServerProcess):
    """Our server from another checkout (``compare --baseline``): also ready at its banner.

    A checkout older than the JSON listening line prints only the banner,
    so the address is read from it when no JSON line came first.
    """

    def _on_stderr(self, line: str) -> None:
        super()._on_stderr(line)
        if not self.listening and (m := _BANNER.search(line)):
            self.events["listening"] = {"event": "listening", "host": m[1], "port": int(m[2])}
