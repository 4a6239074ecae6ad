"""The ring's send queues on real sockets (AF_UNIX socketpairs and 127.0.0.1 TCP).

What a queue promises (``_build.py``, "Send queues"): the bytes of a slot
leave in order, exactly once, short sends are finished by the ring, and the
caller hears only PAUSE (unsent bytes above the high mark), RESUME (after it,
at or below the low mark), IDLE (once per watch, when nothing is queued or in
flight) and SEND_ERROR (the queue is then dropped).

"Unsent" is what the queue holds that the kernel has not accepted yet: the
bytes queued so far minus ``statistics().bytes_sent``.  The queue applies the
marks where it can see them: the high mark when a pass's sends are queued
(before that wait's completions), the low mark at each completion; so the
tests compute unsent from ``bytes_sent`` read between waits and check each
report against it exactly.

The module skips (with the reason) where no ring can be created.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from tests.uring_backend.support import (
    NOTHING,
    Completion,
    collect_until,
    open_fds,
    others_of,
    require_ring,
)

require_ring()

from uring_backend import ring as ring_module  # noqa: E402
from uring_backend.ring import IDLE, OWN_OPS, PAUSE, RESUME, SEND_ERROR  # noqa: E402
from uring_backend.testing import TestingRing as Ring  # noqa: E402

pytestmark = pytest.mark.timeout(60)

Pair = tuple[socket.socket, socket.socket]
KiB = 1024


def report(kind: int, slot: int, res: int = 0) -> Completion:
    """A send queue's report, as wait() returns it."""
    return (kind << 56 | slot, res, 0, None)


def reports_of(ring: Ring, timeout: float) -> list[Completion]:
    """One wait()'s others, asserting that each is one of the queues' reports."""
    out = others_of(ring.wait(timeout))
    for c in out:
        assert c[0] >> 56 in (IDLE, PAUSE, RESUME, SEND_ERROR), c
        assert c[2:] == (0, None), c
    return out


def until_reports(ring: Ring, done: Callable[[list[Completion]], bool], timeout: float = 10):
    out = collect_until(ring, done, timeout=timeout, step=0.2)
    for c in out:
        assert c[0] >> 56 >= OWN_OPS, c
    return out


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_available(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """What `sock` holds now (up to `limit` bytes), without blocking."""
    got = bytearray()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while len(got) < limit:
            try:
                chunk = sock.recv(min(65536, limit - len(got)))
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        sock.settimeout(timeout)
    return bytes(got)


def read_exactly(sock: socket.socket, n: int, timeout: float = 10) -> bytes:
    got = bytearray()
    sock.settimeout(timeout)
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def fill(sock: socket.socket) -> int:
    """Fill `sock`'s send path (and its peer's receive buffer) with b"f"; return the count."""
    sock.setblocking(False)
    n = 0
    try:
        while True:
            n += sock.send(b"f" * 4096)
    except BlockingIOError:
        pass
    return n


class Reader(threading.Thread):
    """Reads `sock` until EOF, `chunk` bytes at a time, pausing `pause` s every `every` bytes."""

    def __init__(
        self, sock: socket.socket, chunk: int = 16 * KiB, pause: float = 0.0, every: int = 0
    ) -> None:
        super().__init__(daemon=True)
        self.sock, self.chunk, self.pause, self.every = sock, chunk, pause, every
        self.digest = hashlib.sha256()
        self.data = bytearray()
        self.count = 0
        self.keep = True  # keep the bytes (else only hash and count them)
        self.error: BaseException | None = None

    def run(self) -> None:
        self.sock.settimeout(20)
        try:
            while chunk := self.sock.recv(self.chunk):
                self.digest.update(chunk)
                if self.keep:
                    self.data += chunk
                before, self.count = self.count, self.count + len(chunk)
                if self.every and before // self.every != self.count // self.every:
                    time.sleep(self.pause)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, ours: socket.socket) -> None:
        """Send our FIN and wait for the reader to see EOF."""
        ours.shutdown(socket.SHUT_WR)
        self.join(20)
        assert not self.is_alive(), "the reader did not reach EOF"
        assert self.error is None, self.error


