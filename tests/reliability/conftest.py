"""Fixtures of the reliability suite (the servers come from tests/conftest.py)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def closer() -> Iterator[Callable[[socket.socket], socket.socket]]:
    """`closer(sock)` returns `sock` and closes it after the test, even a failed one.

    A socket a failed test leaves open would be closed later by the garbage
    collector, in the middle of another test, and trip that test's fd check.
    """
    opened: list[socket.socket] = []

    def track(sock: socket.socket) -> socket.socket:
        opened.append(sock)
        return sock

    yield track
    for sock in opened:
        with contextlib.suppress(OSError):
            sock.close()
