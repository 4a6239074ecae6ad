"""CQ overflow (IORING_FEAT_NODROP) and a reset storm with hundreds of ops in flight.

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

from tests.uring_backend.support import collect, collect_until, open_fds, require_ring

require_ring()

from uring_backend import ring as ring_module  # noqa: E402
from uring_backend.ring import F_BUFFER, F_MORE  # noqa: E402

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
    assert first == [(ud, 0, 0, None) for ud in range(16)]  # the CQ was full
    rest = collect(ring, 84)
    got = first + rest
    assert [c[0] for c in got] == list(range(100))  # each once, in order
    assert all(c[1:] == (0, 0, None) for c in got)
    assert ring.wait(0) == []
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
    first = ring.wait(5)
    assert len(first) == ring.cq_entries == 16
    assert all(c[0] == 1 and c[1] == 64 and c[2] & F_MORE for c in first)
    received = bytearray(b"".join(c[3] for c in first))
    ended_with_data = 0
    deadline = time.monotonic() + 10
    while len(received) < len(payload):
        assert time.monotonic() < deadline, f"{len(received)} of {len(payload)} bytes"
        if not ring.in_flight(1):
            ring.prep_recv_multishot(ours.fileno(), 1)
        for ud, res, flags, data in ring.wait(1):
            assert ud == 1
            if res == -errno.ENOBUFS:
                assert (flags, data) == (0, None)  # buffers ran dry: re-arm too
                continue
            assert res > 0 and flags & F_BUFFER and data is not None and len(data) == res
            received += data
            if not flags & F_MORE:
                ended_with_data += 1
    assert bytes(received) == payload
    assert ended_with_data >= 1, "the full CQ should have ended the multishot recv"
    assert ring.wait(0) == []  # nothing duplicated behind the last byte


# -- stress: a reset storm with recvs armed and sends parked ------------------------------------


def _connections_allowed() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, min(400, (soft - open_fds() - 64) // 2))


def test_reset_storm_with_ops_in_flight(make_ring, sockets: list[socket.socket]) -> None:
    n = _connections_allowed()
    if n < 100:
        pytest.skip(f"RLIMIT_NOFILE leaves room for only {n} connections")
    before = open_fds()
    ring = make_ring(256, buffers=1024, buffer_size=4096)
    accept_ud, recv, send, cancel, close = 1, 1 << 32, 2 << 32, 3 << 32, 4 << 32
    mask = (1 << 32) - 1

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

    payload = os.urandom(1 << 20)  # one object, referenced by every send
    fds: list[int] = []
    offset: dict[int, int] = {}
    deadline = time.monotonic() + 20
    while len(fds) < n:
        assert time.monotonic() < deadline, f"accepted {len(fds)} of {n}"
        for ud, res, flags, _ in ring.wait(1):
            assert (ud, res >= 0, bool(flags & F_MORE)) == (accept_ud, True, True), (ud, res)
            i = len(fds)
            fds.append(res)
            offset[i] = 0
            ring.prep_recv_multishot(res, recv | i)
            ring.prep_send(res, payload, send | i)

    # Resume short sends until a pass brings nothing: every send is parked.
    while completions := ring.wait(0.2):
        for ud, res, flags, _ in completions:
            i = ud & mask
            assert ud == send | i and 0 < res < len(payload) - offset[i], (ud, res)
            assert flags == 0
            offset[i] += res
            ring.prep_send(fds[i], payload, send | i, offset=offset[i])
    for i in range(n):
        assert ring.in_flight(recv | i) and ring.in_flight(send | i)
    assert ring.statistics().ops_in_flight == 2 * n + 1

    # Reset the even clients: their connection's recv and send both end.
    for i in range(0, n, 2):
        reset(clients[i])
    resets = n - n // 2
    storm = collect(ring, 2 * resets, timeout=20)
    assert len(storm) == 2 * resets
    finals: dict[int, int] = {}
    for ud, res, flags, data in storm:
        assert not flags & F_MORE and data is None, (ud, res, flags)
        assert (ud & mask) % 2 == 0, "an untouched connection's op ended"
        assert ud not in finals
        finals[ud] = res
    for i in range(0, n, 2):
        r, s = finals[recv | i], finals[send | i]
        # The RST's error is reported once: to whichever op looks first;
        # the other then sees EOF (recv) or EPIPE (send).
        assert r in (-errno.ECONNRESET, 0), (i, r, s)
        assert s in (-errno.ECONNRESET, -errno.EPIPE), (i, r, s)
        assert -errno.ECONNRESET in (r, s), (i, r, s)

    # Cancel the odd connections' recv and send by fd, and the accept.
    for i in range(1, n, 2):
        ring.prep_cancel_fd(fds[i], cancel | i)
    ring.prep_cancel(accept_ud, cancel | mask)
    got = Counter(
        (ud >> 32, res, flags) for ud, res, flags, _ in collect(ring, 3 * (n // 2) + 2, timeout=20)
    )
    assert got == Counter(
        {
            (3, 2, 0): n // 2,  # each cancel_fd found the recv and the send
            (1, -errno.ECANCELED, 0): n // 2,
            (2, -errno.ECANCELED, 0): n // 2,
            (0, -errno.ECANCELED, 0): 1,  # the accept
            (3, 0, 0): 1,  # the accept's cancel
        }
    )
    assert ring.statistics().ops_in_flight == 0

    # Close every accepted fd through the ring.
    for i, fd in enumerate(fds):
        ring.prep_close(fd, close | i)
    closed = collect_until(ring, lambda cs: len(cs) >= n, timeout=20)
    assert sorted(closed) == sorted((close | i, 0, 0, None) for i in range(n))
    assert ring.statistics().ops_in_flight == 0
    assert ring.wait(0) == []
    for c in clients:
        c.close()
    listener.close()
    ring.close()
    assert open_fds() == before


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
