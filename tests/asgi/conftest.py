"""Fixtures of the ASGI suites: a server for `tests.asgi.apps` on every backend and parser.

`serve_in_thread` (tests/conftest.py) checks the teardown, including that
the app left no asyncio task running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.asgi import apps
from tests.conftest import ServerThread, serve_in_thread

APP = "tests.asgi.apps:app"


@pytest.fixture(autouse=True)
def fresh_control() -> Iterator[apps.Control]:
    """What the apps noted and the gates, new for each test (every gate opened after it)."""
    apps.control.reset()
    yield apps.control
    apps.control.reset()


@pytest.fixture
def make_server(
    backend_name: str, http_parser: str
) -> Iterator[Callable[..., contextlib.AbstractContextManager[ServerThread]]]:
    """`with make_server(**config) as srv:` serves `tests.asgi.apps:app` (unless `app=`
    says otherwise) on the parametrized backend and parser."""

    def factory(**overrides: Any) -> contextlib.AbstractContextManager[ServerThread]:
        overrides.setdefault("app", APP)
        return serve_in_thread(backend_name, http=http_parser, **overrides)

    yield factory