def chunks(seed: int, count: int, low: int, high: int) -> list[bytes]:
    """`count` messages of `low`..`high` bytes, each naming its index, from a fixed seed."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        head = b"<%d>" % i
        out.append(head + rnd.randbytes(max(0, rnd.randint(low, high) - len(head))))
    return out


# -- order and exactness ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_sends_queued_in_one_pass_arrive_exactly_and_in_order(
    ring: Ring, kind: str, unix_pair: Pair, tcp_pair
) -> None:
    ours, peer = unix_pair if kind == "unix" else tcp_pair()
    messages = chunks(1, 500, 1, 300)
    expected = b"".join(messages)
    s0 = ring.statistics()
    for m in messages:
        ring.send(9, ours.fileno(), m)
    ring.watch(9)
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 9)]
    assert read_exactly(peer, len(expected)) == expected
    assert read_available(peer) == b""  # and nothing more
    s1 = ring.statistics()
    assert s1.bytes_sent - s0.bytes_sent == len(expected)
    assert s1.ops_in_flight == 0
    assert not ring.sending(9)


def test_bytes_queued_behind_a_send_in_flight_follow_in_one_send(
    ring: Ring, unix_pair: Pair
) -> None:
    """One send in flight per slot: 499 sends queued behind the first go as one SQE.

    All 500 are queued in one pass into a socket with room for them: the
    first starts a send at once, the others arrive while it is in flight,
    so when it completes they leave together.
    """
    ours, peer = unix_pair
    messages = chunks(2, 500, 1, 100)
    s0 = ring.statistics()
    for m in messages:
        ring.send(0, ours.fileno(), m)
    ring.watch(0)
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 0)]
    s1 = ring.statistics()
    assert s1.sqes_submitted - s0.sqes_submitted == 2
    assert s1.cqes_reaped - s0.cqes_reaped == 2  # both consumed by the ring, never reported
    assert read_exactly(peer, s1.bytes_sent - s0.bytes_sent) == b"".join(messages)


def test_sends_across_passes_and_slots_stay_in_order_and_apart(
    make_ring, sockets: list[socket.socket], tcp_pair
) -> None:
    """Four slots on four sockets, 80 passes of random sends: each peer gets its own bytes."""
    ring = make_ring(64, buffers=8, buffer_size=64, send_slots=1024)
    slots = [0, 1, 517, 1023]  # 1023: the last slot there is
    pairs = [socket.socketpair() for _ in range(3)]
    for p in pairs:
        sockets.extend(p)
    pairs.append(tcp_pair())
    rnd = random.Random(3)
    expected = {slot: bytearray() for slot in slots}
    counter = 0
    for p in range(80):
        for _ in range(rnd.randint(0, 6)):
            i = rnd.randrange(4)
            data = b"[%d:%d]" % (slots[i], counter) + rnd.randbytes(rnd.randint(0, 400))
            counter += 1
            ring.send(slots[i], pairs[i][0].fileno(), data)
            expected[slots[i]] += data
        assert reports_of(ring, 0 if p % 3 else 0.002) == []
    for slot in slots:
        ring.watch(slot)
    got = until_reports(ring, lambda cs: len(cs) >= 4)
    assert sorted(got) == sorted(report(IDLE, slot) for slot in slots)
    for i, slot in enumerate(slots):
        peer = pairs[i][1]
        assert read_exactly(peer, len(expected[slot])) == bytes(expected[slot]), slot
        assert read_available(peer) == b""
    assert ring.statistics().bytes_sent == sum(map(len, expected.values()))
    assert ring.wait(0.05) == NOTHING  # one IDLE per watch


def test_many_sends_across_passes_through_short_sends(ring: Ring, tcp_pair) -> None:
    """3000 sends over 300 passes into 4 KiB buffers, read slowly: the sha256 matches.

    Bytes queued while a send is in flight join the next one, and a short
    send resumes at its offset; any reordering, loss or repeat changes the
    digest.  The reports can only be PAUSE/RESUME pairs (above 1 MiB, down
    to 256 KiB), then the IDLE asked for.
    """
    ours, peer = tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    reader = Reader(peer, chunk=8 * KiB, pause=0.002, every=64 * KiB)
    reader.keep = False
    reader.start()
    messages = chunks(4, 3000, 1, 3000)
    expected = hashlib.sha256(b"".join(messages)).hexdigest()
    total = sum(map(len, messages))
    s0 = ring.statistics()
    seen: list[Completion] = []
    for p in range(300):
        for m in messages[p * 10 : p * 10 + 10]:
            ring.send(2, ours.fileno(), m)
        seen += reports_of(ring, 0.001)
    ring.watch(2)
    seen += until_reports(ring, lambda cs: len(cs) >= 1 and cs[-1][0] >> 56 == IDLE, timeout=30)
    kinds = [c[0] >> 56 for c in seen]
    assert kinds[-1] == IDLE and kinds.count(IDLE) == 1
    rounds = (len(kinds) - 1) // 2
    assert kinds[:-1] == [PAUSE, RESUME] * rounds, kinds  # every PAUSE has its RESUME
    assert all(c == report(c[0] >> 56, 2) for c in seen)
    s1 = ring.statistics()
    assert s1.bytes_sent - s0.bytes_sent == total
    reader.finish(ours)
    assert reader.count == total
    assert reader.digest.hexdigest() == expected
    assert s1.sqes_submitted - s0.sqes_submitted > 300, "short sends should have been resumed"


def test_empty_sends_are_ignored(ring: Ring, unix_pair: Pair) -> None:
    ours, peer = unix_pair
    s0 = ring.statistics()
    ring.send(4, ours.fileno(), b"")
    ring.watch(4)
    assert reports_of(ring, 5) == [report(IDLE, 4)]
    ring.send(4, ours.fileno(), b"")
    ring.send(4, ours.fileno(), b"ab")
    ring.send(4, ours.fileno(), b"")
    ring.send(4, ours.fileno(), b"c")
    ring.watch(4)
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 4)]
    assert read_exactly(peer, 3) == b"abc"
    s1 = ring.statistics()
    assert (s1.bytes_sent - s0.bytes_sent, s1.sqes_submitted - s0.sqes_submitted) == (3, 2)


def test_a_slot_out_of_range_reports_einval(make_ring, unix_pair: Pair) -> None:
    ring = make_ring(8, buffers=8, buffer_size=64, send_slots=4)
    ours, peer = unix_pair
    ring.send(4, ours.fileno(), b"nowhere")
    ring.send(3, ours.fileno(), b"somewhere")
    ring.watch(4)  # ignored: there is no slot 4
    ring.watch(3)
    got = until_reports(ring, lambda cs: len(cs) >= 2)
    assert got == [report(SEND_ERROR, 4, -errno.EINVAL), report(IDLE, 3)]
    assert read_exactly(peer, 9) == b"somewhere"
    assert ring.sending(4) is False
    with pytest.raises(OSError) as info:
        ring.drop(4)
    assert info.value.errno == errno.EINVAL
    assert ring.wait(0.05) == NOTHING


# -- the marks: PAUSE above high, RESUME at or below low -------------------------------

HIGH, LOW = 64 * KiB, 16 * KiB


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_pause_once_above_high_then_resume_at_low_never_before(
    make_ring, small_unix_pair, tcp_pair, kind: str
) -> None:
    """8 KiB a pass into a peer that does not read, then the peer drains it slowly.

    PAUSE must come in the wait whose sends took unsent above HIGH, once;
    RESUME in the wait whose completions took it to LOW or below, not an
    earlier one and not a later one; then a second PAUSE/RESUME round.
    """
    ring = make_ring(64, buffers=8, buffer_size=64, send_high=HIGH, send_low=LOW)
    ours, peer = (
        small_unix_pair() if kind == "unix" else tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    )
    data = os.urandom(400 * KiB)
    pushed = 0
    paused = False
    for _ in range(20):  # 160 KiB, far more than the sockets hold
        ring.send(5, ours.fileno(), data[pushed : pushed + 8 * KiB])
        pushed += 8 * KiB
        unsent_at_push = pushed - ring.statistics().bytes_sent
        got = reports_of(ring, 0.02)
        if not paused and unsent_at_push > HIGH:
            assert got == [report(PAUSE, 5)], (unsent_at_push, got)
            paused = True
        else:
            assert got == [], (unsent_at_push, got)
    assert paused
    assert ring.sending(5)

    received = bytearray()
    peer.setblocking(False)

    def drain_until_resume() -> None:
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "no RESUME"
            received.extend(read_available(peer, 2 * KiB))
            got = reports_of(ring, 0.01)
            unsent = pushed - ring.statistics().bytes_sent
            if got:
                assert got == [report(RESUME, 5)], got
                assert unsent <= LOW, unsent
                return
            assert unsent > LOW, f"unsent is {unsent}, at or below {LOW}, and no RESUME"

    drain_until_resume()
    # A second round: the queue can pause again.
    ring.send(5, ours.fileno(), data[pushed:])
    unsent_at_push = len(data) - ring.statistics().bytes_sent
    pushed = len(data)
    assert unsent_at_push > HIGH
    assert reports_of(ring, 0.01) == [report(PAUSE, 5)]
    drain_until_resume()
    ring.watch(5)
    deadline = time.monotonic() + 20
    while (got := reports_of(ring, 0.01)) == []:
        assert time.monotonic() < deadline
        received.extend(read_available(peer, 16 * KiB))
    assert got == [report(IDLE, 5)]
    assert ring.statistics().bytes_sent == len(data)
    ours.shutdown(socket.SHUT_WR)
    peer.setblocking(True)
    peer.settimeout(10)
    while chunk := peer.recv(65536):
        received += chunk
    assert bytes(received) == data


def test_the_high_mark_is_exclusive(make_ring, unix_pair: Pair) -> None:
    """Exactly HIGH unsent bytes is not above the mark; one more is."""
    ring = make_ring(64, buffers=8, buffer_size=64, send_high=HIGH, send_low=LOW)
    ours, _ = unix_pair
    fill(ours)  # what the ring sends now stays unsent (or nearly: bytes_sent tells)
    pushed = 0

    def push(n: int) -> int:
        """Queue n bytes; return the unsent count the queue will see at the next wait."""
        nonlocal pushed
        ring.send(6, ours.fileno(), b"p" * n)
        pushed += n
        return pushed - ring.statistics().bytes_sent

    assert push(HIGH) == HIGH
    assert reports_of(ring, 0.02) == []
    unsent = pushed - ring.statistics().bytes_sent
    if unsent < HIGH:  # the kernel took a few bytes: exactly HIGH again
        assert push(HIGH - unsent) == HIGH
        assert reports_of(ring, 0.02) == []
    unsent = pushed - ring.statistics().bytes_sent
    assert push(HIGH - unsent + 1) == HIGH + 1
    assert reports_of(ring, 0.02) == [report(PAUSE, 6)]
    assert ring.drop(6) is True
    ring.prep_cancel_fd(ours.fileno(), 1)
    got = collect_until(ring, lambda cs: len(cs) >= 2)
    assert sorted(got) == sorted([(1, 1, 0, None), report(IDLE, 6)])


def test_pause_and_resume_in_one_wait_when_the_socket_takes_it_all(
    make_ring, unix_pair: Pair
) -> None:
    """Unsent counts from the moment the bytes are queued, before the kernel sees them."""
    ring = make_ring(64, buffers=8, buffer_size=64, send_high=HIGH, send_low=LOW)
    ours, peer = unix_pair  # default buffers: 100 KiB go at once
    data = os.urandom(100 * KiB)
    ring.send(7, ours.fileno(), data)
    assert reports_of(ring, 5) == [report(PAUSE, 7), report(RESUME, 7)]
    assert ring.statistics().bytes_sent == len(data)
    assert read_exactly(peer, len(data)) == data


# -- IDLE --------------------------------------------------------------------------------


def test_idle_only_when_watched_and_once_per_watch(ring: Ring, unix_pair: Pair) -> None:
    """IDLE is reported only for a watch: at once if the slot is idle, once per watch."""
    ours, peer = unix_pair
    ring.send(8, ours.fileno(), b"unwatched")
    assert ring.wait(0.1) == NOTHING  # the send completed; nobody asked
    assert read_exactly(peer, 9) == b"unwatched"
    assert ring.statistics().bytes_sent == 9
    start = time.monotonic()
    ring.watch(8)  # already idle: reported by this very wait, at once
    assert reports_of(ring, 5) == [report(IDLE, 8)]
    assert time.monotonic() - start < 1
    assert ring.wait(0.05) == NOTHING  # once per watch
    ring.send(8, ours.fileno(), b"again")
    ring.watch(8)  # with the send, in the same pass: after it
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 8)]
    assert ring.wait(0.05) == NOTHING
    assert read_exactly(peer, 5) == b"again"
    ring.watch(900)  # a slot never used is idle
    assert reports_of(ring, 5) == [report(IDLE, 900)]


@pytest.mark.parametrize("watch_with", ["the-last-send", "a-later-pass"])
def test_idle_not_before_the_last_byte_is_handed_to_the_kernel(
    ring: Ring, tcp_pair, watch_with: str
) -> None:
    ours, peer = tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    first, last = os.urandom(200 * KiB), os.urandom(50 * KiB)
    ring.send(10, ours.fileno(), first)
    assert ring.wait(0.05) == NOTHING
    assert ring.sending(10)
    ring.send(10, ours.fileno(), last)  # queued behind the send in flight
    if watch_with == "the-last-send":
        ring.watch(10)
        assert ring.wait(0.2) == NOTHING
    else:
        assert ring.wait(0.1) == NOTHING
        ring.watch(10)
        assert ring.wait(0.1) == NOTHING
        ring.watch(10)  # watched twice while busy: still one IDLE
        assert ring.wait(0.1) == NOTHING
    assert ring.sending(10)
    reader = Reader(peer, chunk=4 * KiB, pause=0.002, every=16 * KiB)
    reader.start()
    total = len(first) + len(last)
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline
        got = reports_of(ring, 0.05)
        sent = ring.statistics().bytes_sent
        if got:
            break
        assert sent < total, "every byte was handed over and no IDLE"
        assert ring.sending(10)
    assert got == [report(IDLE, 10)]
    assert sent == total  # not before the last byte
    assert not ring.sending(10)
    reader.finish(ours)
    assert bytes(reader.data) == first + last


# -- SEND_ERROR -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["unix-peer-closed", "tcp-peer-reset"])
def test_send_error_drops_the_queue_until_reset(
    ring: Ring, sockets: list[socket.socket], tcp_pair, unix_pair: Pair, how: str
) -> None:
    if how == "unix-peer-closed":
        ours, peer = socket.socketpair()
        sockets.extend((ours, peer))
        peer.close()
        err = errno.EPIPE
    else:
        ours, peer = tcp_pair()
        reset(peer)
        # Wait for the RST to arrive (polling leaves the error for the send).
        assert select.select([ours], [], [], 5)[0] == [ours]
        err = errno.ECONNRESET
    s0 = ring.statistics()
    ring.send(11, ours.fileno(), b"nobody listens")
    # (Short steps: a send failing inline satisfies only one of the two CQEs the
    # kernel wait asks for, so a wait returns it only at its timeout.)
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(SEND_ERROR, 11, -err)]
    s1 = ring.statistics()
    assert (s1.bytes_sent, s1.ops_in_flight) == (s0.bytes_sent, 0)
    assert s1.sqes_submitted - s0.sqes_submitted == 1
    # The queue is dropped: later sends are ignored (no SQE, no report) until reset.
    ring.send(11, ours.fileno(), b"ignored")
    ring.watch(11)
    assert reports_of(ring, 5) == [report(IDLE, 11)]
    assert ring.statistics().sqes_submitted == s1.sqes_submitted
    assert not ring.sending(11)
    # reset() makes the slot new: a new owner's bytes go out.
    ring.reset(11)
    new_ours, new_peer = unix_pair
    ring.send(11, new_ours.fileno(), b"new owner")
    ring.watch(11)
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 11)]
    assert read_exactly(new_peer, 9) == b"new owner"
    assert ring.statistics().bytes_sent - s0.bytes_sent == 9


def test_a_failing_send_in_flight_drops_what_is_queued_behind_it(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    first = os.urandom(200 * KiB)
    ring.send(12, ours.fileno(), first)
    assert ring.wait(0.05) == NOTHING
    ring.send(12, ours.fileno(), b"queued behind")
    ring.watch(12)
    assert ring.wait(0.05) == NOTHING
    assert ring.sending(12)
    sent = ring.statistics().bytes_sent
    assert 0 < sent < len(first)
    reset(peer)
    got = until_reports(ring, lambda cs: len(cs) >= 2)
    assert got == [report(SEND_ERROR, 12, -errno.ECONNRESET), report(IDLE, 12)]
    s = ring.statistics()
    assert (s.bytes_sent, s.ops_in_flight) == (sent, 0)
    assert not ring.sending(12)
    ring.send(12, ours.fileno(), b"after the error")  # ignored: no SQE, no report
    assert ring.wait(0.05) == NOTHING
    assert ring.statistics().sqes_submitted == s.sqes_submitted


# -- drop --------------------------------------------------------------------------------


def test_drop_with_a_send_in_flight_returns_true_and_idle_follows_it(
    ring: Ring, small_unix_pair
) -> None:
    """What the kernel took before the drop arrives; nothing after it is sent or resumed."""
    ours, peer = small_unix_pair()
    data = os.urandom(300 * KiB)
    ring.send(13, ours.fileno(), data)
    assert ring.wait(0.05) == NOTHING
    ring.send(13, ours.fileno(), b"batched in the pass of the drop")
    assert ring.drop(13) is True
    assert ring.sending(13)
    assert ring.wait(0.1) == NOTHING  # IDLE waits for the send in flight
    assert ring.statistics().ops_in_flight == 1
    reader = Reader(peer)
    reader.start()
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 13)]
    s = ring.statistics()
    assert s.ops_in_flight == 0 and not ring.sending(13)
    assert 0 < s.bytes_sent < len(data)  # the short send in flight was not resumed
    reader.finish(ours)
    assert bytes(reader.data) == data[: s.bytes_sent]


def test_drop_then_cancel_reports_idle_not_send_error(ring: Ring, small_unix_pair) -> None:
    ours, peer = small_unix_pair()
    data = os.urandom(300 * KiB)
    ring.send(14, ours.fileno(), data)
    assert ring.wait(0.05) == NOTHING
    assert ring.drop(14) is True
    ring.prep_cancel_fd(ours.fileno(), 1)
    got = collect_until(ring, lambda cs: len(cs) >= 2)
    assert sorted(got) == sorted([(1, 1, 0, None), report(IDLE, 14)])
    assert ring.statistics().ops_in_flight == 0
    assert ring.wait(0.05) == NOTHING
    ours.shutdown(socket.SHUT_WR)
    peer.settimeout(10)
    received = bytearray()
    while chunk := peer.recv(65536):
        received += chunk
    assert bytes(received) == data[: ring.statistics().bytes_sent]


def test_drop_with_nothing_in_flight_returns_false_and_later_sends_are_ignored(
    ring: Ring, unix_pair: Pair
) -> None:
    ours, peer = unix_pair
    ring.send(15, ours.fileno(), b"before")
    assert ring.wait(0.05) == NOTHING
    assert not ring.sending(15)
    assert ring.drop(15) is False
    assert ring.wait(0.05) == NOTHING  # no IDLE: nobody watched
    s0 = ring.statistics()
    ring.send(15, ours.fileno(), b"after")
    assert ring.wait(0.05) == NOTHING
    s1 = ring.statistics()
    assert (s1.bytes_sent, s1.sqes_submitted) == (s0.bytes_sent, s0.sqes_submitted) == (6, 1)
    assert read_exactly(peer, 6) == b"before"
    assert read_available(peer) == b""
    ring.watch(15)
    assert reports_of(ring, 5) == [report(IDLE, 15)]


def test_drop_discards_the_sends_batched_in_the_same_pass(
    ring: Ring, sockets: list[socket.socket]
) -> None:
    a, b = socket.socketpair(), socket.socketpair()
    sockets.extend((*a, *b))
    ring.send(0, a[0].fileno(), b"A0")
    ring.send(1, b[0].fileno(), b"B0")
    ring.send(0, a[0].fileno(), b"A1")
    ring.send(1, b[0].fileno(), b"B1")
    assert ring.drop(0) is False  # nothing of slot 0 had reached C
    ring.send(0, a[0].fileno(), b"A2")  # after the drop: ignored
    ring.watch(0)
    ring.watch(1)
    got = until_reports(ring, lambda cs: len(cs) >= 2)
    assert sorted(got) == [report(IDLE, 0), report(IDLE, 1)]
    assert read_exactly(b[1], 4) == b"B0B1"
    assert read_available(a[1]) == b""
    assert ring.statistics().bytes_sent == 4


# -- reset ----------------------------------------------------------------------------


def test_reset_gives_the_slot_to_a_new_owner_without_the_old_bytes(
    make_ring, small_unix_pair, unix_pair: Pair
) -> None:
    ring = make_ring(64, buffers=8, buffer_size=64, send_high=HIGH, send_low=LOW)
    old, old_peer = small_unix_pair()
    old_data = os.urandom(200 * KiB)
    ring.send(16, old.fileno(), old_data)
    assert reports_of(ring, 0.05) == [report(PAUSE, 16)]
    ring.send(16, old.fileno(), b"old tail")
    assert ring.wait(0.05) == NOTHING
    assert ring.drop(16) is True
    ring.prep_cancel_fd(old.fileno(), 1)
    got = collect_until(ring, lambda cs: len(cs) >= 2)
    assert sorted(got) == sorted([(1, 1, 0, None), report(IDLE, 16)])
    old_sent = ring.statistics().bytes_sent
    ring.reset(16)
    new, new_peer = unix_pair
    new_data = os.urandom(100 * KiB)  # above HIGH: the new owner's own PAUSE
    ring.send(16, new.fileno(), new_data)
    ring.watch(16)
    got = until_reports(ring, lambda cs: len(cs) >= 1 and cs[-1][0] >> 56 == IDLE)
    assert got == [report(PAUSE, 16), report(RESUME, 16), report(IDLE, 16)]
    assert read_exactly(new_peer, len(new_data)) == new_data
    assert read_available(new_peer) == b""
    old.shutdown(socket.SHUT_WR)
    old_peer.settimeout(10)
    received = bytearray()
    while chunk := old_peer.recv(65536):
        received += chunk
    assert bytes(received) == old_data[:old_sent]  # not a byte of the new owner's
    assert ring.statistics().bytes_sent == old_sent + len(new_data)


def test_reset_of_a_slot_with_a_send_in_flight_changes_nothing(ring: Ring, tcp_pair) -> None:
    ours, peer = tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    data = os.urandom(200 * KiB)
    ring.send(17, ours.fileno(), data)
    assert ring.wait(0.05) == NOTHING
    assert ring.sending(17)
    ring.reset(17)  # refused: a slot is reset only once idle
    assert ring.sending(17)
    ring.watch(17)
    reader = Reader(peer)
    reader.start()
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 17)]
    reader.finish(ours)
    assert bytes(reader.data) == data


# -- accounting: ops_in_flight, sending(), bytes_sent ----------------------------------


def test_ops_in_flight_and_sending_track_the_queues(
    ring: Ring, small_unix_pair, unix_pair: Pair
) -> None:
    (a, a_peer), (b, _) = small_unix_pair(), small_unix_pair()
    fill(b)
    quiet, _ = unix_pair
    data = os.urandom(200 * KiB)
    ring.send(0, a.fileno(), data)
    assert (ring.sending(0), ring.statistics().ops_in_flight) == (False, 0)  # not in C yet
    assert ring.wait(0.05) == NOTHING
    assert (ring.sending(0), ring.statistics().ops_in_flight) == (True, 1)
    ring.send(0, a.fileno(), b"behind")  # queued behind: still one send in flight
    ring.send(1, b.fileno(), b"x" * 1000)
    ring.prep_recv_multishot(quiet.fileno(), 2)
    assert ring.wait(0.05) == NOTHING
    assert (ring.sending(0), ring.sending(1), ring.statistics().ops_in_flight) == (True, True, 3)
    reader = Reader(a_peer)
    reader.start()
    ring.watch(0)
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 0)]
    assert (ring.sending(0), ring.sending(1), ring.statistics().ops_in_flight) == (False, True, 2)
    assert ring.drop(1) is True
    ring.prep_cancel_fd(b.fileno(), 3)
    ring.prep_cancel(2, 4)
    got = collect_until(ring, lambda cs: len(cs) >= 4)
    assert sorted(got) == sorted(
        [(3, 1, 0, None), report(IDLE, 1), (2, -errno.ECANCELED, 0, None), (4, 0, 0, None)]
    )
    assert (ring.sending(1), ring.statistics().ops_in_flight) == (False, 0)
    reader.finish(a)
    assert bytes(reader.data) == data + b"behind"


def test_bytes_sent_counts_exactly(ring: Ring, sockets: list[socket.socket]) -> None:
    sizes = [1, 4095, 4096, 70000, 3]
    pairs = [socket.socketpair() for _ in sizes]
    for p in pairs:
        sockets.extend(p)
    payloads = [os.urandom(n) for n in sizes]
    s0 = ring.statistics()
    for slot, ((ours, _), data) in enumerate(zip(pairs, payloads, strict=True)):
        ring.send(slot, ours.fileno(), data)
        ring.watch(slot)
    got = until_reports(ring, lambda cs: len(cs) >= len(sizes))
    assert sorted(got) == [report(IDLE, slot) for slot in range(len(sizes))]
    assert ring.statistics().bytes_sent - s0.bytes_sent == sum(sizes)
    for (_, peer), data in zip(pairs, payloads, strict=True):
        assert read_exactly(peer, len(data)) == data


# -- wait() and the queues' own completions --------------------------------------------


def test_a_wait_that_brings_only_the_queues_completions_lasts_its_timeout(
    ring: Ring, unix_pair: Pair
) -> None:
    ours, peer = unix_pair
    s0 = ring.statistics()
    start = time.monotonic()
    ring.send(18, ours.fileno(), b"quiet")
    assert ring.wait(0.3) == NOTHING
    assert time.monotonic() - start >= 0.29
    s1 = ring.statistics()
    assert s1.cqes_reaped - s0.cqes_reaped == 1  # the send's, consumed in C
    assert s1.bytes_sent - s0.bytes_sent == 5
    assert read_exactly(peer, 5) == b"quiet"


def test_a_wait_with_sends_returns_with_the_next_visible_completion(
    ring: Ring, unix_pair: Pair
) -> None:
    ours, peer = unix_pair
    start = time.monotonic()
    ring.send(19, ours.fileno(), b"x" * 1000)
    ring.prep_timeout(0.2, 1)
    assert ring.wait(5) == ([], [], [(1, -errno.ETIME, 0, None)])
    assert 0.19 <= time.monotonic() - start < 2
    assert ring.statistics().bytes_sent == 1000
    assert read_exactly(peer, 1000) == b"x" * 1000


def test_a_send_completing_during_a_wait_does_not_end_it(ring: Ring, tcp_pair) -> None:
    """The parked send progresses (in short sends) from 0.15 s into a 0.6 s wait: it goes on."""
    ours, peer = tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096)
    data = os.urandom(100 * KiB)
    ring.send(20, ours.fileno(), data)
    assert ring.wait(0.05) == NOTHING
    assert ring.sending(20)
    before = ring.statistics()
    reader = Reader(peer)
    timer = threading.Timer(0.15, reader.start)
    timer.start()
    try:
        start = time.monotonic()
        assert ring.wait(0.6) == NOTHING
        assert time.monotonic() - start >= 0.59
    finally:
        timer.join()
    during = ring.statistics()
    assert during.bytes_sent > before.bytes_sent  # the queue's completions came mid-wait
    assert during.cqes_reaped > before.cqes_reaped
    ring.watch(20)
    assert until_reports(ring, lambda cs: len(cs) >= 1) == [report(IDLE, 20)]
    assert ring.statistics().bytes_sent == len(data)
    reader.finish(ours)
    assert bytes(reader.data) == data


@pytest.mark.parametrize("timeout", [1.0, None], ids=["1s", "forever"])
@pytest.mark.parametrize("case", ["send-fails-at-once", "send-parks-beside-a-nop"])
def test_a_visible_completion_beside_a_new_send_ends_the_wait(
    ring: Ring, unix_pair: Pair, small_unix_pair, case: str, timeout: float | None
) -> None:
    """The wait for one completion beyond the sends just queued lasts at most
    URB_SEND_WAIT_CAP_NS (1 ms): a send that fails at once, or parks, cannot hold
    back what else arrived, even in a wait(None)."""
    if case == "send-fails-at-once":
        ours, peer = unix_pair
        peer.close()
        ring.send(21, ours.fileno(), b"x")
        expected = [report(SEND_ERROR, 21, -errno.EPIPE)]
    else:
        ours, _ = small_unix_pair()
        fill(ours)
        ring.send(21, ours.fileno(), b"x")  # parks: the socket is full
        ring.prep_nop(1)
        expected = [(1, 0, 0, None)]
    start = time.monotonic()
    assert others_of(ring.wait(timeout)) == expected
    assert time.monotonic() - start < 0.5


# -- close() -----------------------------------------------------------------------------


def test_close_with_sends_in_flight_to_peers_that_never_read(tcp_pair) -> None:
    """close() cancels the parked sends: prompt, nothing left in flight, no fd leaked."""
    pairs = [tcp_pair(our_sndbuf=4096, peer_rcvbuf=4096) for _ in range(8)]
    before = open_fds()
    ring = Ring(64, buffers=8, buffer_size=64)
    payloads = [os.urandom(256 * KiB) for _ in pairs]
    for slot, ((ours, _), data) in enumerate(zip(pairs, payloads, strict=True)):
        ring.send(slot, ours.fileno(), data)
    assert ring.wait(0.05) == NOTHING
    for slot, (ours, _) in enumerate(pairs):
        ring.send(slot, ours.fileno(), b"queued behind")
    assert ring.wait(0.05) == NOTHING
    assert ring.statistics().ops_in_flight == 8
    orphans = len(ring_module._ORPHANS)
    start = time.monotonic()
    ring.close()
    elapsed = time.monotonic() - start
    assert elapsed < ring_module.CLOSE_DRAIN_TIMEOUT_NS / 1e9, elapsed
    s = ring.statistics()
    assert s.ops_in_flight == 0  # every send's cancellation completed
    assert len(ring_module._ORPHANS) == orphans
    assert open_fds() == before
    received = 0
    for (ours, peer), data in zip(pairs, payloads, strict=True):
        ours.shutdown(socket.SHUT_WR)
        peer.settimeout(10)
        got = bytearray()
        while chunk := peer.recv(65536):
            got += chunk
        assert bytes(got) == data[: len(got)]  # a prefix: the queue's order, then nothing
        received += len(got)
    assert received == s.bytes_sent


def test_close_does_not_start_the_sends_batched_since_the_last_wait(
    unix_pair: Pair, small_unix_pair, sockets: list[socket.socket]
) -> None:
    """close() cancels: sends queued in the pass but never handed to C must not go out.

    Slot 0's socket has room, slot 1's is full; a poll is in flight so that
    close() has something to drain.
    """
    roomy, roomy_peer = unix_pair
    full, _ = small_unix_pair()
    fill(full)
    quiet, quiet_peer = socket.socketpair()
    sockets.extend((quiet, quiet_peer))
    ring = Ring(64, buffers=8, buffer_size=64)
    ring.prep_poll_multishot(quiet.fileno(), 1)
    assert ring.wait(0) == NOTHING
    ring.send(0, roomy.fileno(), b"after close was asked")
    ring.send(1, full.fileno(), b"x" * 100_000)
    ring.watch(0)
    start = time.monotonic()
    ring.close()
    elapsed = time.monotonic() - start
    s = ring.statistics()
    assert (s.bytes_sent, s.ops_in_flight) == (0, 0)  # nothing started, nothing left in flight
    assert elapsed < 0.5, elapsed  # no drain spent waiting on a send to a full socket
    assert read_available(roomy_peer) == b""
