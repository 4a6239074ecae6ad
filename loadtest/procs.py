"""Child processes for `compare` and `soak`: the server under test and the load generators.

`ServerProcess` is our server as a child (`local_server` makes one on a
loopback port, as `soak` and ``tests/reliability`` use it).  Every process
started here is registered and starts its own session (so its
process group is its pid); `kill_all()` kills whatever is still running, and
`compare` calls it in a ``finally``, so no server or generator outlives a run
that fails or is interrupted.

The server's counters are read with SIGUSR1: the server prints one JSON line
``{"event": "stats", ...}`` on stdout at the end of its current loop pass,
and one ``{"event": "exit", ...}`` line as it exits.
A generator marks its measured window with `loadtest.WINDOW_START_MARKER`
and `loadtest.WINDOW_END_MARKER` on stderr; `run_generator` calls the
window hooks when it reads them, so the server's counters cover exactly the
window the generator reports on.

A peer server (`PeerProcess`: uvloop, uvicorn, the C echo server) has no such
counters: it is ready once it owns a listening socket on its port, and its
snapshots carry CPU seconds only.
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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from loadtest import PROJECT_ROOT, WINDOW_END_MARKER, WINDOW_START_MARKER

SERVER_START_TIMEOUT_S = 20.0
SNAPSHOT_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 5.0
RSS_SAMPLE_INTERVAL_S = 0.1
_LISTENING = re.compile(r"listening on (?:http://)?(\[[^\]]+\]|[^\s:]+):(\d+)")
# A log line at ERROR or above, or a traceback.
_ERROR_LINE = re.compile(r" (?:ERROR|CRITICAL) |^Traceback|^\S*Error: ")

_live: set[subprocess.Popen[str]] = set()
_live_lock = threading.Lock()


class ServerStartError(Exception):
    """The server exited or stayed silent instead of listening."""


class GeneratorError(Exception):
    """A load generator failed, timed out or did not report its window."""


def spawn(argv: Sequence[str], cwd: Path, nofile: int | None = None) -> subprocess.Popen[str]:
    """Start `argv` in its own session, registered for `kill_all`.

    `nofile`: the child's RLIMIT_NOFILE soft limit (None: inherited).
    """
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,
        preexec_fn=None if nofile is None else functools.partial(_limit_nofile, nofile),
    )
    with _live_lock:
        _live.add(proc)
    return proc


def _limit_nofile(soft: int) -> None:
    """In the child, before exec: set its RLIMIT_NOFILE soft limit to `soft`."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def kill(proc: subprocess.Popen[str]) -> None:
    """Kill `proc`'s process group and reap it.

    It leads its own session, so the group also holds anything it started
    (the echo client's workers) even after it exited itself.
    """
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


def _pump(stream: IO[str], sink: Callable[[str], None]) -> threading.Thread:
    """A thread feeding `stream`'s lines to `sink`; it closes the stream at EOF.

    Closing here, not when the Popen object is collected, keeps the pipe's
    fd from closing at some later moment (a test's fd count would see it).
    """

    def run() -> None:
        with contextlib.suppress(ValueError, OSError):
            try:
                for line in stream:
                    sink(line)
            finally:
                stream.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _proc_status(pid: int, key: str) -> str | None:
    """The first word after `key` in /proc/PID/status (None if unreadable or absent)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == key:
                    return value.split()[0]
    except (OSError, IndexError):
        pass
    return None


def process_tree_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` and its live descendants ((0, 0) if gone).

    System time includes what the kernel does on the process's behalf inside
    its syscalls: for the uring backend, the socket work io_uring runs as task
    work inside ``io_uring_enter`` (DEFER_TASKRUN); user time is the
    interpreter, cffi and liburing.
    """
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    user = system = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            user += times.user
            system += times.system
    return user, system


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (0 if gone)."""
    return sum(process_tree_cpu_times(pid))


def children_cpu_s() -> float:
    """CPU seconds of every child this process has reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """The server's counters (its /stats dict) and its CPU seconds at one moment.

    `stats` is None for a server without counters (a peer).
    """

    stats: dict[str, Any] | None
    user_s: float
    system_s: float
    at: float  # time.monotonic()

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


