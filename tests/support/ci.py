"""Under ``CI=true`` a test skipped because no io_uring ring can be created fails.

CI exists to test the uring backend: on a machine (or under a seccomp
profile) where no ring can be created, every uring test would skip and the
run would still go green.  These hooks turn such a skip, whether a uring
parameter's (`tests.support.BACKENDS`) or a whole module's
(``tests/uring_backend``'s ``require_ring``), into a failure that says why.
Elsewhere a skip stays a skip.  ``tests/conftest.py`` installs them; a run
of other test files can load them with ``-p tests.support.ci``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from tests.support import URING_SKIP


def _fail_if_no_ring(report: pytest.CollectReport | pytest.TestReport) -> None:
    if os.environ.get("CI") != "true" or URING_SKIP is None or not report.skipped:
        return
    if URING_SKIP in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"CI=true, so a uring test must not skip, but no ring: {URING_SKIP}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    _fail_if_no_ring(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_if_no_ring(outcome.get_result())
