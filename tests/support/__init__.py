"""Helpers shared by the test suites: the ring probe, the backends to run, fds, chunkings.

`tests.support.server` runs ``python -m server`` as a child (on top of
`loadtest.servers.ServerProcess`, the one implementation of spawning,
waiting for the listening line, signals, statistics and stopping), and
`tests.support.ci` makes CI fail when it could not test io_uring.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

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


def chunkings(
    data: bytes,
    sizes: Sequence[int] = (1,),
    cuts: bool = True,
    limit: int | None = None,
    max_cuts: int = 400,
) -> Iterator[tuple[str, list[bytes]]]:
    """The ways to feed `data` in pieces, named: every way must give the same answer.

    Whole; in pieces of each of `sizes` bytes ("bytewise" for 1; past `limit`
    bytes the rest is one piece, so a huge input stays cheap); then cut in
    two at every offset (at most `max_cuts` of them) and in thirds, or with
    `cuts` False in halves only.
    """
    n = len(data)
    yield "whole", [data]
    for size in sizes:
        head = data[:limit]
        rest = [data[len(head) :]] if len(head) < n else []
        yield (
            ("bytewise" if size == 1 else f"{size}s"),
            [head[i : i + size] for i in range(0, len(head), size)] + rest,
        )
    if not cuts:
        yield "halves", [data[: n // 2], data[n // 2 :]]
        return
    step = 1 if n <= max_cuts else n // max_cuts
    for cut in sorted({*range(1, n, step), n - 1} - {0}):
        yield f"cut@{cut}", [data[:cut], data[cut:]]
    if n >= 3:
        a, b = n // 3, 2 * n // 3
        yield "thirds", [data[:a], data[a:b], data[b:]]
