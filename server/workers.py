"""``--workers N``: a supervising parent, N worker processes, sockets the parent owns.

The parent opens the listening sockets and forks the workers, which inherit
them; each worker is a whole single-threaded `Server` with its own backend
and ring.  The parent serves nothing: it restarts workers that die,
replaces them on SIGHUP and after ``--max-requests``, and forwards SIGTERM,
SIGINT and SIGUSR1.

The sockets: one per slot, never closed while the server runs
---------------------------------------------------------------

Each ``SO_REUSEPORT`` socket has its own accept queue, and closing one
resets the connections still queued in it (unless the
``net.ipv4.tcp_migrate_req`` sysctl is 1; it is 0 by default, and here).
The previous design had each worker bind its own ``SO_REUSEPORT`` socket,
so a worker that went away took its queue with it.  Measured on main
(3cd9054) with what a rolling restart does: ``--workers 2`` on a port, a
second ``--workers 2`` on the same port, and once it listened, SIGTERM to
the first; each figure is one 6 s run with that one reload in it (2 shared
cores, kernel 6.18):

========  ================================  =====================================
backend   wrk -t2 -c64 (keep-alive)         8 threads, a new connection each request
========  ================================  =====================================
epoll     65, 66, 69 read errors            5-14 resets, 1-5 closed before the response
uring     79, 83 read errors                3-5 resets, 0-1 closed before the response
========  ================================  =====================================

So the parent owns the sockets, and none of them is closed before the
server stops.  For TCP it opens one ``SO_REUSEPORT`` socket per slot (the
kernel spreads connections over them by a hash, as before); a slot's
worker, and the one that replaces it, serve that slot's socket, so a
replacement inherits the very queue its predecessor stops taking from, and
while a slot has no worker (a crash, a restart's backoff) its queue keeps
the connections for the next one.  Why not one socket for all slots, as
gunicorn and uvicorn have?  io_uring arms an accept as an exclusive waiter
on the socket, and a multishot accept stays armed, first in the wait
queue, so one worker gets every connection: under wrk -c64 on one shared socket two uring workers
served 0 and 33,332 requests; with a socket per slot, 21,199 and 14,397
(epoll: 19,973/27,403 shared, 36,740/23,975 per slot).  A socket the server
is given (``--uds``, ``--fd``, systemd's) is the one socket every slot
serves; with uring one worker then takes nearly all connections (8
keep-alive clients on a Unix socket: 0 and 57,437 requests; epoll: 13,072
and 14,555), which only a change to the uring backend's accept can cure.

The socket is not the whole story: a retiring worker that closed its idle
keep-alive connections at once (what SIGTERM does) would lose the requests
their clients had already sent.  So retiring is a drain, not a stop
(`WorkerServer._begin_drain`): the worker stops accepting, every
connection gets its next response with ``Connection: close`` (the
protocol's `drain()`), and once none is left, or after
``--timeout-keep-alive`` (what an idle connection gets anyway), it stops as
on SIGTERM.  Measured the same way, with two SIGHUPs in each 6 s run: 0
errors for both backends and both clients in 12 runs (24 reloads); the
same with the old workers stopped as on SIGTERM instead of drained: 158 and
141 wrk read errors, and 5 connections closed before their response
(epoll).  ``tests/test_workers.py`` runs that load.

The parent's rules
------------------

- Each of the N slots has a serving worker (``current``) and at most one
  starting (``pending``).  A pending worker that says it is ready (a byte
  on its pipe, written once it serves) becomes the current one, and the
  one it replaces is retired: sent ``RETIRE_SIGNAL``, it drains and exits 0.
- SIGHUP starts a pending worker in every slot (a fresh fork, which
  imports the ``--app`` again: new code takes effect); the server's own
  options are not re-read.
- ``--max-requests``: a worker that has served its N (+ jitter) requests
  drains itself at once (that response already says ``Connection:
  close``) and says so on its pipe; the parent starts its replacement.  The
  slot's socket holds new connections meanwhile.
- A worker that exits unexpectedly is logged with its status or signal and
  restarted.  One that dies before it is ready or within
  ``STARTUP_WINDOW_S`` of its start died "at start-up": its slot is
  restarted after a backoff (``BACKOFF_FIRST_S``, doubling), and after
  ``MAX_EARLY_DEATHS`` such deaths in a row the parent gives up: it stops
  the other workers and exits 1.  A replacement that keeps dying while the
  old worker still serves is given up on instead, and the old one kept
  until the next SIGHUP.
- SIGTERM or SIGINT: the parent forwards it to every worker that is not
  already retiring and closes its own copies of the sockets (so
  connections are refused once the workers stop accepting, as with one
  process); it exits 0 once every worker has exited 0.  A second one is
  forwarded to all, retiring ones too: they stop without waiting for the
  requests in flight.
- SIGUSR1 goes to every ready worker, which prints its statistics line.

Workers run in their own process group, so a Ctrl-C in a terminal reaches
the parent only (a worker that got it from the terminal and again from the
parent would take the second one as "stop now"), and they get SIGTERM if
the parent dies (``PR_SET_PDEATHSIG``) instead of serving on unsupervised.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from server.apps.asgi import AsgiApp, Receive, Scope, Send
from server.config import Config
from server.lifecycle import Server
from server.listeners import Listener, ListenerError, open_listeners
from server.protocols import ServerProtocol
from server.protocols.http.common import App, Request, Response

logger = logging.getLogger("server.workers")

RETIRE_SIGNAL: Final = signal.SIGUSR2  # parent -> worker: drain, then exit
STARTUP_WINDOW_S: Final = 5.0
MAX_EARLY_DEATHS: Final = 5
BACKOFF_FIRST_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
DRAIN_POLL_S: Final = 0.05
# Worker -> parent, one byte each on the worker's pipe.
READY: Final = b"R"
LIMIT_REACHED: Final = b"M"
_PR_SET_PDEATHSIG: Final = 1
_FORWARDED: Final = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD)


def run_workers(config: Config) -> int:
    """Open the socket, run the workers until SIGTERM/SIGINT; returns the exit code."""
    try:
        listeners = open_listeners(config, config.workers)
    except ListenerError as exc:
        print(f"ringserve: error: {exc}", file=sys.stderr)
        return 1
    return Supervisor(config, listeners).run()


# -- the parent ---------------------------------------------------------------


@dataclass(eq=False)
class Worker:
    """One forked worker, as the parent tracks it."""

    pid: int
    slot: Slot
    pipe: int  # read end: READY, LIMIT_REACHED
    started_at: float
    max_requests: int
    ready: bool = False
    retiring: bool = False
    discarded: bool = False  # a pending worker stopped by a newer SIGHUP


@dataclass(eq=False)
class Slot:
    """One of the N places a worker serves in; see the module docstring."""

    index: int
    listener: Listener  # what its workers serve
    current: Worker | None = None
    pending: Worker | None = None
    early_deaths: int = 0  # in a row
    failed_at: float = float("-inf")  # the last early death
    restart_at: float | None = None


@dataclass(eq=False)
class Supervisor:
    """The parent of ``--workers``; `run` is its whole life."""

    config: Config
    listeners: list[Listener]  # one per slot, or one for all
    slots: list[Slot] = field(default_factory=list)
    workers: dict[int, Worker] = field(default_factory=dict)
    stopping: bool = False
    stop_signals: int = 0
    failure: str | None = None  # why it gave up
    unclean: list[str] = field(default_factory=list)  # workers that did not exit 0 when stopped
    _signals: list[int] = field(default_factory=list)
    _selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _wakeup: tuple[socket.socket, socket.socket] = field(default_factory=socket.socketpair)

    def run(self) -> int:
        n = len(self.listeners)
        self.slots = [Slot(i, self.listeners[i % n]) for i in range(self.config.workers)]
        wake_r, wake_w = self._wakeup
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._selector.register(wake_r, selectors.EVENT_READ)
        try:
            with self._signal_handlers(wake_w):
                for slot in self.slots:
                    self._spawn(slot)
                while self.workers or not self.stopping:
                    self._step()
        finally:
            self._close_listeners()
            self._selector.close()
            wake_r.close()
            wake_w.close()
        if self.failure is not None:
            print(f"ringserve: error: {self.failure}", file=sys.stderr)
            return 1
        if self.unclean:
            logger.error("not every worker stopped cleanly: %s", "; ".join(self.unclean))
            return 1
        return 0

    @contextlib.contextmanager
    def _signal_handlers(self, wakeup: socket.socket) -> Iterator[None]:
        """Handlers only queue the signal; the wakeup fd ends the select() at once."""

        def queue(signum: int, frame: object) -> None:
            self._signals.append(signum)

        previous = {s: signal.signal(s, queue) for s in _FORWARDED}
        old_fd = signal.set_wakeup_fd(wakeup.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _step(self) -> None:
        """One turn: wait for a signal, a message or a timer; act on all of them."""
        now = time.monotonic()
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        due += [
            w.started_at + STARTUP_WINDOW_S
            for s in self.slots
            if (w := s.current) is not None and s.early_deaths and w.started_at > s.failed_at
        ]
        timeout = max(0.0, min(due) - now) if due else None
        for key, _ in self._selector.select(timeout):
            if key.data is None:  # the wakeup socket: the signals are in _signals
                with contextlib.suppress(BlockingIOError):
                    while self._wakeup[0].recv(512):
                        pass
            else:
                self._read_pipe(key.data)
        while self._signals:
            self._on_signal(self._signals.pop(0))
        self._reap()
        now = time.monotonic()
        for slot in self.slots:
            w = slot.current
            if w is not None and slot.failed_at < w.started_at <= now - STARTUP_WINDOW_S:
                slot.early_deaths = 0  # a worker started since the last failure lives on
            if slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                slot.restart_at = None
                self._spawn(slot)

    # -- workers --------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        config = self.config
        limit = 0
        if config.max_requests:
            limit = config.max_requests + random.randint(0, config.max_requests_jitter)
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        sys.stdout.flush()  # or the child would print the parent's buffer again
        sys.stderr.flush()
        # Blocked across fork, so a signal meant for the child cannot reach
        # the parent's handlers (copied into it) before it has its own.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [*_FORWARDED, RETIRE_SIGNAL])
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read_end)
                self._forget_in_child(slot)
                code = _worker_main(config, slot.listener.for_child(), write_end, limit, mask)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_end)
        worker = Worker(pid, slot, read_end, time.monotonic(), limit)
        self.workers[pid] = worker
        self._selector.register(read_end, selectors.EVENT_READ, worker)
        slot.pending = worker
        extra = f", replaced after {limit} requests" if limit else ""
        logger.info("worker %d started (slot %d%s)", pid, slot.index, extra)

    def _forget_in_child(self, slot: Slot) -> None:
        """In a fresh child: close the parent's fds and drop its signal set-up.

        The other slots' sockets too: a worker holding one would keep it
        listening after the parent and its own worker closed it, and the
        connections the kernel hashed to it would wait for nobody.
        """
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGHUP, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        # Ignored until the server's own handlers are in: an early SIGUSR1
        # (the default action is to die) must not kill a worker.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(RETIRE_SIGNAL, signal.SIG_IGN)
        for w in self.workers.values():
            os.close(w.pipe)
        for listener in self.listeners:
            if listener is not slot.listener:
                listener.sock.close()
        self._selector.close()
        for sock in self._wakeup:
            sock.close()

    def _read_pipe(self, worker: Worker) -> None:
        try:
            data = os.read(worker.pipe, 64)
        except BlockingIOError:
            return
        if not data:  # the worker exited (or closed it): _reap says how
            self._selector.unregister(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = -1
            return
        for byte in data:
            if byte == READY[0]:
                self._on_ready(worker)
            elif byte == LIMIT_REACHED[0]:
                self._on_limit(worker)
            else:
                logger.error("worker %d sent %r on its pipe; ignored", worker.pid, bytes([byte]))

    def _on_ready(self, worker: Worker) -> None:
        worker.ready = True
        slot = worker.slot
        if slot.pending is not worker:
            return  # discarded by a newer SIGHUP, or stopping: it was told to stop
        slot.pending = None
        old, slot.current = slot.current, worker
        logger.info("worker %d ready (slot %d)", worker.pid, slot.index)
        if old is not None:
            self._retire(old)

    def _on_limit(self, worker: Worker) -> None:
        """The worker served its --max-requests and is draining itself: replace it now."""
        worker.retiring = True
        slot = worker.slot
        if slot.current is not worker:
            return  # already being replaced (SIGHUP)
        slot.current = None
        if self.stopping:
            return
        logger.info(
            "worker %d has served its %d requests and is retiring; starting its replacement",
            worker.pid,
            worker.max_requests,
        )
        if slot.pending is None:
            self._spawn(slot)

    def _retire(self, worker: Worker) -> None:
        worker.retiring = True
        logger.info("worker %d retiring: finishing its connections", worker.pid)
        self._kill(worker, RETIRE_SIGNAL)

    def _kill(self, worker: Worker, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
            os.kill(worker.pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.pipe >= 0:  # what it said before it died
                self._read_pipe(worker)
                if worker.pipe >= 0:
                    self._selector.unregister(worker.pipe)
                    os.close(worker.pipe)
            self._on_exit(worker, os.waitstatus_to_exitcode(status))

    def _on_exit(self, worker: Worker, code: int) -> None:
        how = _describe_exit(code)
        slot = worker.slot
        if self.stopping or worker.retiring or worker.discarded:
            if code == 0 or not worker.ready:  # not serving yet: our SIGTERM's default action
                logger.info("worker %d %s", worker.pid, how)
            else:
                logger.warning("worker %d %s", worker.pid, how)
                if self.stopping:
                    self.unclean.append(f"worker {worker.pid} {how}")
            if slot.current is worker:
                slot.current = None
            if slot.pending is worker:
                slot.pending = None
            return
        now = time.monotonic()
        early = not worker.ready or now - worker.started_at < STARTUP_WINDOW_S
        if slot.current is worker:
            slot.current = None
            logger.warning("worker %d %s unexpectedly; restarting it", worker.pid, how)
        else:
            assert slot.pending is worker
            slot.pending = None
            if slot.current is not None:
                logger.error(
                    "worker %d %s before it was ready; worker %d keeps serving",
                    worker.pid,
                    how,
                    slot.current.pid,
                )
            else:
                logger.warning("worker %d %s before it was ready", worker.pid, how)
        if not early:
            slot.early_deaths = 0
            if slot.pending is None:
                self._spawn(slot)
            return
        slot.early_deaths += 1
        slot.failed_at = now
        if slot.early_deaths >= MAX_EARLY_DEATHS:
            within = f"each within {STARTUP_WINDOW_S:g} s of its start"
            if slot.current is None:
                self._give_up(
                    f"workers keep dying at start-up ({slot.early_deaths} in a row, {within}; "
                    f"the last one {how}); giving up"
                )
                return
            logger.error(
                "giving up replacing worker %d: %d replacements in a row died (%s); it "
                "keeps serving; fix the cause and send SIGHUP",
                slot.current.pid,
                slot.early_deaths,
                within,
            )
            return
        if slot.pending is None:
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (slot.early_deaths - 1))
            slot.restart_at = now + delay
            logger.info("slot %d: next start in %.1f s", slot.index, delay)

    def _give_up(self, why: str) -> None:
        self.failure = why
        logger.error("%s", why)
        self._begin_stop(signal.SIGTERM)

    # -- signals --------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap runs every turn
        if signum == signal.SIGUSR1:
            for w in list(self.workers.values()):
                if w.ready:
                    self._kill(w, signal.SIGUSR1)
        elif signum == signal.SIGHUP:
            self._reload()
        else:
            self.stop_signals += 1
            name = signal.Signals(signum).name
            if self.stop_signals == 1:
                logger.info("received %s; stopping the workers", name)
                self._begin_stop(signum)
            else:
                logger.warning("received %s again; workers stop without waiting", name)
                for w in list(self.workers.values()):
                    self._kill(w, signum)

    def _begin_stop(self, signum: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        for slot in self.slots:
            slot.restart_at = None
        for w in list(self.workers.values()):
            if not w.retiring:
                self._kill(w, signum)
        # Once the workers close theirs, new connections are refused rather
        # than queued for nobody.
        self._close_listeners()

    def _reload(self) -> None:
        if self.stopping:
            logger.info("received SIGHUP while stopping; ignored")
            return
        logger.info("received SIGHUP; replacing the workers")
        for slot in self.slots:
            if slot.pending is not None:  # started before this SIGHUP: may have older code
                slot.pending.discarded = True
                self._kill(slot.pending, signal.SIGTERM)
                slot.pending = None
            slot.restart_at = None
            slot.early_deaths = 0
            self._spawn(slot)

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            if listener.sock.fileno() >= 0:
                listener.sock.close()
                listener.remove_file()


def _describe_exit(code: int) -> str:
    """os.waitstatus_to_exitcode's result in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


