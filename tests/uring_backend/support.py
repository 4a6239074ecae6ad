"""Helpers shared by the Ring tests.

`require_ring()` is the liburing-style T_EXIT_SKIP: called at the top of a
test module, it skips the whole module, with the reason, when the extension
is not built or the kernel (or a seccomp profile, or the sysctl) refuses to
create a ring (the probe is `tests.support.uring_available`, which also
decides the skips of the other suites; an extension that is not built is
only a reason to skip).

`Ring.wait()` returns ``(data_uds, datas, others)``: the receive completions
that carry bytes in two flat lists (no flags: the ring keeps their buffer ids
to itself), and every other completion or report as a 4-tuple.  Tests that
count completions see both partitions merged per call, in *CQ-relative* form:
each data completion becomes ``(user_data, len(data), DATA, data)`` and comes
first, in CQ order, then the others in CQ order.  (The order between the two
partitions within one call is not observable.)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Final

import pytest

from tests.support import URING_SKIP, open_fds

__all__ = ["open_fds"]

# Completions are (user_data, res, flags, data), as Ring.wait() returns them.
Completion = tuple[int, int, int, "bytes | None"]
Batch = tuple[list[int], list[bytes], list[Completion]]

NOTHING: Final[Batch] = ([], [], [])  # what wait() returns on a timeout
# The flags of a data completion in merged form: wait() reports none for them,
# and no CQE has these (flags are 32 bits, never negative).
DATA: Final = -1


def require_ring() -> None:
    """Skip the calling module unless a Ring can be created here."""
    if URING_SKIP is not None:
        pytest.skip(URING_SKIP, allow_module_level=True)


def kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def merged(batch: Batch) -> list[Completion]:
    """One wait()'s result as one list: data completions (DATA form) first, then the others."""
    data_uds, datas, others = batch
    assert len(data_uds) == len(datas), batch
    for d in datas:
        assert type(d) is bytes and len(d) > 0, batch
    return [(ud, len(d), DATA, d) for ud, d in zip(data_uds, datas, strict=True)] + others


def others_of(batch: Batch) -> list[Completion]:
    """The others of one wait(), asserting it brought no data completion."""
    data_uds, datas, others = batch
    assert (data_uds, datas) == ([], []), batch
    return others


def collect(ring: Any, count: int, timeout: float = 5.0) -> list[Completion]:
    """Call wait() until at least `count` completions arrived (merged); fail after `timeout`."""
    out: list[Completion] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {count} completions within {timeout} s: {out}"
        out.extend(merged(ring.wait(min(left, 0.5))))
    return out


def collect_until(
    ring: Any, done: Callable[[list[Completion]], bool], timeout: float = 5.0, step: float = 0.5
) -> list[Completion]:
    """Call wait() until `done(all_completions_so_far)` is true (merged); fail after `timeout`."""
    out: list[Completion] = []
    deadline = time.monotonic() + timeout
    while not done(out):
        left = deadline - time.monotonic()
        assert left > 0, f"condition not met within {timeout} s; got {len(out)}: {out[-20:]}"
        out.extend(merged(ring.wait(min(left, step))))
    return out


def by_user_data(completions: list[Completion]) -> dict[int, list[Completion]]:
    grouped: dict[int, list[Completion]] = {}
    for c in completions:
        grouped.setdefault(c[0], []).append(c)
    return grouped
