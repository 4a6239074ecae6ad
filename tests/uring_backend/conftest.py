"""Fixtures for the Ring tests: rings, loopback socket pairs and an fd-leak check.

Importing this file never imports the compiled extension, so a machine
without it still collects the test modules, which then skip themselves
(see ``support.require_ring``).  Every ring and socket made through these
fixtures is closed at teardown even when the test fails, and an autouse
fixture asserts that the process's fd count is back where it started.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.uring_backend.support")

from tests.uring_backend.support import open_fds  # noqa: E402


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Set up first, torn down last: every other fixture has closed its fds."""
    before = open_fds()
    yield
    after = open_fds()
    assert after == before, (
        f"fd count went from {before} to {after}: {sorted(os.listdir('/proc/self/fd'))}"
    )


@pytest.fixture
def make_ring() -> Iterator[Callable[..., Any]]:
    """Factory for `Ring` objects, all closed at teardown."""
    rings: list[Any] = []

    def factory(*args: Any, **kwargs: Any) -> Any:
        from uring_backend.testing import TestingRing as Ring

        ring = Ring(*args, **kwargs)
        rings.append(ring)
        return ring

    yield factory
    for ring in reversed(rings):
        ring.close()


@pytest.fixture
def ring(make_ring: Callable[..., Any]) -> Any:
    """A modest ring: SQ 64, CQ 512, 64 buffers of 4 KiB."""
    return make_ring(64, buffers=64, buffer_size=4096)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """A list the test appends sockets to; all are closed at teardown."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


@pytest.fixture
def tcp_pair(sockets: list[socket.socket]) -> Callable[..., tuple[socket.socket, socket.socket]]:
    """Factory: a connected TCP pair on 127.0.0.1 as (ours, peer).

    `ours` is the accepted side (the side a server's ring drives); the
    buffer sizes are set before the connection exists, so the window
    scaling negotiated at the handshake honours them.
    """

    def factory(
        *, our_sndbuf: int | None = None, peer_rcvbuf: int | None = None
    ) -> tuple[socket.socket, socket.socket]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if our_sndbuf is not None:  # inherited by the accepted socket
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, our_sndbuf)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(peer)
            if peer_rcvbuf is not None:
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
            peer.settimeout(10)
            peer.connect(listener.getsockname())
            listener.settimeout(10)
            ours, _ = listener.accept()
            sockets.append(ours)
        finally:
            listener.close()
        return ours, peer

    return factory


@pytest.fixture
def unix_pair(sockets: list[socket.socket]) -> tuple[socket.socket, socket.socket]:
    """A connected AF_UNIX stream socketpair as (ours, peer)."""
    ours, peer = socket.socketpair()
    sockets.extend((ours, peer))
    peer.settimeout(10)
    return ours, peer


@pytest.fixture
def small_unix_pair(
    sockets: list[socket.socket],
) -> Callable[[], tuple[socket.socket, socket.socket]]:
    """Factory: an AF_UNIX stream socketpair as (ours, peer) where `ours` holds little.

    With SO_SNDBUF 4096 (8192 after the kernel doubles it) our side can have
    8064 bytes unread at the peer; a send beyond that parks until the peer
    reads.  Unlike TCP there is no ACK clock: what the kernel takes depends
    only on what the peer has read, so a parked send stays parked.
    """

    def factory() -> tuple[socket.socket, socket.socket]:
        ours, peer = socket.socketpair()
        sockets.extend((ours, peer))
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer.settimeout(10)
        return ours, peer

    return factory
