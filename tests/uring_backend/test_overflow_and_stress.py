"""CQ overflow (IORING_FEAT_NODROP) and a reset storm with hundreds of ops and sends in flight.

The module skips (with the reason) where no ring can be created.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct
import time
from collections import Counter

import pytest

from tests.uring_backend.support import (
    DATA,
    NOTHING,
    collect,
    collect_until,
    merged,
    open_fds,
    require_ring,
)

require_ring()

from uring_backend import ring as ring_module  # noqa: E402
from uring_backend.ring import F_BUFFER, F_MORE, IDLE, OWN_OPS, PAUSE, SEND_ERROR  # noqa: E402

pytestmark = pytest.mark.timeout(60)


# -- CQ overflow -------------------------------------------------------------------------------


def test_cq_overflow_of_nops_delivers_every_completion_once(make_ring) -> None:
    """100 NOPs complete while the CQ holds 16: the kernel keeps the rest (NODROP).

    prep_nop never waits, and with the SQ (8) full the 9th, 17th... prep
    submits the 8 before it; a NOP completes during submission, so before the
    first wait() 96 completions have been posted to a CQ of 16: 80 sit in
    the kernel's overflow list.  Each wait() drains at most the CQ size, and
    every wait after the CQ is empty flushes more of the overflow.
    """
    ring = make_ring(8, cq_factor=2, buffers=8, buffer_size=64)
    assert (ring.sq_entries, ring.cq_entries) == (8, 16)
    assert ring.features & ring_module.lib.IORING_FEAT_NODROP
    for ud in range(100):
        ring.prep_nop(ud)
    s = ring.statistics()
    assert (s.sq_full_submits, s.sqes_submitted, s.cqes_reaped) == (12, 96, 0)
    assert s.ops_in_flight == 100
    first = ring.wait(5)
    assert first == ([], [], [(ud, 0, 0, None) for ud in range(16)])  # the CQ was full
    rest = collect(ring, 84)
    got = first[2] + rest
    assert [c[0] for c in got] == list(range(100))  # each once, in order
    assert all(c[1:] == (0, 0, None) for c in got)
    assert ring.wait(0) == NOTHING
    s = ring.statistics()
    assert (s.sqes_submitted, s.cqes_reaped, s.ops_in_flight) == (100, 100, 0)


def test_cq_overflow_under_multishot_recv_loses_no_bytes(make_ring, unix_pair) -> None:
    """A multishot recv that finds the CQ full ends (F_MORE clear) with its data kept.

    10 KiB wait in the socket, buffers are 64 bytes and the CQ holds 16: the
    recv posts 16 CQEs with F_MORE, then cannot post the 17th into the full
    CQ, so the kernel ends the multishot and its last CQE (carrying data, no
    F_MORE) goes to the overflow list.  Re-arming on every final CQE must
    yield every byte exactly once, in order.
    """
    ring = make_ring(8, cq_factor=2, buffers=64, buffer_size=64)
    ours, peer = unix_pair
    payload = bytes(range(256)) * 40
    peer.sendall(payload)
    ring.prep_recv_multishot(ours.fileno(), 1)
    # The first wait drains the full CQ: 16 data completions, 64 bytes each.
    assert ring.wait(5) == ([1] * 16, [payload[i : i + 64] for i in range(0, 1024, 64)], [])
    assert ring.cq_entries == 16
    received = bytearray(payload[:1024])
    ended_with_data = 0
    deadline = time.monotonic() + 10
    while len(received) < len(payload):
        assert time.monotonic() < deadline, f"{len(received)} of {len(payload)} bytes"
        if not ring.in_flight(1):
            ring.prep_recv_multishot(ours.fileno(), 1)
        for ud, res, flags, data in merged(ring.wait(1)):
            assert ud == 1
            if res == -errno.ENOBUFS:
                assert (flags, data) == (0, None)  # buffers ran dry: re-arm too
                continue
            assert data is not None and res == len(data) > 0
            received += data
            if flags != DATA:  # the last CQE of a recv: its data, F_BUFFER, no F_MORE
                assert flags & F_BUFFER and not flags & F_MORE, flags
                ended_with_data += 1
    assert bytes(received) == payload
    assert ended_with_data >= 1, "the full CQ should have ended the multishot recv"
    assert ring.wait(0) == NOTHING  # nothing duplicated behind the last byte


# -- stress: a reset storm with recvs armed and sends parked ------------------------------------


def _connections_allowed() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, min(400, (soft - open_fds() - 64) // 2))


def test_reset_storm_with_ops_and_sends_in_flight(make_ring, sockets: list[socket.socket]) -> None:
    """Hundreds of connections, each with a recv armed and a send parked on a full socket.

    Each connection's slot gets 256 KiB, far more than its socket holds
    (client SO_RCVBUF 4 KiB, ours SO_SNDBUF 8 KiB), so every queue pauses
    (above 64 KiB) and keeps one send in flight.  Resetting the even clients
    ends their recv and fails their send (SEND_ERROR); the odd ones are
    dropped and cancelled by fd, as a server aborting them would (IDLE).
    """
    n = _connections_allowed()
    if n < 100:
        pytest.skip(f"RLIMIT_NOFILE leaves room for only {n} connections")
    before = open_fds()
    ring = make_ring(
        256, buffers=1024, buffer_size=4096, send_slots=n, send_high=64 << 10, send_low=16 << 10
    )
    accept_ud, recv, cancel, close = 1, 1 << 32, 3 << 32, 4 << 32
    mask = (1 << 32) - 1

    def kind(ud: int) -> int:
        """The report kind for the ring's own, else the test's op number."""
        return ud >> 56 if ud >> 56 >= OWN_OPS else ud >> 32

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(listener)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # inherited on accept
    listener.bind(("127.0.0.1", 0))
    listener.listen(n)
    ring.prep_accept_multishot(listener.fileno(), accept_ud)
    clients = []
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(c)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never reads
        c.settimeout(10)
        c.connect(listener.getsockname())
        clients.append(c)

    payload = os.urandom(256 << 10)
    fds: list[int] = []
    paused: Counter[int] = Counter()
    deadline = time.monotonic() + 20
    while len(fds) < n:
        assert time.monotonic() < deadline, f"accepted {len(fds)} of {n}"
        for ud, res, flags, _ in others_only(ring.wait(1)):
            if kind(ud) == PAUSE:  # the send queued in an earlier pass
                paused[ud & mask] += 1
                continue
            assert (ud, res >= 0, bool(flags & F_MORE)) == (accept_ud, True, True), (ud, res)
            i = len(fds)
            fds.append(res)
            ring.prep_recv_multishot(res, recv | i)
            ring.send(i, res, payload)

    # Wait until a pass brings nothing: every queue has paused, every send is parked.
    while batch := others_only(ring.wait(0.2)):
        for ud, res, flags, data in batch:
            assert (kind(ud), res, flags, data) == (PAUSE, 0, 0, None), (ud, res)
            paused[ud & mask] += 1
    assert paused == Counter(range(n)), "each queue pauses exactly once"
    for i in range(n):
        assert ring.in_flight(recv | i) and ring.sending(i)
    s = ring.statistics()
    assert s.ops_in_flight == 2 * n + 1  # n recvs, n sends, the accept
    assert 0 < s.bytes_sent < n * len(payload)

    # Reset the even clients: their connection's recv ends and its send fails.
    for i in range(0, n, 2):
        reset(clients[i])
    resets = n - n // 2
    storm = collect(ring, 2 * resets, timeout=20)
    assert len(storm) == 2 * resets
    finals: dict[int, int] = {}
    for ud, res, flags, data in storm:
        assert kind(ud) in (1, SEND_ERROR), (ud, res, flags)
        assert not flags & F_MORE and data is None, (ud, res, flags)
        assert (ud & mask) % 2 == 0, "an untouched connection's op ended"
        assert ud not in finals
        finals[ud] = res
    for i in range(0, n, 2):
        r, s_ = finals[recv | i], finals[SEND_ERROR << 56 | i]
        # The RST's error is reported once: to whichever op looks first;
        # the other then sees EOF (recv) or EPIPE (send).
        assert r in (-errno.ECONNRESET, 0), (i, r, s_)
        assert s_ in (-errno.ECONNRESET, -errno.EPIPE), (i, r, s_)
        assert -errno.ECONNRESET in (r, s_), (i, r, s_)
        assert not ring.sending(i)  # the failed queue was dropped

    # Drop the odd connections' queues (a send is in flight in each) and
    # cancel their recv and send by fd; then cancel the accept.
    for i in range(1, n, 2):
        assert ring.drop(i) is True
        ring.prep_cancel_fd(fds[i], cancel | i)
    ring.prep_cancel(accept_ud, cancel | mask)
    got = Counter(
        (kind(ud), res, flags) for ud, res, flags, _ in collect(ring, 3 * (n // 2) + 2, timeout=20)
    )
    assert got == Counter(
        {
            (3, 2, 0): n // 2,  # each cancel_fd found the recv and the send
            (1, -errno.ECANCELED, 0): n // 2,
            (IDLE, 0, 0): n // 2,  # the dropped queue's cancelled send completed
            (0, -errno.ECANCELED, 0): 1,  # the accept
            (3, 0, 0): 1,  # the accept's cancel
        }
    )
    assert ring.statistics().ops_in_flight == 0
    assert not any(ring.sending(i) for i in range(n))

    # Close every accepted fd through the ring.
    for i, fd in enumerate(fds):
        ring.prep_close(fd, close | i)
    closed = collect_until(ring, lambda cs: len(cs) >= n, timeout=20)
    assert sorted(closed) == sorted((close | i, 0, 0, None) for i in range(n))
    assert ring.statistics().ops_in_flight == 0
    assert ring.wait(0) == NOTHING
    for c in clients:
        c.close()
    listener.close()
    ring.close()
    assert open_fds() == before


def others_only(batch):
    """The others of one wait(); no recv in this test is ever given bytes."""
    data_uds, datas, others = batch
    assert (data_uds, datas) == ([], []), batch
    return others


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
