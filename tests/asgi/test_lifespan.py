"""The ASGI lifespan protocol under --lifespan on|off|auto, on both backends and
parsers: startup and shutdown complete or fail, the state startup fills reaches
every request's scope, and an app that does not take part in lifespan."""

from __future__ import annotations

import pytest

from server.lifecycle import StartupError
from tests.asgi import lifespan_apps
from tests.backends.client import connect, exchange, request
from tests.conftest import open_fds

pytestmark = pytest.mark.timeout(60)

M = "tests.asgi.lifespan_apps:"


@pytest.fixture(autouse=True)
def fresh_events() -> None:
    lifespan_apps.events.clear()


def body_of(srv: object) -> bytes:
    with connect(srv.address) as s:  # type: ignore[attr-defined]
        (resp,) = exchange(s, request("GET", "/"))
    assert resp.status == 200
    return resp.body


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_startup_and_shutdown_complete_and_the_state_reaches_requests(make_server, mode) -> None:
    with make_server(app=M + "complete", lifespan=mode) as srv:
        assert lifespan_apps.events == ["lifespan.startup"]
        assert body_of(srv) == b"[('db', 'open')]"
    assert lifespan_apps.events == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize("mode", ["on", "auto"])
@pytest.mark.parametrize(
    "app,error",
    [("startup_failed", "no startup today"), ("startup_raises", "startup raised")],
    ids=["failed", "raises"],
)
def test_a_failed_startup_stops_the_server_before_it_listens(make_server, mode, app, error):
    """... and releases its loop, backend and listener at once (nothing left to the
    garbage collector, whose late close of the loop used to hit the closed ring)."""
    fds = open_fds()
    with pytest.raises(StartupError, match=error), make_server(app=M + app, lifespan=mode):
        pass
    assert lifespan_apps.events == ["lifespan.startup"]
    assert open_fds() == fds


def test_a_failed_shutdown_is_logged_and_the_server_stops(make_server, caplog) -> None:
    with make_server(app=M + "shutdown_failed", lifespan="on") as srv:
        assert body_of(srv) == b"[('db', 'open')]"
    assert lifespan_apps.events == ["lifespan.startup", "lifespan.shutdown"]
    assert "the app's lifespan shutdown failed: no shutdown today" in caplog.text


def test_off_never_calls_the_app_with_a_lifespan_scope(make_server) -> None:
    with make_server(app=M + "complete", lifespan="off") as srv:
        assert body_of(srv) == b"[]"  # no startup: an empty state
    assert lifespan_apps.events == []


def test_auto_serves_an_app_that_does_not_do_lifespan(make_server) -> None:
    with make_server(app=M + "no_lifespan", lifespan="auto") as srv:
        assert body_of(srv) == b"[]"
    assert lifespan_apps.events == [("refused", "lifespan")]  # asked once, not at shutdown


def test_on_refuses_to_start_an_app_that_does_not_do_lifespan(make_server) -> None:
    with (
        pytest.raises(StartupError, match="unsupported scope type lifespan"),
        make_server(app=M + "no_lifespan", lifespan="on"),
    ):
        pass
