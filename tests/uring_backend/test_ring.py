"""Ring without network I/O: lifecycle, sizes, NOPs and batching, timeouts, errors.

Every test uses a real ring on the running kernel; the module skips (with the
reason) where no ring can be created.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.uring_backend.support import (
    NOTHING,
    by_user_data,
    collect,
    kernel_at_least,
    open_fds,
    others_of,
    require_ring,
)

require_ring()

from uring_backend import UringUnavailable  # noqa: E402
from uring_backend import ring as ring_module  # noqa: E402
from uring_backend.testing import TestingRing as Ring  # noqa: E402

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parents[2]
ETIME = errno.ETIME
ECANCELED = errno.ECANCELED


# -- lifecycle and sizes --------------------------------------------------------


def test_create_and_close_releases_the_ring_fd() -> None:
    before = open_fds()
    ring = Ring(8, buffers=8, buffer_size=64)
    try:
        assert open_fds() == before + 1  # the io_uring fd
        assert (ring.sq_entries, ring.cq_entries) == (8, 64)
        assert (ring.buffers, ring.buffer_size) == (8, 64)
    finally:
        ring.close()
    assert open_fds() == before
    ring.close()  # a second close is a no-op
    assert open_fds() == before
    assert ring.statistics().ops_in_flight == 0


def test_context_manager_closes_the_ring() -> None:
    before = open_fds()
    with Ring(8, buffers=8, buffer_size=64) as ring:
        assert isinstance(ring, Ring)
        assert open_fds() == before + 1
        ring.prep_nop(1)
        assert ring.wait(5) == ([], [], [(1, 0, 0, None)])
    assert open_fds() == before


def test_context_manager_closes_on_exception() -> None:
    before = open_fds()
    with pytest.raises(KeyError), Ring(8, buffers=8, buffer_size=64):
        assert open_fds() == before + 1
        raise KeyError("boom")
    assert open_fds() == before


def test_default_sizes() -> None:
    with Ring() as ring:
        assert ring.sq_entries == 256
        assert ring.cq_entries == 8 * 256 == 2048
        assert (ring.buffers, ring.buffer_size) == (1024, 4096)


@pytest.mark.parametrize(
    ("entries", "cq_factor", "cq"), [(8, 1, 8), (8, 2, 16), (64, 4, 256), (128, 8, 1024)]
)
def test_cq_is_cq_factor_times_sq(entries: int, cq_factor: int, cq: int) -> None:
    with Ring(entries, cq_factor=cq_factor, buffers=8, buffer_size=64) as ring:
        assert (ring.sq_entries, ring.cq_entries) == (entries, cq)


def test_taskrun_mode() -> None:
    with Ring(8, buffers=8, buffer_size=64) as ring:
        assert ring.taskrun in ("defer", "coop", "none")
        assert ring.features & ring_module.lib.IORING_FEAT_NODROP
        if kernel_at_least(6, 1):  # DEFER_TASKRUN exists since 6.1
            assert ring.taskrun == "defer"
            wanted = ring_module.SETUP_SINGLE_ISSUER | ring_module.SETUP_DEFER_TASKRUN
            assert ring.setup_flags & wanted == wanted
        assert ring.setup_flags & ring_module.SETUP_CQSIZE
        assert not ring.setup_flags & ring_module.SETUP_SQPOLL


def test_sqpoll_ring_round_trip(unix_pair: tuple[socket.socket, socket.socket]) -> None:
    try:
        ring = Ring(8, buffers=8, buffer_size=64, sqpoll=True)
    except UringUnavailable as exc:
        pytest.skip(f"SQPOLL refused here: {exc}")
    ours, peer = unix_pair
    with ring:
        assert ring.setup_flags & ring_module.SETUP_SQPOLL
        assert ring.taskrun in ("coop", "none")  # DEFER_TASKRUN cannot go with SQPOLL
        for ud in range(5):
            ring.prep_nop(ud)
        assert collect(ring, 5) == [(ud, 0, 0, None) for ud in range(5)]
        ring.send(3, ours.fileno(), b"over sqpoll")
        ring.watch(3)
        assert collect(ring, 1) == [(ring_module.IDLE << 56 | 3, 0, 0, None)]
        assert peer.recv(100) == b"over sqpoll"
        s = ring.statistics()
        assert (s.ops_in_flight, s.bytes_sent) == (0, 11)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"entries": 0},
        {"entries": 3},
        {"entries": 100},
        {"entries": -8},
        {"buffers": 0},
        {"buffers": 3},
        {"buffers": 1000},
        {"buffers": 65536},  # a provided-buffer ring holds at most 32768
        {"buffer_size": 0},
    ],
)
def test_bad_sizes_raise_value_error(kwargs: dict[str, int]) -> None:
    before = open_fds()
    with pytest.raises(ValueError):
        Ring(**kwargs)
    assert open_fds() == before


@pytest.mark.parametrize(("entries", "cq_factor"), [(65536, 1), (16384, 8)])
def test_sizes_beyond_the_kernel_limits_are_not_reported_as_unavailable(
    entries: int, cq_factor: int
) -> None:
    """Guards a fixed bug (ring.py, Ring.__init__): sizes the kernel cannot take misdiagnosed.

    Both are powers of two, so they pass the ValueError checks (and
    --ring-entries' validation); io_uring_setup then fails with EINVAL
    (SQ > 32768 or CQ > 65536 entries, and no IORING_SETUP_CLAMP), every
    rung of the flag ladder fails the same way, and the caller is told io_uring
    is unavailable, "kernel too old?".  Expected: ValueError naming the
    limit, or a clamped ring; never UringUnavailable on a kernel that has it.
    """
    try:
        ring = Ring(entries, cq_factor=cq_factor, buffers=8, buffer_size=64)
    except ValueError:
        return
    except UringUnavailable as exc:
        pytest.fail(f"Ring({entries}, cq_factor={cq_factor}) raised UringUnavailable: {exc}")
    ring.close()


# -- NOPs, batching, statistics --------------------------------------------------------


def test_nop_round_trip(ring: Ring) -> None:
    ud = 0xEFDC_BA98_7654_3210  # all 64 bits survive (top bytes from 0xF0 are the ring's)
    s0 = ring.statistics()
    ring.prep_nop(ud)
    assert ring.in_flight(ud)
    assert ring.statistics().ops_in_flight == 1
    assert ring.wait(5) == ([], [], [(ud, 0, 0, None)])
    assert not ring.in_flight(ud)
    s1 = ring.statistics()
    assert s1.io_uring_enter_calls - s0.io_uring_enter_calls == 1
    assert s1.sqes_submitted - s0.sqes_submitted == 1
    assert s1.cqes_reaped - s0.cqes_reaped == 1
    assert s1.ops_in_flight == 0


def test_the_rings_own_op_numbers() -> None:
    """The top byte of user_data from OWN_OPS up is the ring's: its sends and reports."""
    m = ring_module
    assert m.OWN_OPS == m.SEND_OP == 0xF0
    assert (m.IDLE, m.PAUSE, m.RESUME, m.SEND_ERROR) == (0xF1, 0xF2, 0xF3, 0xF4)


def test_user_data_just_below_the_rings_own_ops_round_trips(ring: Ring) -> None:
    ud = (ring_module.OWN_OPS - 1) << 56 | 0xFF_FFFF_FFFF_FFFF  # the largest a caller may use
    ring.prep_nop(ud)
    assert ring.wait(5) == ([], [], [(ud, 0, 0, None)])
    assert ring.statistics().ops_in_flight == 0


def test_batch_of_nops_is_one_enter(make_ring) -> None:
    ring = make_ring()  # defaults: SQ 256, CQ 2048
    s0 = ring.statistics()
    for ud in range(32):
        ring.prep_nop(ud)
    mid = ring.statistics()
    assert mid.io_uring_enter_calls == s0.io_uring_enter_calls  # queueing is not a syscall
    assert mid.ops_in_flight == 32
    completions = ring.wait()
    assert completions == ([], [], [(ud, 0, 0, None) for ud in range(32)])
    s1 = ring.statistics()
    assert s1.io_uring_enter_calls - s0.io_uring_enter_calls == 1
    assert s1.sqes_submitted - s0.sqes_submitted == 32
    assert s1.cqes_reaped - s0.cqes_reaped == 32
    assert s1.sq_full_submits == s0.sq_full_submits
    assert s1.ops_in_flight == 0


def test_batch_larger_than_the_sq_submits_when_full(make_ring) -> None:
    ring = make_ring(8, cq_factor=8, buffers=8, buffer_size=64)  # SQ 8, CQ 64
    for ud in range(20):
        ring.prep_nop(ud)
    s = ring.statistics()
    # The 9th and the 17th prep found the SQ full and submitted the 8 before them.
    assert (s.sq_full_submits, s.io_uring_enter_calls, s.sqes_submitted) == (2, 2, 16)
    assert s.cqes_reaped == 0
    assert ring.wait(5) == ([], [], [(ud, 0, 0, None) for ud in range(20)])
    s = ring.statistics()
    assert (s.sq_full_submits, s.io_uring_enter_calls, s.sqes_submitted) == (2, 3, 20)
    assert (s.cqes_reaped, s.ops_in_flight) == (20, 0)


def test_duplicate_user_data_in_flight_raises(ring: Ring) -> None:
    ring.prep_nop(5)
    with pytest.raises(ValueError, match="already in flight"):
        ring.prep_nop(5)
    with pytest.raises(ValueError, match="already in flight"):
        ring.prep_timeout(1.0, 5)
    assert ring.statistics().ops_in_flight == 1
    assert ring.wait(5) == ([], [], [(5, 0, 0, None)])  # one SQE went in, one CQE came out
    assert ring.wait(0) == NOTHING
    ring.prep_nop(5)  # free again once its completion was reaped
    assert ring.wait(5) == ([], [], [(5, 0, 0, None)])


def test_wait_on_an_idle_ring_returns_nothing(ring: Ring) -> None:
    assert ring.wait(0) == NOTHING
    start = time.monotonic()
    assert ring.wait(0.05) == NOTHING
    assert time.monotonic() - start >= 0.04


# -- timeouts and cancel ---------------------------------------------------------------


def test_timeout_completes_with_etime(ring: Ring) -> None:
    start = time.monotonic()
    ring.prep_timeout(0.2, 1)
    assert collect(ring, 1) == [(1, -ETIME, 0, None)]
    assert time.monotonic() - start >= 0.19
    assert ring.statistics().ops_in_flight == 0


def test_timeouts_queued_together_keep_their_own_durations(ring: Ring) -> None:
    """Each queued timeout has its own timespec (one per SQ slot), not a shared one."""
    start = time.monotonic()
    ring.prep_timeout(0.45, 3)
    ring.prep_timeout(0.05, 1)
    ring.prep_timeout(0.25, 2)
    seen: list[tuple[int, int, float]] = []
    while len(seen) < 3:
        for ud, res, flags, data in others_of(ring.wait(5)):
            assert (flags, data) == (0, None)
            seen.append((ud, res, time.monotonic() - start))
    assert [(ud, res) for ud, res, _ in seen] == [(1, -ETIME), (2, -ETIME), (3, -ETIME)]
    assert seen[2][2] >= 0.44


def test_cancel_a_pending_timeout(ring: Ring) -> None:
    ring.prep_timeout(30, 1)
    assert ring.wait(0) == NOTHING
    ring.prep_cancel(1, 2)
    got = by_user_data(collect(ring, 2))
    assert got == {1: [(1, -ECANCELED, 0, None)], 2: [(2, 0, 0, None)]}
    assert ring.statistics().ops_in_flight == 0


def test_cancel_of_unknown_user_data_is_enoent(ring: Ring) -> None:
    ring.prep_cancel(0x1234, 1)
    assert collect(ring, 1) == [(1, -errno.ENOENT, 0, None)]


def test_close_cancels_and_drains_everything_in_flight(
    unix_pair: tuple[socket.socket, socket.socket], sockets: list[socket.socket]
) -> None:
    ours, peer = unix_pair
    listener = socket.create_server(("127.0.0.1", 0))
    quiet, quiet_peer = socket.socketpair()  # nothing ever arrives: the poll stays armed
    sockets.extend((listener, quiet, quiet_peer))
    # Fill our send buffer so the ring's send has to wait for room.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    try:
        while True:
            ours.send(b"f" * 4096)
    except BlockingIOError:
        pass
    before = open_fds()
    orphans = len(ring_module._ORPHANS)
    ring = Ring(16, buffers=8, buffer_size=64)
    ring.prep_recv_multishot(ours.fileno(), 1)
    ring.prep_poll_multishot(quiet.fileno(), 2)
    ring.prep_timeout(30, 3)
    ring.prep_accept_multishot(listener.fileno(), 4)
    ring.send(5, ours.fileno(), b"s" * 65536)
    assert ring.wait(0.05) == NOTHING  # all five are submitted and waiting
    assert ring.statistics().ops_in_flight == 5  # four ops and the send queue's send
    assert ring.sending(5)
    ring.close()
    assert ring.statistics().ops_in_flight == 0  # every op reported its final CQE
    assert len(ring_module._ORPHANS) == orphans  # nothing had to be kept alive
    assert open_fds() == before  # the ring fd is gone and nothing was accepted
    peer.settimeout(0.2)  # none of the ring's 64 KiB were sent after the cancel
    received = b""
    try:
        while chunk := peer.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    assert b"s" not in received


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "exc_type"),
    [
        (errno.ECONNRESET, ConnectionResetError),
        (errno.EPIPE, BrokenPipeError),
        (errno.EBADF, OSError),
        (errno.ENOBUFS, OSError),
        (errno.EAGAIN, BlockingIOError),
    ],
)
def test_check_turns_negative_returns_into_oserror(err: int, exc_type: type) -> None:
    with pytest.raises(OSError) as info:
        ring_module._check(-err)
    assert type(info.value) is exc_type
    assert info.value.errno == err
    assert info.value.strerror == os.strerror(err)


