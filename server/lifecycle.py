"""Server: startup, serve, signal capture, graceful shutdown (uvicorn's shape)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from server.backends.base import Backend, BackendUnavailable
from server.config import Config, load_backend
from server.listeners import Listener, ListenerError, open_listener
from server.loop import Loop
from server.protocols import ServerProtocol
from server.protocols.echo import EchoConnection
from server.protocols.http import load_http
from server.protocols.http.common import App, Counters, HttpLimits

logger = logging.getLogger("server")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


def make_listener(config: Config) -> Listener:
    """The socket `config` names (``server/listeners.py``: TCP, --uds, --fd, systemd's).

    Raises:
        StartupError: it cannot be opened or used.
    """
    try:
        return open_listener(config)
    except ListenerError as exc:
        raise StartupError(str(exc)) from exc


class Server:
    """One single-threaded server process.

    Args:
        config: the run's configuration.
        listener: an already listening socket (tests), or the `Listener` a
            worker inherits; by default one is made from the config.
    """

    def __init__(self, config: Config, listener: Listener | socket.socket | None = None) -> None:
        self.config = config
        self.counters = Counters()
        self.started_at = time.monotonic()
        if isinstance(listener, socket.socket):
            listener = Listener.of(listener)
        self.listener = listener
        self.backend: Backend | None = None
        self._shut_down = False
        self.loop: Loop | None = None
        self.address: tuple[str, int] = (config.host, config.port)

    # -- the three phases ----------------------------------------------------

    def startup(self) -> None:
        """Listen, build the backend and the loop.

        Raises:
            StartupError: the port, the app or the backend is unusable.
        """
        config = self.config
        if self.listener is None:
            self.listener = make_listener(config)
        listener = self.listener
        self.address = listener.wsgi_address()
        try:
            factory = self._protocol_factory()
            self.backend = load_backend(config.backend, config.backend_options())
        except BackendUnavailable as exc:
            self._close_listener()
            raise StartupError(str(exc)) from exc
        except BaseException:
            self._close_listener()
            raise
        http = config.protocol == "http"
        self.loop = Loop(
            self.backend,
            factory,
            # An echo connection is always reading: it has no keep-alive state.
            idle_timeout=config.timeout_keep_alive if http else config.timeout_read,
            read_timeout=config.timeout_read,
            header_timeout=config.timeout_header if http else None,
        )
        self.backend.listen(listener.sock)

    def serve(self) -> None:
        assert self.loop is not None
        self.loop.run(self.config.timeout_graceful_shutdown)

    def request_stop(self) -> None:
        """Ask for a graceful stop from any thread (what SIGTERM does)."""
        if self.loop is not None:
            self.loop.stop_requested = True
        if self.backend is not None:
            self.backend.force_wakeup()

    def shutdown(self) -> None:
        """Release everything; safe to call more than once."""
        if self.backend is not None and not self._shut_down:
            self._shut_down = True
            self.backend.shutdown()
        if self.listener is not None:
            self.listener.remove_file()

    def _close_listener(self) -> None:
        """Start-up failed before a backend owned the socket: close it (and its file)."""
        assert self.listener is not None
        self.listener.sock.close()
        self.listener.remove_file()

    def run(self) -> int:
        """Start, serve until SIGINT/SIGTERM, shut down; returns the exit code."""
        try:
            self.startup()
        except StartupError as exc:
            print(f"ringserve: error: {exc}", file=sys.stderr)
            self.shutdown()
            return EXIT_STARTUP_FAILED
        try:
            with self.capture_signals():
                # Only now: whoever waits for these lines may signal at once.
                _print_line(json.dumps(self.listening()))
                logger.info("%s", self.banner())
                self.serve()
        finally:
            self.shutdown()
            # After shutdown, so the line also shows that nothing was left
            # open or in flight.
            _print_line(json.dumps({"event": "exit", **self.statistics()}, sort_keys=True))
        return EXIT_OK

    # -- helpers -------------------------------------------------------------

    def listening(self) -> dict[str, Any]:
        """The start-up event, for tools and tests: one JSON line on stdout."""
        config = self.config
        assert self.backend is not None and self.listener is not None
        return {
            "event": "listening",
            **self.listener.facts(),
            "backend": config.backend,
            "protocol": config.protocol,
            "http": config.http if config.protocol == "http" else None,
            "app": config.app,
            "pid": os.getpid(),
            "kernel": platform.release(),
            **self.backend.describe(),
        }

    def banner(self) -> str:
        """The start-up line for people (tools read `listening()` instead)."""
        config = self.config
        assert self.backend is not None and self.listener is not None
        facts = ", ".join(f"{k}={v}" for k, v in self.backend.describe().items())
        what = f"http ({config.http})" if config.protocol == "http" else "echo"
        url = self.listener.where("http" if config.protocol == "http" else None)
        return (
            f"ringserve {what} on {config.backend}{f' ({facts})' if facts else ''}, "
            f"kernel {platform.release()}, pid {os.getpid()}, listening on {url}"
        )

    def statistics(self) -> dict[str, Any]:
        """Backend counters plus server-level ones, as one flat dict."""
        out: dict[str, Any] = {}
        if self.backend is not None:
            out.update(asdict(self.backend.statistics()))
        out["requests"] = self.counters.requests
        out["client_errors"] = self.counters.client_errors
        out["app_errors"] = self.counters.app_errors
        if self.loop is not None:
            out["timeouts"] = self.loop.timeouts
            out["internal_errors"] = self.loop.internal_errors
        out["uptime_s"] = round(time.monotonic() - self.started_at, 3)
        out["pid"] = os.getpid()
        return out

    def _protocol_factory(self) -> Callable[[], ServerProtocol]:
        config = self.config
        if config.protocol == "echo":
            return EchoConnection
        app = self._load_app()
        try:
            connection_class = load_http(config.http)
        except ImportError as exc:
            raise StartupError(f"--http {config.http} is not installed ({exc})") from exc
        limits = HttpLimits(config.max_header_bytes, config.max_body_bytes)
        counters = self.counters

        def make() -> ServerProtocol:
            return connection_class(app, limits, counters)

        return make

    def _load_app(self) -> App:
        if self.config.app is None:
            from server.apps.builtin import BuiltinApp

            return BuiltinApp(self.statistics)
        from server.apps.wsgi import WsgiAdapter, load_app

        try:
            wsgi_app = load_app(self.config.app)
        except (ImportError, ValueError) as exc:
            raise StartupError(f"cannot load --app {self.config.app}: {exc}") from exc
        host, port = self.address  # the bound port, also when --port 0
        return WsgiAdapter(wsgi_app, host, port, self.config.workers > 1)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM request a graceful stop; SIGUSR1 prints statistics.

        Handlers only set flags; the loop acts on them at the end of its
        pass.  The wakeup fd makes a blocked wait return at once.
        """
        loop = self.loop
        assert loop is not None

        def stop(signum: int, frame: object) -> None:
            if loop.stop_requested:  # second signal: stop waiting for the grace period
                raise KeyboardInterrupt
            loop.stop_requested = True  # before logging: a second signal may arrive meanwhile
            logger.info("received %s; finishing in-flight requests", signal.Signals(signum).name)

        def dump(signum: int, frame: object) -> None:
            loop.on_pass.append(self._print_stats)

        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
        previous = {s: signal.getsignal(s) for s in handled}
        assert self.backend is not None
        old_fd = signal.set_wakeup_fd(self.backend.wakeup_fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGUSR1, dump)
        try:
            yield
        except KeyboardInterrupt:
            logger.warning("stopping now, without waiting for in-flight requests")
        finally:
            signal.set_wakeup_fd(old_fd)
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _print_stats(self) -> None:
        _print_line(json.dumps({"event": "stats", **self.statistics()}, sort_keys=True))


def _print_line(text: str) -> None:
    """`text` and its newline on stdout in one write.

    print() writes them separately when stdout is unbuffered (PYTHONUNBUFFERED),
    and with --workers every worker shares the pipe: two lines written at
    once would interleave into one a tool cannot parse.  A pipe keeps a write
    of up to PIPE_BUF (4096) bytes whole.
    """
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
