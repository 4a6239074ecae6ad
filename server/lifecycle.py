"""Server: startup, serve, signal capture, graceful shutdown (uvicorn's shape)."""

from __future__ import annotations

import asyncio
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
from typing import TYPE_CHECKING, Any

from server.accesslog import AccessLog
from server.aio import BackendSelector, RingEventLoop
from server.apps.asgi import AsgiApp, Lifespan, is_asgi
from server.backends.base import Backend, BackendUnavailable
from server.config import Config, load_backend
from server.listeners import Listener, ListenerError, open_listener
from server.loop import Dispatcher
from server.protocols import ServerProtocol
from server.protocols.echo import EchoConnection
from server.protocols.http import load_http
from server.protocols.http.common import App, Counters, HttpLimits

if TYPE_CHECKING:
    import ssl

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
        self.dispatcher: Dispatcher | None = None
        self.asgi: AsgiApp | None = None
        self._threaded: Any = None  # the WSGI thread pool (--wsgi-threads)
        self.lifespan: Lifespan | None = None
        self.aio: RingEventLoop | None = None  # the asyncio loop the server runs on
        self._stop = asyncio.Event()  # set by the first SIGTERM/SIGINT (or request_stop)
        self._hurry = asyncio.Event()  # set by the second: stop waiting for requests
        self.address: tuple[str, int] = (config.host, config.port)
        self.access_log = AccessLog(sys.stdout, config.log_level)
        self._metrics: asyncio.base_events.Server | None = None
        self.metrics_address: tuple[str, int] | None = None  # --metrics, as bound

    # -- the three phases ----------------------------------------------------

    def startup(self) -> None:
        """Listen, build the backend, the dispatcher and the asyncio loop over them.

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
        self.dispatcher = Dispatcher(
            self.backend,
            factory,
            # An echo connection is always reading: it has no keep-alive state.
            idle_timeout=config.timeout_keep_alive if http else config.timeout_read,
            read_timeout=config.timeout_read,
            header_timeout=config.timeout_header if http else None,
            handshake_timeout=config.timeout_handshake if config.tls else None,
            sockname=self.address,
        )
        selector = BackendSelector(self.backend, owns_backend=False)
        self.aio = RingEventLoop(selector)
        self.dispatcher.attach(selector)
        if config.metrics is not None:
            self._start_metrics(config.metrics)
        if self.lifespan is not None and not self._start_lifespan():
            self._close_listener()
            # The loop and the backend go now: left to the garbage collector, the
            # loop's close would reach a ring already closed (EBADF), fds meanwhile open.
            self.shutdown()
            raise StartupError(f"the app's lifespan startup failed: {self.lifespan.error}")
        self.backend.listen(listener.sock)  # only now: the app is ready

    def serve(self) -> None:
        """Run the asyncio loop until a stop is asked for and in-flight requests finish."""
        assert self.aio is not None and self.dispatcher is not None
        asyncio.set_event_loop(self.aio)
        try:
            self.aio.run_until_complete(
                self.dispatcher.serve(
                    self._stop, self._hurry, self.config.timeout_graceful_shutdown
                )
            )
            if self.lifespan is not None and not self.aio.run_until_complete(
                self.lifespan.shutdown()
            ):
                logger.error("the app's lifespan shutdown failed: %s", self.lifespan.error)
        finally:
            _finish_tasks(self.aio)
            asyncio.set_event_loop(None)

    def request_stop(self) -> None:
        """Ask for a graceful stop from any thread (what SIGTERM does)."""
        if self.aio is not None and not self.aio.is_closed():
            self.aio.call_soon_threadsafe(self._stop.set)
        else:
            self._stop.set()

    def shutdown(self) -> None:
        """Release everything; safe to call more than once."""
        if self._metrics is not None and self.aio is not None and not self.aio.is_closed():
            self._metrics.close()
            self.aio.run_until_complete(self._metrics.wait_closed())
            self._metrics = None
        if self.aio is not None and not self.aio.is_closed():
            _finish_tasks(self.aio)  # e.g. a lifespan that failed at startup
            self.aio.close()  # its selector stops watching the app's fds
        if self.backend is not None and not self._shut_down:
            self._shut_down = True
            self.backend.shutdown()
        if self._threaded is not None:
            self._threaded.close()
            self._threaded = None
        if self.listener is not None:
            self.listener.remove_file()
        self.access_log.stop()  # after the loop: every line of the run is written

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
            "tls": config.tls,
            "app": config.app,
            "pid": os.getpid(),
            "metrics": (
                None
                if self.metrics_address is None
                else f"{self.metrics_address[0]}:{self.metrics_address[1]}"
            ),
            "kernel": platform.release(),
            **self.backend.describe(),
        }

    def banner(self) -> str:
        """The start-up line for people (tools read `listening()` instead)."""
        config = self.config
        assert self.backend is not None and self.listener is not None
        facts = ", ".join(f"{k}={v}" for k, v in self.backend.describe().items())
        what = f"http ({config.http})" if config.protocol == "http" else "echo"
        url = self.listener.where(_scheme(config) if config.protocol == "http" else None)
        if config.tls and config.protocol != "http":
            url += " (TLS)"
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
        if self.dispatcher is not None:
            out["timeouts"] = self.dispatcher.timeouts
            out["internal_errors"] = self.dispatcher.internal_errors
        out["uptime_s"] = round(time.monotonic() - self.started_at, 3)
        out["pid"] = os.getpid()
        return out

    def _protocol_factory(self) -> Callable[[], ServerProtocol]:
        """What makes each connection's protocol object: with TLS, the plain one's
        objects each wrapped in a `server.protocols.tls.TlsConnection`.

        Raises:
            StartupError: the app, the parser or a TLS file is unusable.
        """
        make = self._plain_factory()
        config = self.config
        if not config.tls:
            return make  # nothing of TLS on the path
        from server.protocols import tls

        http = config.protocol == "http"
        context = tls_context(config)
        return tls.tls_factory(make, context, self.counters, tls.PLAIN_HTTP_REPLY if http else None)

    def _plain_factory(self) -> Callable[[], ServerProtocol]:
        config = self.config
        if config.protocol == "echo":
            return EchoConnection
        app = self._load_app()
        try:
            connection_class = load_http(config.http, asgi=self.asgi is not None)
        except ImportError as exc:
            raise StartupError(f"--http {config.http} is not installed ({exc})") from exc
        limits = HttpLimits(config.max_header_bytes, config.max_body_bytes)
        counters = self.counters
        access = self.access_log.start() if config.access_log else None
        proxy = None
        if config.proxy_headers:
            from server.protocols.http.proxy import ProxyHeaders

            proxy = ProxyHeaders(config.forwarded_allow_ips)
        inline_wsgi = config.app is not None and self.asgi is None
        if access is not None or proxy is not None or inline_wsgi:
            # Off, none of this: the plain class, at no cost.  (An inline WSGI
            # app is given REMOTE_ADDR; an ASGI one has its client anyway.)
            from server.protocols.http.observe import observed

            connection_class = observed(connection_class, proxy, access)

        def make() -> ServerProtocol:
            return connection_class(app, limits, counters)

        return make

    def _load_app(self) -> App | AsgiApp:
        config = self.config
        if config.app is None:
            from server.apps.builtin import BuiltinApp

            return BuiltinApp(self.statistics)
        from server.apps.wsgi import WsgiAdapter, load_app

        try:
            obj: Any = load_app(config.app)
            if config.factory:
                obj = obj()
        except (ImportError, ValueError) as exc:
            raise StartupError(f"cannot load --app {config.app}: {exc}") from exc
        except Exception as exc:
            raise StartupError(f"--factory {config.app} raised {exc!r}") from exc
        interface = config.interface
        if interface == "auto":
            interface = "asgi" if is_asgi(obj) else "wsgi"
        if interface == "asgi":
            self.asgi = AsgiApp(obj, config.root_path, self.address, _scheme(config))
            self.lifespan = Lifespan(self.asgi, config.lifespan)
            return self.asgi
        host, port = self.address  # the bound port, also when --port 0
        adapter = WsgiAdapter(
            obj, host, port, config.workers > 1, config.wsgi_threads > 1, _scheme(config)
        )
        if config.wsgi_threads:
            from server.apps.wsgi import ThreadedWsgi

            self._threaded = ThreadedWsgi(adapter, config.wsgi_threads, self.counters)
            self.asgi = AsgiApp(self._threaded, config.root_path, self.address, _scheme(config))
            return self.asgi
        return adapter

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM request a graceful stop (a second one: stop waiting for
        in-flight requests); SIGUSR1 prints statistics.

        They are the asyncio loop's signal handlers: the C-level handler only
        writes to the loop's wakeup fd, and the callbacks run between two
        iterations, never in the middle of a batch.
        """
        loop = self.aio
        assert loop is not None

        def stop(signum: int) -> None:
            name = signal.Signals(signum).name
            if self._stop.is_set():
                logger.warning("received %s again; stopping now, without waiting", name)
                self._hurry.set()
                return
            logger.info("received %s; finishing in-flight requests", name)
            self._stop.set()

        loop.add_signal_handler(signal.SIGINT, stop, signal.SIGINT)
        loop.add_signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGUSR1, self._print_stats)
        try:
            yield
        finally:
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                loop.remove_signal_handler(s)

    # A worker's metrics port is shared with the worker that replaces it, for the
    # moments both run (`server.workers`).
    metrics_reuse_port = False

    def _start_metrics(self, address: str) -> None:
        from server.metrics import parse_address, start_metrics

        assert self.aio is not None
        host, port = parse_address(address)
        try:
            self._metrics = self.aio.run_until_complete(
                start_metrics(host, port, self.statistics, self.metrics_reuse_port)
            )
        except OSError as exc:
            self._close_listener()
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio rewrites strerror
            raise StartupError(f"cannot listen on --metrics {address}: {why}") from exc
        self.metrics_address = self._metrics.sockets[0].getsockname()[:2]

    def _start_lifespan(self) -> bool:
        assert self.aio is not None and self.lifespan is not None
        asyncio.set_event_loop(self.aio)
        try:
            return self.aio.run_until_complete(self.lifespan.startup())
        finally:
            asyncio.set_event_loop(None)

    def _print_stats(self) -> None:
        _print_line(json.dumps({"event": "stats", **self.statistics()}, sort_keys=True))