# -- a worker -----------------------------------------------------------------


def _worker_main(
    config: Config, listener: Listener, pipe: int, max_requests: int, mask: set[int]
) -> int:
    """The child's life after fork: its own process group, then a `WorkerServer`."""
    parent = os.getppid()
    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(err))
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if os.getppid() != parent:  # it died before PR_SET_PDEATHSIG took
        return 1
    return WorkerServer(config, listener, pipe, max_requests).run()


class WorkerServer(Server):
    """A `Server` that tells the parent it is ready, counts requests and drains on retire.

    Args:
        pipe: the write end of its pipe to the parent.
        max_requests: after this many requests, drain and say LIMIT_REACHED
            (0: never).
    """

    def __init__(self, config: Config, listener: Listener, pipe: int, max_requests: int) -> None:
        super().__init__(config, listener)
        self._pipe = pipe
        self._max_requests = max_requests
        self._draining = False
        self._drain_deadline = 0.0

    def serve(self) -> None:
        # Its signal handlers are in and it accepts: the parent may retire
        # the worker this one replaces, and signal this one.
        self._tell_parent(READY)
        super().serve()

    def _tell_parent(self, message: bytes) -> None:
        # BrokenPipeError: the parent is gone, and PR_SET_PDEATHSIG brings
        # the SIGTERM that stops this worker.
        with contextlib.suppress(BrokenPipeError):
            os.write(self._pipe, message)

    # What the drain needs of the loop: the asyncio loop's signal handlers
    # and timers, and the dispatcher's connections.

    def _stop_requested(self) -> bool:
        return self._stop.is_set()

    def _connections(self) -> dict[int, ServerProtocol]:
        assert self.dispatcher is not None
        return self.dispatcher.protocols

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The server's handlers, plus RETIRE_SIGNAL (drain)."""
        loop = self.aio
        assert loop is not None
        with super().capture_signals():
            loop.add_signal_handler(RETIRE_SIGNAL, self._begin_drain)
            try:
                yield
            finally:
                loop.remove_signal_handler(RETIRE_SIGNAL)

    def _begin_drain(self) -> None:
        """Stop accepting; every connection closes after its next response.

        Then `_check_drained`, every DRAIN_POLL_S, stops the server as
        SIGTERM does once no connection is left or the keep-alive timeout
        has passed.
        """
        backend = self.backend
        assert backend is not None
        if self._draining or self._stop_requested():
            return
        self._draining = True
        self._drain_deadline = time.monotonic() + self.config.timeout_keep_alive
        backend.stop_accepting()
        connections = self._connections()
        for cid, proto in list(connections.items()):
            proto.drain()
            if proto.should_close:
                backend.close(cid)
        open_now = len(connections)
        logger.info("worker %d retiring: finishing %d connections", os.getpid(), open_now)
        self._check_drained()

    def _check_drained(self) -> None:
        backend = self.backend
        assert backend is not None and self.aio is not None
        # An accept still in flight may yet bring a connection (io_uring).
        done = not self._connections() and not backend.accepting()
        if self._stop_requested() or done or time.monotonic() >= self._drain_deadline:
            self._stop.set()
        else:
            self.aio.call_later(DRAIN_POLL_S, self._check_drained)

    def _protocol_factory(self) -> Callable[[], ServerProtocol]:
        make = super()._protocol_factory()

        def make_worker_connection() -> ServerProtocol:
            proto = make()
            if self._draining:  # accepted as the worker stopped accepting
                proto.drain()
            return proto

        return make_worker_connection

    def _load_app(self) -> App | AsgiApp:
        app = super()._load_app()
        if not self._max_requests:
            return app
        remaining = self._max_requests

        def count() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                # Now, so this very response already says Connection: close.
                self._begin_drain()
                self._tell_parent(LIMIT_REACHED)

        if isinstance(app, AsgiApp):  # ASGI, and WSGI in a thread pool
            inner = app.app

            async def counted_asgi(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] == "http":
                    count()
                await inner(scope, receive, send)

            app.app = counted_asgi
            return app

        def counted(request: Request) -> Response:
            count()
            return app(request)

        return counted
