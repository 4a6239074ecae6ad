"""Ring on real sockets (127.0.0.1 TCP and AF_UNIX pairs): accept, recv, send, cancel, close.

Sends go through the ring's send queues here only as far as the other ops
need them; ``test_send_queues.py`` tests the queues themselves.  The module
skips (with the reason) where no ring can be created.
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
import time

import pytest

from tests.uring_backend.support import (
    DATA,
    NOTHING,
    by_user_data,
    collect,
    collect_until,
    merged,
    others_of,
    require_ring,
)

require_ring()

from uring_backend.ring import F_MORE, IDLE, PAUSE, RESUME, SEND_ERROR  # noqa: E402
from uring_backend.testing import TestingRing as Ring  # noqa: E402

pytestmark = pytest.mark.timeout(30)

ECANCELED = errno.ECANCELED
Pair = tuple[socket.socket, socket.socket]


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


# -- accept ---------------------------------------------------------------------------


def test_multishot_accept(ring: Ring, sockets: list[socket.socket]) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    sockets.append(listener)
    s0 = ring.statistics()
    ring.prep_accept_multishot(listener.fileno(), 1)
    assert ring.wait(0) == NOTHING
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
    assert ring.wait(0) == NOTHING
    peer.sendall(b"hello, ring")
    assert ring.wait(5) == ([7], [b"hello, ring"], [])  # data: the recv stays armed
    peer.sendall(b"second")
    assert collect(ring, 1) == [(7, 6, DATA, b"second")]
    assert ring.in_flight(7)
    peer.close()
    assert collect(ring, 1) == [(7, 0, 0, None)]  # EOF ends the multishot
    assert not ring.in_flight(7)


def test_receive_buffers_are_given_back_by_the_next_wait(make_ring, unix_pair: Pair) -> None:
    """40 messages, one at a time, through a ring of 2 buffers: each wait() returns the last.

    Each message fits one buffer and is read before the next is sent, so
    every message is one data completion; were a buffer not given back, the
    third message would find the buffer ring dry and end the recv with
    -ENOBUFS.  Two buffers, not one: without DEFER_TASKRUN the kernel may run
    the recv for the next message (at the peer's send) before that wait().
    """
    ring = make_ring(8, buffers=2, buffer_size=64)
    ours, peer = unix_pair
    s0 = ring.statistics()
    ring.prep_recv_multishot(ours.fileno(), 8)
    for i in range(40):
        message = b"%02d:" % i + bytes([65 + i % 26]) * (i + 20)  # 24 to 63 bytes
        peer.sendall(message)
        assert ring.wait(5) == ([8], [message], []), i
    assert ring.in_flight(8)
    assert ring.statistics().sqes_submitted - s0.sqes_submitted == 1  # never re-armed
    ring.prep_cancel(8, 9)
    got = by_user_data(collect(ring, 2))
    assert got == {8: [(8, -ECANCELED, 0, None)], 9: [(9, 0, 0, None)]}


def test_multishot_recv_stays_armed_across_1000_messages(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair()
    s0 = ring.statistics()
    ring.prep_recv_multishot(ours.fileno(), 9)
    messages = [b"%04d:" % i + bytes([97 + i % 26]) * (i % 61) + b"\n" for i in range(1000)]
    expected = b"".join(messages)
    received = bytearray()
    completions = 0
    for start in range(0, 1000, 100):
        for m in messages[start : start + 100]:
            peer.sendall(m)
        need = len(b"".join(messages[: start + 100]))
        deadline = time.monotonic() + 5
        while len(received) < need:
            assert time.monotonic() < deadline, f"{len(received)} of {need} bytes"
            data_uds, datas, others = ring.wait(0.5)
            assert others == [], "the recv ended; it should stay armed"
            assert data_uds == [9] * len(datas)
            for d in datas:
                assert 0 < len(d) <= ring.buffer_size
                received += d
            completions += len(datas)
    assert bytes(received) == expected
    assert completions >= len(expected) // ring.buffer_size
    assert ring.wait(0) == NOTHING
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
    # The four buffers fill with 64 bytes each, then the ring is dry: the
    # recv ends with -ENOBUFS (no F_MORE, no F_BUFFER) after the four.
    chunks = [payload[i : i + 64] for i in range(0, 256, 64)]
    assert ring.wait(5) == ([3] * 4, chunks, [(3, -errno.ENOBUFS, 0, None)])
    assert not ring.in_flight(3)

    # The four buffers come back with each wait(): 1000 bytes pass through them.
    received = bytearray(b"".join(chunks))
    enobufs = 1
    while len(received) < len(payload):
        if not ring.in_flight(3):
            ring.prep_recv_multishot(ours.fileno(), 3)  # re-arm
        for c in merged(ring.wait(5)):
            if c[1] == -errno.ENOBUFS:
                assert c == (3, -errno.ENOBUFS, 0, None)
                enobufs += 1
            else:
                assert c[:3] == (3, len(c[3] or b""), DATA) and c[1] <= 64, c
                received += c[3] or b""
    assert bytes(received) == payload
    # 1000 bytes = three rounds of 4 x 64 that each end dry, then 64+64+64+40.
    assert enobufs == 3
    assert ring.in_flight(3)  # the last round did not run dry: still armed
    assert ring.wait(0) == NOTHING


# -- send (the queues' own tests are in test_send_queues.py) ------------------------------


def test_send_bytes_arrive_exactly(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair()
    payload = bytes(range(256)) * 4 + b"tail"
    s0 = ring.statistics()
    ring.send(11, ours.fileno(), payload)
    assert not ring.sending(11)  # nothing reaches C before wait()
    ring.watch(11)
    # The send's own completion is consumed by the ring; the watch reports IDLE.
    assert collect(ring, 1) == [(IDLE << 56 | 11, 0, 0, None)]
    assert not ring.sending(11)
    assert read_exactly(peer, len(payload)) == payload
    s1 = ring.statistics()
    assert s1.bytes_sent - s0.bytes_sent == len(payload)
    assert s1.sqes_submitted - s0.sqes_submitted == 1
    assert s1.ops_in_flight == 0


def test_a_send_larger_than_the_socket_takes_is_finished_by_the_ring(ring: Ring, tcp_pair) -> None:
    """4 MiB through 4 KiB socket buffers, read slowly: the ring resumes every short send.

    The caller queues the bytes once and hears only the queue's reports:
    PAUSE (4 MiB is above the default high mark of 1 MiB), RESUME (at 256 KiB)
    and IDLE; the SQEs the ring submitted beyond the first are its
    resumptions of short sends.
    """
    ours, peer = tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    data = os.urandom(4 << 20)
    digest = hashlib.sha256()
    counted = [0]

    def reader() -> None:
        while chunk := peer.recv(16384):
            digest.update(chunk)
            counted[0] += len(chunk)
            if counted[0] % (256 << 10) < 16384:
                time.sleep(0.005)  # slowly: the sender's buffer fills again and again

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    s0 = ring.statistics()
    ring.send(13, ours.fileno(), data)
    ring.watch(13)
    reports = collect_until(ring, lambda cs: len(cs) >= 3, timeout=20)
    assert reports == [(kind << 56 | 13, 0, 0, None) for kind in (PAUSE, RESUME, IDLE)]
    s1 = ring.statistics()
    assert s1.bytes_sent - s0.bytes_sent == len(data)
    ours.shutdown(socket.SHUT_WR)
    t.join(10)
    assert not t.is_alive()
    assert counted[0] == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert s1.sqes_submitted - s0.sqes_submitted > 1, "the small buffers should force short sends"
    assert s1.ops_in_flight == 0


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_by_user_data_ends_an_armed_recv(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_recv_multishot(ours.fileno(), 20)
    assert ring.wait(0) == NOTHING
    assert ring.statistics().ops_in_flight == 1
    ring.prep_cancel(20, 21)
    got = by_user_data(collect(ring, 2))
    assert got == {20: [(20, -ECANCELED, 0, None)], 21: [(21, 0, 0, None)]}
    assert ring.statistics().ops_in_flight == 0
    peer.sendall(b"after")  # nothing is armed any more
    assert ring.wait(0.05) == NOTHING


def test_cancel_fd_ends_every_op_on_the_fd(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_recv_multishot(ours.fileno(), 30)
    ring.prep_poll_multishot(ours.fileno(), 31)
    ring.prep_poll_multishot(peer.fileno(), 32)  # another fd: untouched
    assert ring.wait(0) == NOTHING
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
    assert collect(ring, 1) == [(40, 1, DATA, b"x")]  # a data completion: still armed
    with pytest.raises(ValueError, match="already in flight"):
        ring.prep_nop(40)
    peer.close()
    assert collect(ring, 1) == [(40, 0, 0, None)]
    ring.prep_nop(40)
    assert collect(ring, 1) == [(40, 0, 0, None)]


def test_poll_multishot_reports_readable(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    ring.prep_poll_multishot(ours.fileno(), 50)
    assert ring.wait(0.05) == NOTHING
    peer.sendall(b"ping")
    [(ud, res, flags, data)] = others_of(ring.wait(5))
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
    assert ring.wait(0) == NOTHING
    reset(peer)
    assert collect(ring, 1) == [(60, -errno.ECONNRESET, 0, None)]


def test_send_to_a_closed_peer_is_epipe(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    peer.close()
    ring.send(61, ours.fileno(), b"nobody listens")
    assert collect(ring, 1) == [(SEND_ERROR << 56 | 61, -errno.EPIPE, 0, None)]
    assert ring.statistics().bytes_sent == 0


def test_ops_on_a_bad_fd_are_ebadf(ring: Ring) -> None:
    bad = 1_000_000  # far above any fd this process has
    ring.prep_recv_multishot(bad, 62)
    ring.send(63, bad, b"x")
    got = by_user_data(collect(ring, 2))
    assert got == {
        62: [(62, -errno.EBADF, 0, None)],
        SEND_ERROR << 56 | 63: [(SEND_ERROR << 56 | 63, -errno.EBADF, 0, None)],
    }
    assert ring.statistics().ops_in_flight == 0


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
    ring.send(72, ours.fileno(), b"last words")
    ring.watch(72)  # the shutdown must wait until the queue has handed over its bytes
    assert collect(ring, 1) == [(IDLE << 56 | 72, 0, 0, None)]
    ring.prep_shutdown(ours.fileno(), socket.SHUT_WR, 73)
    assert collect(ring, 1) == [(73, 0, 0, None)]
    received = b""
    while chunk := peer.recv(100):
        received += chunk
    assert received == b"last words"  # then EOF
    peer.sendall(b"reply")  # only our write side is shut
    assert ours.recv(10) == b"reply"