class ServerProcess:
    """A ``python -m server`` child: start, read its counters, sample RSS, signal, stop.

    Its stdout is read line by line: the JSON ``stats`` lines (see `stats` and
    `snapshot`) and the ``exit`` line (`exit_stats`).  Every stderr line is
    kept in `stderr_lines` (the log) and, with a `log_path`, written there
    too.  As a context manager it starts the server (unless `start` was
    called already) and kills it on the way out.

    Args:
        argv: the whole command (with any ``taskset`` prefix).
        cwd: where to run it (the project root, so ``-m server`` resolves).
        log_path: the server's stderr goes here (None: kept in memory only).
        nofile: the child's RLIMIT_NOFILE soft limit (None: inherited).
    """

    def __init__(
        self,
        argv: Sequence[str],
        cwd: Path,
        log_path: Path | None = None,
        nofile: int | None = None,
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.log_path = log_path
        self.nofile = nofile
        self.proc: subprocess.Popen[str] | None = None
        self.address: tuple[str, int] = ("", 0)  # set once it listens
        self.stderr_lines: list[str] = []
        self.exit_stats: dict[str, Any] | None = None
        self._stats: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stats_lock = threading.Lock()
        self._listening = threading.Event()
        self._readers: list[threading.Thread] = []
        self._peak_rss = 0
        self._stop_sampling = threading.Event()
        self._log: IO[str] | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> tuple[str, int]:
        """Start the server; wait for its "listening on" line and its signal handlers.

        Returns:
            The address it listens on (also in `address`).

        Raises:
            ServerStartError: it exited, or did not listen and catch its
                signals within `timeout` s; the message carries its last
                stderr lines.
        """
        self._open_log()
        self.proc = proc = spawn(self.argv, self.cwd, self.nofile)
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [_pump(proc.stdout, self._on_stdout), _pump(proc.stderr, self._on_stderr)]
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            self._fail_if_not_started(deadline, f"did not start listening within {timeout:.0f} s")
        self._wait_for_signal_handlers(deadline, timeout)
        threading.Thread(target=self._sample_rss, daemon=True).start()
        return self.address

    def _wait_for_signal_handlers(self, deadline: float, timeout: float) -> None:
        """Wait until the server catches SIGTERM and SIGUSR1 (its SigCgt mask in /proc says so).

        Our server installs its handlers before it logs "listening on"; this
        guards against a build where that is not so, since a signal that
        arrives before the handlers exist kills it with the default action.

        Raises:
            ServerStartError: it exited, or still did not catch them at `deadline`.
        """
        wanted = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGUSR1 - 1))
        while True:
            caught = _proc_status(self.pid, "SigCgt")
            if caught is not None and int(caught, 16) & wanted == wanted:
                return
            self._fail_if_not_started(
                deadline, f"did not catch SIGTERM and SIGUSR1 within {timeout:.0f} s"
            )
            if caught is None:
                time.sleep(0.5)  # no /proc: give it a moment
                return
            time.sleep(0.01)

    def _fail_if_not_started(self, deadline: float, late: str) -> None:
        """Kill it and raise if it exited or `deadline` passed (`late` says what it missed).

        Raises:
            ServerStartError: with its last stderr lines.
        """
        proc = self.proc
        assert proc is not None
        exited = proc.poll() is not None
        if exited or time.monotonic() > deadline:
            time.sleep(0.1)  # let the reader catch the last words
            self.kill()
            why = f"exited with status {proc.returncode}" if exited else late
            raise ServerStartError(f"the server {why}:\n{self._last_words()}")

    def _terminate(self, timeout: float) -> subprocess.Popen[str]:
        """SIGTERM and wait; kill after `timeout` s.  Returns the finished process."""
        proc = self.proc
        assert proc is not None
        self._stop_sampling.set()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return proc

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (kill after `timeout` s); then `exit_stats` holds its exit line.

        Returns:
            Its exit status.
        """
        proc = self._terminate(timeout)
        self._join_readers(2.0)
        with _live_lock:
            _live.discard(proc)
        self._close_log()
        return proc.returncode

    def signal(self, signum: int) -> None:
        """Send `signum` to the server (nothing happens if it is gone)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the server to exit and its output to be read (`exit_stats`, `stderr_lines`).

        Returns:
            Its exit status.

        Raises:
            subprocess.TimeoutExpired: it is still running after `timeout` s.
        """
        assert self.proc is not None
        status = self.proc.wait(timeout)
        self._join_readers(5.0)
        return status

    def kill(self) -> None:
        self._stop_sampling.set()
        if self.proc is not None:
            kill(self.proc)
            self._join_readers(2.0)  # they close the pipes at EOF
        self._close_log()

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -- measurements --------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self, timeout: float = STATS_TIMEOUT_S) -> dict[str, Any]:
        """The server's counters now (SIGUSR1 makes it print them on stdout).

        Raises:
            TimeoutError: no stats line within `timeout` s.
            ProcessLookupError: the server is gone.
        """
        stats = self._request_stats(timeout)
        if stats is None:
            raise TimeoutError(f"no stats line within {timeout} s")
        return stats

    def snapshot(self, timeout: float = SNAPSHOT_TIMEOUT_S) -> ServerSnapshot:
        """Counters via SIGUSR1 plus CPU seconds via psutil, taken together.

        Raises:
            GeneratorError: the server is gone or did not answer (the run is void).
        """
        user, system = process_tree_cpu_times(self.pid)
        at = time.monotonic()
        try:
            stats = self._request_stats(timeout)
        except ProcessLookupError:
            raise GeneratorError("the server died during the run") from None
        if stats is None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise GeneratorError(
                    f"the server exited with status {self.proc.returncode} during the run:\n"
                    + self._last_words()
                )
            raise GeneratorError(f"the server did not answer SIGUSR1 within {timeout:.0f} s")
        return ServerSnapshot(stats, user, system, at)

    def error_lines(self) -> list[str]:
        """Its log lines at ERROR or above, and tracebacks."""
        return [line for line in self.stderr_lines if _ERROR_LINE.search(line)]

    def rss_kib(self) -> int:
        """Its RSS now (VmRSS), in KiB (0 if it is gone)."""
        rss = _proc_status(self.pid, "VmRSS")
        return 0 if rss is None else int(rss)

    def fds(self) -> int:
        """How many fds it has open (-1 if it is gone)."""
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return -1

    def peak_rss_kib(self) -> int:
        """The highest RSS seen: the kernel's VmHWM if readable, else the samples."""
        peak = self._peak_rss
        with contextlib.suppress(ValueError):
            if (hwm := _proc_status(self.pid, "VmHWM")) is not None:
                peak = max(peak, int(hwm) * 1024)
        return peak // 1024

    # -- internals -----------------------------------------------------------

    def _last_words(self) -> str:
        """Its error lines if it printed any (not the usage text), else its last lines."""
        tail = self.stderr_lines[-20:]
        errors = [line for line in tail if "error:" in line.lower()]
        return "".join(errors[-3:] or tail[-5:]).strip() or "(nothing on stderr)"

    def _request_stats(self, timeout: float) -> dict[str, Any] | None:
        """SIGUSR1, then the stats line it prints (None if none within `timeout` s).

        A line that answered an earlier, timed-out request is dropped first.

        Raises:
            ProcessLookupError: the server is gone.
        """
        with self._stats_lock:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._stats.get_nowait()
            os.kill(self.pid, signal.SIGUSR1)
            try:
                return self._stats.get(timeout=timeout)
            except queue.Empty:
                return None

    def _join_readers(self, timeout: float) -> None:
        """Wait (up to `timeout` s) for the readers to reach the end of its output."""
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    def _on_stdout(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            record = json.loads(line)
        except ValueError:
            return
        if record.get("event") == "exit":
            self.exit_stats = record
        elif record.get("event") == "stats":
            self._stats.put(record)

    def _on_stderr(self, line: str) -> None:
        self.stderr_lines.append(line)
        log = self._log
        if log is not None:
            with contextlib.suppress(ValueError):
                log.write(line)
        if not self._listening.is_set() and (m := _LISTENING.search(line)):
            self.address = (m.group(1).strip("[]"), int(m.group(2)))
            self._listening.set()

    def _sample_rss(self) -> None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            while not self._stop_sampling.wait(RSS_SAMPLE_INTERVAL_S):
                self._peak_rss = max(self._peak_rss, proc.memory_info().rss)

    def _open_log(self) -> None:
        if self.log_path is not None:
            self._log = self.log_path.open("w")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def local_server(
    backend: str, protocol: str = "http", args: Sequence[str] = (), nofile: int | None = None
) -> ServerProcess:
    """Our server on 127.0.0.1 and a port the kernel picks; not started, no log file.

    Its `argv` can still be changed before it starts.

    Args:
        backend: ``uring`` or ``epoll``.
        protocol: ``http`` or ``echo``.
        args: more command-line options for the server.
        nofile: the child's RLIMIT_NOFILE soft limit (None: inherited).
    """
    argv = [
        sys.executable, "-m", "server", "--backend", backend, "--protocol", protocol,
        "--host", "127.0.0.1", "--port", "0", *args,
    ]  # fmt: skip
    return ServerProcess(argv, PROJECT_ROOT, nofile=nofile)


def owns_listener(pid: int, port: int) -> bool:
    """True once `pid` (or a child of it) has a TCP socket listening on `port`.

    Stronger than connecting to the port: a stray server on the same port
    does not count.  Where /proc cannot tell (access denied), a connect does.
    """
    try:
        proc = psutil.Process(pid)
        for p in (proc, *proc.children(recursive=True)):
            for conn in p.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return True
    except psutil.AccessDenied:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except psutil.Error:
        pass
    return False


class PeerProcess(ServerProcess):
    """A peer server (no counters, no SIGUSR1): start, CPU snapshots, sample RSS, stop.

    It is ready once it listens on `address`'s port (its own "listening"
    line, if any, only goes to the log).  Its stdout and stderr both go to
    the log, and only their last 20 lines to `stderr_lines` (a peer may log
    every request).  `clean_exits`: exit statuses that mean a graceful stop (uvicorn
    re-raises the SIGTERM it handled, so it ends with -SIGTERM); `stop`
    reports them as 0.
    """

    def __init__(
        self,
        argv: Sequence[str],
        cwd: Path,
        log_path: Path,
        address: tuple[str, int],
        clean_exits: Sequence[int] = (0,),
    ) -> None:
        super().__init__(argv, cwd, log_path)
        self.expected_address = address
        self.clean_exits = tuple(clean_exits)
        self._log_lock = threading.Lock()

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> tuple[str, int]:
        """Start the peer and wait until it listens.

        Raises:
            ServerStartError: it exited or did not listen within `timeout` s.
        """
        self._open_log()
        self.proc = proc = spawn(self.argv, self.cwd)
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [_pump(proc.stdout, self._on_stderr), _pump(proc.stderr, self._on_stderr)]
        deadline = time.monotonic() + timeout
        port = self.expected_address[1]
        while not owns_listener(proc.pid, port):
            self._fail_if_not_started(
                deadline, f"did not listen on port {port} within {timeout:.0f} s"
            )
            time.sleep(0.02)
        self.address = self.expected_address
        threading.Thread(target=self._sample_rss, daemon=True).start()
        return self.address

    def snapshot(self, timeout: float = SNAPSHOT_TIMEOUT_S) -> ServerSnapshot:
        """CPU seconds only (`stats` is None).

        Raises:
            GeneratorError: the peer is gone.
        """
        if not self.alive():
            assert self.proc is not None
            raise GeneratorError(
                f"the server exited with status {self.proc.returncode} during the run:\n"
                + self._last_words()
            )
        return ServerSnapshot(None, *process_tree_cpu_times(self.pid), time.monotonic())

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait (kill after `timeout` s); a clean exit status reads 0."""
        proc = self._terminate(timeout)
        with _live_lock:
            _live.discard(proc)
        time.sleep(0.05)  # let the readers log the last lines
        self._close_log()
        return 0 if proc.returncode in self.clean_exits else proc.returncode

    def _on_stderr(self, line: str) -> None:
        self.stderr_lines = [*self.stderr_lines[-19:], line]
        with self._log_lock:
            log = self._log
            if log is not None:
                with contextlib.suppress(ValueError):
                    log.write(line)

    def _close_log(self) -> None:
        with self._log_lock:
            super()._close_log()


class WindowHooks:
    """What to do when a generator's measured window opens and closes."""

    def open(self) -> None:
        """The window opens (after the warm-up)."""

    def close(self) -> None:
        """The window closes."""


@dataclass(frozen=True, slots=True)
class GeneratorRun:
    """How a generator process went."""

    returncode: int
    stdout: str
    stderr_tail: str
    cpu_s: float  # the generator's CPU seconds inside the window
    window_s: float  # wall-clock seconds between the hooks


def run_generator(
    name: str,
    argv: Sequence[str],
    cwd: Path,
    hooks: WindowHooks,
    log_path: Path,
    timeout: float,
    markers: bool,
) -> GeneratorRun:
    """Run a load generator to completion, calling `hooks` around its measured window.

    With `markers`, the window is what the generator marks on stderr and its
    CPU time is read with psutil at the markers.  Without, the window is the
    process's whole life (the hooks run just before it starts and just after
    it exits) and its CPU time comes from getrusage(RUSAGE_CHILDREN).

    Raises:
        GeneratorError: it timed out, or (with `markers`) never opened its window.
    """
    events: queue.Queue[str] = queue.Queue()
    out: list[str] = []
    tail: list[str] = []
    with log_path.open("w") as log:

        def on_stderr(line: str) -> None:
            tail[:] = [*tail[-29:], line]
            with contextlib.suppress(ValueError):
                log.write(line)
            if WINDOW_START_MARKER in line:
                events.put("open")
            elif WINDOW_END_MARKER in line:
                events.put("close")

        cpu_before = children_cpu_s()
        opened_at = time.monotonic()
        if not markers:
            hooks.open()
        proc = spawn(argv, cwd)
        assert proc.stdout is not None and proc.stderr is not None
        readers = [_pump(proc.stdout, out.append), _pump(proc.stderr, on_stderr)]

        def wait_for_exit() -> None:
            proc.wait()
            events.put("exit")

        threading.Thread(target=wait_for_exit, daemon=True).start()
        deadline = time.monotonic() + timeout
        state = "before" if markers else "open"
        cpu_open = cpu_close = 0.0
        closed_at = opened_at
        try:
            while True:
                try:
                    event = events.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise GeneratorError(f"{name} did not finish within {timeout:.0f} s") from None
                if event == "open" and state == "before":
                    cpu_open = process_tree_cpu_s(proc.pid)
                    opened_at = time.monotonic()
                    hooks.open()
                    state = "open"
                elif event == "close" and state == "open" and markers:
                    cpu_close = process_tree_cpu_s(proc.pid)
                    closed_at = time.monotonic()
                    hooks.close()
                    state = "closed"
                elif event == "exit":
                    break
        finally:
            kill(proc)
        for reader in readers:
            reader.join(5)
        if not markers:
            closed_at = time.monotonic()
            hooks.close()
            cpu_open, cpu_close = cpu_before, children_cpu_s()
        elif state == "before":
            raise GeneratorError(
                f"{name} exited with status {proc.returncode} before its measurement "
                f"window opened:\n{''.join(tail[-8:]).strip()}"
            )
        elif state == "open":  # exited without the end marker: close at exit
            closed_at = time.monotonic()
            hooks.close()
    return GeneratorRun(
        returncode=proc.returncode,
        stdout="".join(out),
        stderr_tail="".join(tail),
        cpu_s=max(0.0, cpu_close - cpu_open),
        window_s=closed_at - opened_at,
    )


def run_quietly(name: str, argv: Sequence[str], cwd: Path, timeout: float) -> int:
    """Run a command (a warm-up) to completion, output discarded; returns its status."""
    proc = spawn(argv, cwd)
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GeneratorError(f"{name} did not finish within {timeout:.0f} s") from None
    finally:
        kill(proc)
    return proc.returncode


def run_command(name: str, argv: Sequence[str], cwd: Path, timeout: float) -> tuple[int, str, str]:
    """Run a command to completion; returns its status, stdout and stderr."""
    proc = spawn(argv, cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GeneratorError(f"{name} did not finish within {timeout:.0f} s") from None
    finally:
        kill(proc)
    return proc.returncode, out, err