def test_check_passes_non_negative_returns_through() -> None:
    assert ring_module._check(0) == 0
    assert ring_module._check(17) == 17


def test_kernel_error_from_wait_is_raised_as_oserror(ring: Ring) -> None:
    """A ring belongs to the thread that made it; another thread's enter is refused."""
    if ring.taskrun != "defer":
        pytest.skip("only a SINGLE_ISSUER/DEFER_TASKRUN ring refuses other threads")
    caught: list[BaseException] = []

    def other_thread() -> None:
        try:
            ring.wait(0)
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(10)
    assert len(caught) == 1 and isinstance(caught[0], OSError), caught
    err = caught[0]
    assert isinstance(err, OSError)
    # EINVAL: the registered ring fd is per thread; EEXIST: not the submitter task.
    assert err.errno in (errno.EINVAL, errno.EEXIST)
    assert err.strerror == os.strerror(err.errno)
    ring.prep_nop(1)  # still fine from its own thread
    assert ring.wait(5) == ([], [], [(1, 0, 0, None)])


def test_uring_unavailable_messages() -> None:
    eperm = UringUnavailable(errno.EPERM)
    assert isinstance(eperm, RuntimeError)  # lifecycle.py catches RuntimeError
    assert eperm.errno == errno.EPERM
    text = str(eperm)
    assert "seccomp" in text
    assert "kernel.io_uring_disabled" in text
    assert "EPERM" in text and os.strerror(errno.EPERM) in text
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            sysctl = f.read().strip()
    except OSError:
        sysctl = "not present"
    assert f"(now: {sysctl};" in text

    enosys = str(UringUnavailable(errno.ENOSYS))
    assert "kernel" in enosys and "podman" in enosys and "ENOSYS" in enosys

    enomem = str(UringUnavailable(errno.ENOMEM))
    assert "locked-memory limit" in enomem and "ulimit -l" in enomem

    einval = str(UringUnavailable(errno.EINVAL))
    assert "EINVAL" in einval and "rejected the ring parameters" in einval

    other = str(UringUnavailable(errno.EACCES))
    assert other == f"io_uring_setup failed: {os.strerror(errno.EACCES)} (EACCES)."


