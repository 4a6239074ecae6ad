"""Helpers shared by the Ring tests.

`require_ring()` is the liburing-style T_EXIT_SKIP: called at the top of a
test module, it skips the whole module, with the reason, when the extension
is not built or the kernel (or a seccomp profile, or the sysctl) refuses to
create a ring (the probe is `tests.support.uring_available`, which also
decides the skips of the other suites; an extension that is not built is
only a reason to skip).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.support import URING_SKIP, open_fds

__all__ = ["open_fds"]

# Completions are (user_data, res, flags, data), as Ring.wait() returns them.
Completion = tuple[int, int, int, "bytes | None"]


def require_ring() -> None:
    """Skip the calling module unless a Ring can be created here."""
    if URING_SKIP is not None:
        pytest.skip(URING_SKIP, allow_module_level=True)


def kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def collect(ring: Any, count: int, timeout: float = 5.0) -> list[Completion]:
    """Call wait() until at least `count` completions arrived; fail after `timeout`."""
    out: list[Completion] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {count} completions within {timeout} s: {out}"
        out.extend(ring.wait(min(left, 0.5)))
    return out


def collect_until(ring: Any, done: Any, timeout: float = 5.0) -> list[Completion]:
    """Call wait() until `done(all_completions_so_far)` is true; fail after `timeout`."""
    out: list[Completion] = []
    deadline = time.monotonic() + timeout
    while not done(out):
        left = deadline - time.monotonic()
        assert left > 0, f"condition not met within {timeout} s; got {len(out)}: {out[-20:]}"
        out.extend(ring.wait(min(left, 0.5)))
    return out


def by_user_data(completions: list[Completion]) -> dict[int, list[Completion]]:
    grouped: dict[int, list[Completion]] = {}
    for c in completions:
        grouped.setdefault(c[0], []).append(c)
    return grouped
