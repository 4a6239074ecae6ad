"""Shared fixtures: a real server on 127.0.0.1 in a thread, per backend.

The server is built *inside* its thread: a ring made with
IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN belongs to the task that created
it.  Leaving the context stops it gracefully and asserts a clean teardown:
no connection open, no op in flight, the process's fd count back where it
started, and for an ASGI app no asyncio task of the app left running once
the test's connections are gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.config import Config
from server.lifecycle import Server
from tests.support import BACKENDS, URING_SKIP, open_fds
from tests.support.ci import pytest_make_collect_report, pytest_runtest_makereport
from tests.support.server import ServerProcess

__all__ = [
    "BACKENDS",
    "URING_SKIP",
    "open_fds",
    "pytest_make_collect_report",  # under CI=true, no ring fails the run
    "pytest_runtest_makereport",
]


class ServerThread:
    """A Server running in a background thread; see `serve_in_thread`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server: Server | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringserve", daemon=True)
        self.final_stats: dict[str, Any] = {}

    def _run(self) -> None:
        try:
            self.server = Server(self.config)
            self.server.startup()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.server.serve()
        except BaseException as exc:
            self.error = exc
        finally:
            self.server.shutdown()
            self.final_stats = self.server.statistics()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start within 10 s")
        if self.error is not None:
            raise self.error

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.address

    @property
    def port(self) -> int:
        return self.address[1]

    def stats(self) -> dict[str, Any]:
        assert self.server is not None
        return self.server.statistics()

    def app_tasks(self) -> list[asyncio.Task[Any]]:
        """The asyncio tasks running on the server's loop other than its own (the
        serving coroutine and the lifespan's): what the app has left running.

        Collected on the loop's thread (asyncio.all_tasks is not thread-safe).
        """
        server = self.server
        assert server is not None and server.aio is not None
        lifespan = server.lifespan
        own = {getattr(lifespan, "_task", None)}
        found: concurrent.futures.Future[list[asyncio.Task[Any]]] = concurrent.futures.Future()

        def collect() -> None:
            found.set_result(
                [
                    t
                    for t in asyncio.all_tasks(server.aio)
                    if t not in own and t.get_coro().__qualname__ != "Dispatcher.serve"
                ]
            )

        server.aio.call_soon_threadsafe(collect)
        return found.result(5)

    def wait_no_app_tasks(self, timeout: float = 5.0) -> None:
        """Wait until the app has no task left on the loop; fail, naming them, if it has."""
        deadline = time.monotonic() + timeout
        while tasks := self.app_tasks():
            if time.monotonic() > deadline:
                raise AssertionError(f"asyncio tasks left running: {tasks}")
            time.sleep(0.01)

    def stop(self, timeout: float = 15.0) -> None:
        if self.server is not None:
            self.server.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("server thread did not stop")
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def serve_in_thread(
    backend: str, check_teardown: bool = True, **overrides: Any
) -> Iterator[ServerThread]:
    """Run a server on 127.0.0.1 (a free port) with Config overrides.

    On exit (unless check_teardown is False): for an ASGI app, no task of
    the app left on the loop (waited for a few seconds: the test's last
    connection may just have closed); then a graceful stop, zero open
    connections, zero ops in flight and no leaked fds.
    """
    fds_before = open_fds()
    config = dataclasses.replace(Config(), backend=backend, host="127.0.0.1", port=0, **overrides)
    st = ServerThread(config)
    st.start()
    try:
        yield st
        server = st.server
        if (
            check_teardown
            and server is not None
            and server.asgi is not None
            and server.aio is not None
            and not server.aio.is_closed()  # (the test may have stopped it)
        ):
            st.wait_no_app_tasks()
    finally:
        st.stop()
    if check_teardown:
        assert st.final_stats["open_connections"] == 0, st.final_stats
        assert st.final_stats["ops_in_flight"] == 0, st.final_stats
        assert open_fds() == fds_before, "file descriptors leaked"


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_server(
    backend_name: str,
) -> Iterator[Callable[..., contextlib.AbstractContextManager[ServerThread]]]:
    """Factory: `with make_server(protocol="echo", ...) as srv:` on the parametrized backend."""

    def factory(**overrides: Any) -> contextlib.AbstractContextManager[ServerThread]:
        return serve_in_thread(backend_name, **overrides)

    yield factory


HTTP_PARSERS = ["h11", "httptools"]


@pytest.fixture(params=HTTP_PARSERS)
def http_parser(request: pytest.FixtureRequest) -> str:
    """The HTTP parser (``Config.http``) a parser-specific test runs with: each, in turn."""
    name: str = request.param
    return name


@pytest.fixture
def make_http_server(
    backend_name: str, http_parser: str
) -> Iterator[Callable[..., contextlib.AbstractContextManager[ServerThread]]]:
    """`make_server` for HTTP with the parametrized parser: on every backend and parser."""

    def factory(**overrides: Any) -> contextlib.AbstractContextManager[ServerThread]:
        return serve_in_thread(backend_name, http=http_parser, **overrides)

    yield factory


@pytest.fixture
def spawn_bare() -> Iterator[Callable[..., ServerProcess]]:
    """Factory for server processes (not started) with exactly the given arguments;
    each is killed at the end, its workers too.  ``argv`` replaces the whole command."""
    procs: list[ServerProcess] = []

    def factory(
        *args: str, env: dict[str, str] | None = None, argv: list[str] | None = None
    ) -> ServerProcess:
        srv = ServerProcess(*args, env=env)
        if argv is not None:
            srv.argv = argv
        procs.append(srv)
        return srv

    yield factory
    for p in procs:
        p.kill_all()


@pytest.fixture
def spawn(spawn_bare: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """`spawn_bare` for servers on 127.0.0.1."""

    def factory(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        return spawn_bare("--host", "127.0.0.1", *args, env=env)

    return factory