# -- bugs ----------------------------------------------------------------------------------

USE_AFTER_CLOSE = """
from uring_backend.testing import TestingRing as Ring
ring = Ring(8, buffers=8, buffer_size=64)
ring.close()
try:
    ring.{call}
except Exception as exc:
    print("raised", type(exc).__name__)
else:
    print("returned")
"""


@pytest.mark.parametrize("call", ["prep_nop(1)", "wait(0)"])
def test_using_a_closed_ring_raises_instead_of_crashing(call: str) -> None:
    """Guards a fixed bug (ring.py prep_*/wait, urb_cycle/urb_sqe): use after close() crashed.

    close() calls urb_exit -> io_uring_queue_exit, which munmaps the SQ/CQ
    rings but leaves r->ring's pointers (sq.khead, sq.sqes, cq.ktail...) as
    they were; nothing in Ring checks `_closed` before calling into C, so
    io_uring_get_sqe / io_uring_sq_ready dereference unmapped memory and the
    interpreter dies with SIGSEGV.  Expected: a Python exception.
    Run in a child process so the crash cannot take pytest down.
    """
    proc = subprocess.run(
        [sys.executable, "-c", USE_AFTER_CLOSE.format(call=call)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, (
        f"ring.{call} after close() killed the process "
        f"(returncode {proc.returncode}; -11 is SIGSEGV); stderr: {proc.stderr[-500:]}"
    )
    assert proc.stdout.startswith("raised "), proc.stdout


SEND_QUEUE_CALLS_AFTER_CLOSE = """
import errno
from uring_backend.testing import TestingRing as Ring
ring = Ring(8, buffers=8, buffer_size=64)
ring.close()
print(ring.sending(0))
ring.reset(0)
print("reset")
ring.watch(0)
ring.send(0, 1, b"x")
for call in (lambda: ring.drop(0), lambda: ring.wait(0)):
    try:
        call()
    except OSError as exc:
        print("raised", errno.errorcode[exc.errno])
print(ring.statistics().ops_in_flight)
"""


def test_send_queue_calls_on_a_closed_ring_do_not_crash() -> None:
    """BUG (_build.py urb_exit): drop(), sending() and reset() after close() segfaulted.

    urb_exit freed the send queues (r->outs = NULL) but left r->nouts, so
    the slot bounds check passed and the three dereferenced NULL.  Expected:
    nothing is sending, reset is a no-op, drop() raises EBADF as the preps
    and wait() do.  In a child process so a crash cannot take pytest down.
    """
    proc = subprocess.run(
        [sys.executable, "-c", SEND_QUEUE_CALLS_AFTER_CLOSE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, (
        f"a send-queue call after close() killed the process (returncode "
        f"{proc.returncode}; -11 is SIGSEGV); stdout: {proc.stdout!r}; stderr: {proc.stderr[-500:]}"
    )
    assert proc.stdout == "False\nreset\nraised EBADF\nraised EBADF\n0\n"


@pytest.mark.parametrize(
    ("ud", "call"),
    [
        pytest.param(-1, lambda ring, fd, ud: ring.prep_nop(ud), id="negative-user-data"),
        pytest.param(1 << 64, lambda ring, fd, ud: ring.prep_nop(ud), id="user-data-over-64-bits"),
        pytest.param(0xF0 << 56 | 7, lambda ring, fd, ud: ring.prep_nop(ud), id="top-byte-f0"),
        pytest.param(
            0xFF << 56, lambda ring, fd, ud: ring.prep_recv_multishot(fd, ud), id="top-byte-ff"
        ),
    ],
)
def test_a_prep_that_raises_leaves_nothing_in_flight(
    ring: Ring, unix_pair: tuple[socket.socket, socket.socket], ud: int, call
) -> None:
    """Guards a fixed bug (ring.py, every prep_*): `_track(user_data)` ran before the C call.

    When the call then raises (cffi's OverflowError for a value that does not
    fit its C type, or `_check`'s OSError when urb_sqe cannot get an SQE),
    no SQE was queued but `_inflight` keeps the user_data: ops_in_flight is
    wrong forever, the user_data can never be used again ("already in
    flight"), and close() spends its whole 1 s drain waiting for a
    completion that cannot come, then parks the entry in _ORPHANS.
    Expected: track only after the SQE is queued (or untrack on failure).
    """
    fd = unix_pair[0].fileno()
    try:
        with pytest.raises((ValueError, OverflowError, OSError)):
            call(ring, fd, ud)
        assert not ring.in_flight(ud)
        assert ring.statistics().ops_in_flight == 0
        assert ring.wait(0) == NOTHING  # and indeed nothing was queued
    finally:
        ring._inflight.pop(ud, None)  # spare the fixture's close() its 1 s drain


def test_a_kernel_without_nodrop_is_refused_with_the_reason(monkeypatch) -> None:
    """The backend relies on NODROP (multishot CQEs must never be lost): set-up checks it."""
    missing = 1 << 31  # a feature bit no kernel reports
    monkeypatch.setattr(ring_module, "FEAT_NODROP", missing)
    fds = open_fds()
    with pytest.raises(UringUnavailable) as exc:
        Ring(8, buffers=8, buffer_size=64)
    assert str(exc.value) == "io_uring unusable: the kernel lacks IORING_FEAT_NODROP (5.5+)."
    assert open_fds() == fds  # the ring it made was torn down
