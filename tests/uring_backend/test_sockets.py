"""Ring on real sockets (127.0.0.1 TCP and AF_UNIX pairs): accept, recv, send, cancel, close.

The module skips (with the reason) where no ring can be created.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import select
import socket
import struct
import threading

import pytest

from tests.uring_backend.support import by_user_data, collect, collect_until, require_ring

require_ring()

from uring_backend.ring import BUFFER_SHIFT, F_BUFFER, F_MORE  # noqa: E402
from uring_backend.testing import TestingRing as Ring  # noqa: E402

pytestmark = pytest.mark.timeout(30)

ECANCELED = errno.ECANCELED
Pair = tuple[socket.socket, socket.socket]


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_data_completion(c, ud: int, ring: Ring) -> bytes:
    """A recv completion that carries bytes from a provided buffer."""
    cud, res, flags, data = c
    assert cud == ud
    assert res > 0, c
    assert flags & F_BUFFER, c
    assert 0 <= flags >> BUFFER_SHIFT < ring.buffers
    assert data is not None and len(data) == res <= ring.buffer_size
    return data


# -- accept ---------------------------------------------------------------------------


def test_multishot_accept(ring: Ring, sockets: list[socket.socket]) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    sockets.append(listener)
    s0 = ring.statistics()
    ring.prep_accept_multishot(listener.fileno(), 1)
    assert ring.wait(0) == []
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(5)]
    sockets.extend(clients)
    completions = collect(ring, 5)
    assert len(completions) == 5
    accepted = []
    for ud, res, flags, data in completions:
        assert (ud, data) == (1, None)
        assert res >= 0
        assert flags & F_MORE  # still armed
        accepted.append(socket.socket(fileno=res))  # owns (and will close) the fd
    sockets.extend(accepted)
    assert len({s.fileno() for s in accepted}) == 5
    for s in accepted:  # the shim asks for SOCK_NONBLOCK | SOCK_CLOEXEC
        assert fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert {s.getpeername() for s in accepted} == {c.getsockname() for c in clients}
    assert ring.in_flight(1)
    assert ring.statistics().sqes_submitted - s0.sqes_submitted == 1  # one SQE, five CQEs

    ring.prep_cancel(1, 2)
    got = by_user_data(collect(ring, 2))
    assert got == {1: [(1, -ECANCELED, 0, None)], 2: [(2, 0, 0, None)]}
    assert ring.statistics().ops_in_flight == 0


# -- recv -------------------------------------------------------------------------------


def test_multishot_recv_delivers_bytes_then_eof(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_recv_multishot(ours.fileno(), 7)
    assert ring.wait(0) == []
    peer.sendall(b"hello, ring")
    [c] = collect(ring, 1)
    assert assert_data_completion(c, 7, ring) == b"hello, ring"
    assert c[2] & F_MORE
    assert ring.pending_buffers == 1  # given back on the next wait()
    peer.sendall(b"second")
    [c] = collect(ring, 1)
    assert assert_data_completion(c, 7, ring) == b"second"
    assert ring.in_flight(7)
    peer.close()
    assert collect(ring, 1) == [(7, 0, 0, None)]  # EOF ends the multishot
    assert not ring.in_flight(7)


def test_multishot_recv_stays_armed_across_1000_messages(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair()
    s0 = ring.statistics()
    ring.prep_recv_multishot(ours.fileno(), 9)
    messages = [b"%04d:" % i + bytes([97 + i % 26]) * (i % 61) + b"\n" for i in range(1000)]
    expected = b"".join(messages)
    received = bytearray()
    for start in range(0, 1000, 100):
        for m in messages[start : start + 100]:
            peer.sendall(m)
        need = len(b"".join(messages[: start + 100])) - len(received)
        for c in collect_until(ring, lambda cs, need=need: sum(c[1] for c in cs) >= need):
            received += assert_data_completion(c, 9, ring)
            assert c[2] & F_MORE, "the recv ended; it should stay armed"
    assert bytes(received) == expected
    assert ring.wait(0) == []
    assert ring.in_flight(9)
    assert ring.statistics().sqes_submitted - s0.sqes_submitted == 1  # never re-armed
    ring.prep_cancel(9, 10)
    got = by_user_data(collect(ring, 2))
    assert got == {9: [(9, -ECANCELED, 0, None)], 10: [(10, 0, 0, None)]}


def test_buffer_ring_exhaustion_ends_recv_with_enobufs(make_ring, unix_pair: Pair) -> None:
    ring = make_ring(32, buffers=4, buffer_size=64)
    ours, peer = unix_pair
    payload = os.urandom(1000)  # more than 4 * 64 bytes, there before we wait
    peer.sendall(payload)
    ring.prep_recv_multishot(ours.fileno(), 3)
    first = ring.wait(5)
    # The four buffers fill with 64 bytes each, then the ring is dry.
    assert len(first) == 5, first
    chunks = [assert_data_completion(c, 3, ring) for c in first[:4]]
    assert all(c[2] & F_MORE for c in first[:4])
    assert chunks == [payload[i : i + 64] for i in range(0, 256, 64)]
    assert sorted(c[2] >> BUFFER_SHIFT for c in first[:4]) == [0, 1, 2, 3]
    assert first[4] == (3, -errno.ENOBUFS, 0, None)  # no F_MORE, no F_BUFFER
    assert not ring.in_flight(3)
    assert ring.pending_buffers == 4  # copied out, given back on the next wait()

    received = bytearray(b"".join(chunks))
    enobufs = 1
    while len(received) < len(payload):
        if not ring.in_flight(3):
            ring.prep_recv_multishot(ours.fileno(), 3)  # re-arm
        for c in ring.wait(5):
            if c[1] == -errno.ENOBUFS:
                assert c == (3, -errno.ENOBUFS, 0, None)
                enobufs += 1
            else:
                received += assert_data_completion(c, 3, ring)
    assert bytes(received) == payload
    # 1000 bytes = three rounds of 4 x 64 that each end dry, then 64+64+64+40.
    assert enobufs == 3
    assert ring.in_flight(3)  # the last round did not run dry: still armed
    assert ring.wait(0) == []


# -- send --------------------------------------------------------------------------------


def test_send_bytes_arrive_exactly(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair()
    payload = bytes(range(256)) * 4 + b"tail"
    ring.prep_send(ours.fileno(), payload, 11)
    assert ring.in_flight(11)
    assert collect(ring, 1) == [(11, len(payload), 0, None)]
    assert not ring.in_flight(11)
    received = b""
    while len(received) < len(payload):
        received += peer.recv(65536)
    assert received == payload


def test_send_at_offset_sends_only_the_tail(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_send(ours.fileno(), b"0123456789", 12, offset=6)
    assert collect(ring, 1) == [(12, 4, 0, None)]
    assert peer.recv(100) == b"6789"


def test_short_send_resumes_at_offset(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    data = os.urandom(4 << 20)
    digest = hashlib.sha256()
    counted = [0]

    def reader() -> None:
        while chunk := peer.recv(65536):
            digest.update(chunk)
            counted[0] += len(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    sent = 0
    short = 0
    ring.prep_send(ours.fileno(), data, 13)
    while sent < len(data):
        [(ud, res, flags, extra)] = collect(ring, 1, timeout=10)
        assert (ud, flags, extra) == (13, 0, None)
        assert 0 < res <= len(data) - sent
        if res < len(data) - sent:
            short += 1
        sent += res
        if sent < len(data):
            ring.prep_send(ours.fileno(), data, 13, offset=sent)
    ours.shutdown(socket.SHUT_WR)
    t.join(10)
    assert not t.is_alive()
    assert short > 0, "the small buffers should have forced short sends"
    assert counted[0] == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert ring.statistics().ops_in_flight == 0


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_by_user_data_ends_an_armed_recv(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_recv_multishot(ours.fileno(), 20)
    assert ring.wait(0) == []
    assert ring.statistics().ops_in_flight == 1
    ring.prep_cancel(20, 21)
    got = by_user_data(collect(ring, 2))
    assert got == {20: [(20, -ECANCELED, 0, None)], 21: [(21, 0, 0, None)]}
    assert ring.statistics().ops_in_flight == 0
    peer.sendall(b"after")  # nothing is armed any more
    assert ring.wait(0.05) == []


def test_cancel_fd_ends_every_op_on_the_fd(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_recv_multishot(ours.fileno(), 30)
    ring.prep_poll_multishot(ours.fileno(), 31)
    ring.prep_poll_multishot(peer.fileno(), 32)  # another fd: untouched
    assert ring.wait(0) == []
    ring.prep_cancel_fd(ours.fileno(), 33)
    got = by_user_data(collect(ring, 3))
    assert got == {
        30: [(30, -ECANCELED, 0, None)],
        31: [(31, -ECANCELED, 0, None)],
        33: [(33, 2, 0, None)],  # CANCEL_ALL reports how many it cancelled
    }
    assert ring.in_flight(32)
    assert ring.statistics().ops_in_flight == 1
    ring.prep_cancel_fd(ours.fileno(), 34)  # nothing left on the fd: cancelled none
    assert collect(ring, 1) == [(34, 0, 0, None)]


def test_armed_multishot_keeps_its_user_data_reserved(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_recv_multishot(ours.fileno(), 40)
    peer.sendall(b"x")
    [c] = collect(ring, 1)
    assert c[2] & F_MORE and c[3] == b"x"
    with pytest.raises(ValueError, match="already in flight"):
        ring.prep_nop(40)
    peer.close()
    assert collect(ring, 1) == [(40, 0, 0, None)]
    ring.prep_nop(40)
    assert collect(ring, 1) == [(40, 0, 0, None)]


def test_poll_multishot_reports_readable(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_poll_multishot(ours.fileno(), 50)
    assert ring.wait(0.05) == []
    peer.sendall(b"ping")
    [(ud, res, flags, data)] = collect(ring, 1)
    assert (ud, data) == (50, None)
    assert res & select.POLLIN
    assert flags & F_MORE
    assert ours.recv(10) == b"ping"
    ring.prep_cancel(50, 51)
    got = by_user_data(collect(ring, 2))
    assert got == {50: [(50, -ECANCELED, 0, None)], 51: [(51, 0, 0, None)]}


# -- errors the kernel reports in res ----------------------------------------------------


def test_recv_on_a_reset_connection_is_econnreset(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair()
    ring.prep_recv_multishot(ours.fileno(), 60)
    assert ring.wait(0) == []
    reset(peer)
    assert collect(ring, 1) == [(60, -errno.ECONNRESET, 0, None)]


def test_send_to_a_closed_peer_is_epipe(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    peer.close()
    ring.prep_send(ours.fileno(), b"nobody listens", 61)
    assert collect(ring, 1) == [(61, -errno.EPIPE, 0, None)]


def test_ops_on_a_bad_fd_are_ebadf(ring: Ring) -> None:
    bad = 1_000_000  # far above any fd this process has
    ring.prep_recv_multishot(bad, 62)
    ring.prep_send(bad, b"x", 63)
    got = by_user_data(collect(ring, 2))
    assert got == {62: [(62, -errno.EBADF, 0, None)], 63: [(63, -errno.EBADF, 0, None)]}


def test_recv_on_a_pipe_is_enotsock(ring: Ring) -> None:
    r, w = os.pipe()
    try:
        ring.prep_recv_multishot(r, 64)
        assert collect(ring, 1) == [(64, -errno.ENOTSOCK, 0, None)]
    finally:
        os.close(r)
        os.close(w)


# -- close and shutdown -------------------------------------------------------------------------


def test_prep_close_closes_the_fd(ring: Ring) -> None:
    r, w = os.pipe()
    try:
        ring.prep_close(w, 70)
        assert collect(ring, 1) == [(70, 0, 0, None)]
        with pytest.raises(OSError) as info:
            os.fstat(w)
        assert info.value.errno == errno.EBADF
        assert os.read(r, 10) == b""  # the only write end is gone: EOF
    finally:
        os.close(r)


def test_prep_close_of_a_bad_fd_is_ebadf(ring: Ring) -> None:
    ring.prep_close(1_000_000, 71)
    assert collect(ring, 1) == [(71, -errno.EBADF, 0, None)]


def test_prep_shutdown_sends_fin(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair()
    ring.prep_send(ours.fileno(), b"last words", 72)
    assert collect(ring, 1) == [(72, 10, 0, None)]
    ring.prep_shutdown(ours.fileno(), socket.SHUT_WR, 73)
    assert collect(ring, 1) == [(73, 0, 0, None)]
    received = b""
    while chunk := peer.recv(100):
        received += chunk
    assert received == b"last words"  # then EOF
    peer.sendall(b"reply")  # only our write side is shut
    assert ours.recv(10) == b"reply"
