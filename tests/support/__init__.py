"""Helpers shared by the test suites: the ring probe, the backends to run, fds.

`tests.support.server` runs ``python -m server`` as a child (on top of
`loadtest.servers.ServerProcess`, the one implementation of spawning,
waiting for the listening line, signals, statistics and stopping), and
`tests.support.ci` makes CI fail when it could not test io_uring.
"""

from __future__ import annotations

import os

import pytest


def uring_available() -> str | None:
    """None if a ring can be created here, else why not (the reason a uring test skips with)."""
    try:
        from uring_backend import Ring, UringUnavailable
    except ImportError as exc:
        return f"uring extension not built: {exc}"
    try:
        Ring(8, buffers=8, buffer_size=64).close()
    except UringUnavailable as exc:
        return f"no io_uring here: {exc}"
    return None


URING_SKIP = uring_available()
# Both backends, uring skipped with the reason where no ring can be created.
BACKENDS = [
    "epoll",
    pytest.param("uring", marks=pytest.mark.skipif(URING_SKIP is not None, reason=str(URING_SKIP))),
]


def open_fds() -> int:
    """How many fds this process has open."""
    return len(os.listdir("/proc/self/fd"))
