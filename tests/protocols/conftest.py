"""Fixtures for the protocol tests: a pinned clock, so Date headers are deterministic,
and the HTTP parser under test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("tests.protocols.helpers")

from server.protocols.http import HTTP_IMPLEMENTATIONS, common, load_http  # noqa: E402
from tests.protocols import helpers  # noqa: E402
from tests.protocols.helpers import EPOCH  # noqa: E402


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """common.py reads EPOCH (+ a fraction) as the time, with an empty date cache.

    Only that module's view of ``time`` is replaced, so the real
    ``_DateHeader`` formatting and caching still run.
    """
    monkeypatch.setattr(common, "time", SimpleNamespace(time=lambda: EPOCH + 0.25))
    monkeypatch.setattr(common.date_header, "second", -1)


@pytest.fixture(params=list(HTTP_IMPLEMENTATIONS))
def http_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs once per parser: helpers.HttpConnection is that
    parser's connection class (uvicorn runs its protocol tests over both the same way)."""
    name: str = request.param
    monkeypatch.setattr(helpers, "HttpConnection", load_http(name))  # type: ignore[arg-type]
    return name