def tls_context(config: Config) -> ssl.SSLContext:
    """The SSLContext of a TLS run (``--ssl-certfile`` set), from its ``--ssl-*`` options.

    Raises:
        StartupError: a file is unusable; the message names the option, the file and why.
    """
    from server.protocols import tls

    assert config.ssl_certfile is not None
    try:
        return tls.make_context(
            config.ssl_certfile,
            config.ssl_keyfile,
            config.ssl_keyfile_password,
            config.ssl_ca_certs,
            config.ssl_cert_reqs,
            config.ssl_ciphers,
            config.ssl_version,
            alpn=["http/1.1"] if config.protocol == "http" else None,
        )
    except tls.TlsSetupError as exc:
        raise StartupError(str(exc)) from exc


def _scheme(config: Config) -> str:
    """The URL scheme the apps see (ASGI ``scope["scheme"]``, ``wsgi.url_scheme``)."""
    return "https" if config.tls else "http"


def _finish_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the app left running, let it unwind, close async generators and
    the default executor (asyncio.run's teardown)."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                logger.error("a task ended with an error at shutdown", exc_info=task.exception())
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())


def _print_line(text: str) -> None:
    """`text` and its newline on stdout in one write.

    print() writes them separately when stdout is unbuffered (PYTHONUNBUFFERED),
    and with --workers every worker shares the pipe: two lines written at
    once would interleave into one a tool cannot parse.  A pipe keeps a write
    of up to PIPE_BUF (4096) bytes whole.
    """
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
