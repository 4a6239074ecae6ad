"""Fixtures for the protocol tests: a pinned clock, so Date headers are deterministic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("tests.protocols.helpers")

from server.protocols.http import common  # noqa: E402
from tests.protocols.helpers import EPOCH  # noqa: E402


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """common.py reads EPOCH (+ a fraction) as the time, with an empty date cache.

    Only that module's view of ``time`` is replaced, so the real
    ``_DateHeader`` formatting and caching still run.
    """
    monkeypatch.setattr(common, "time", SimpleNamespace(time=lambda: EPOCH + 0.25))
    monkeypatch.setattr(common.date_header, "second", -1)
