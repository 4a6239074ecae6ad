"""The shared backend core: its state machine, and the close rule on a real ring."""

from __future__ import annotations

import contextlib
import itertools
import socket
import time

import pytest

from server.backends.base import (
    ACCEPTED,
    CLOSED,
    OUTPUT_HIGH_WATER_BYTES,
    OUTPUT_LOW_WATER_BYTES,
    RECEIVED,
    BackendOptions,
)
from server.backends.core import TRANSITIONS, BackendCore, Cause, Connection, State
from tests.conftest import URING_SKIP


class Recorder(BackendCore[Connection]):
    """A core whose hooks only record what they were asked to do."""

    name = "epoll"

    def __init__(self) -> None:
        super().__init__(BackendOptions(max_connections=2))
        self.hooks: list[tuple[str, int]] = []

    def _enter_paused(self, conn: Connection) -> None:
        self.hooks.append(("paused", conn.cid))

    def _enter_open(self, conn: Connection) -> None:
        self.hooks.append(("open", conn.cid))

    def _enter_draining(self, conn: Connection) -> None:
        self.hooks.append(("draining", conn.cid))

    def _enter_lingering(self, conn: Connection) -> None:
        self.hooks.append(("lingering", conn.cid))

    def _enter_closing(self, conn: Connection) -> None:
        self.hooks.append(("closing", conn.cid))

    def _released(self) -> None:
        self.hooks.append(("released", 0))

    def _poll(self, timeout, events) -> None:
        pass

    def _mechanism_statistics(self) -> tuple[int, int, int, int, int]:
        return 0, 0, 0, 0, 0

    def add(self) -> Connection:
        conn = Connection(self._take_cid(), fd=100)
        self._new_connection(conn)
        return conn


@pytest.fixture
def core():
    c = Recorder()
    yield c
    c._close_wakeup()


def test_the_table_names_every_live_state_and_closed_is_terminal() -> None:
    sources = {state for state, _ in TRANSITIONS}
    assert sources == set(State) - {State.CLOSED}
    assert {new for new in TRANSITIONS.values()} == set(State)
    # An abort is allowed from every live state and always ends in CLOSING.
    for state in sources:
        assert TRANSITIONS[state, Cause.ABORT] is State.CLOSING
    # Only CLOSING reaches CLOSED, and only by RELEASED.
    assert [k for k, v in TRANSITIONS.items() if v is State.CLOSED] == [
        (State.CLOSING, Cause.RELEASED)
    ]


@pytest.mark.parametrize(
    ("state", "cause"),
    [pair for pair in itertools.product(State, Cause) if pair not in TRANSITIONS],
    ids=lambda p: getattr(p, "name", str(p)),
)
def test_a_pair_outside_the_table_is_a_bug_and_raises(core, state, cause) -> None:
    conn = core.add()
    conn.state = state
    with pytest.raises(RuntimeError, match=f"{cause.name} is not allowed in {state.name}"):
        core.transition(conn, cause)
    assert conn.state is state
    assert core.hooks == []


def test_graceful_close_runs_each_hook_once_in_order(core) -> None:
    conn = core.add()
    core.close(conn.cid)
    assert conn.state is State.DRAINING
    core.close(conn.cid)  # a second close changes nothing
    core.transition(conn, Cause.FLUSHED)
    core.transition(conn, Cause.PEER_EOF)
    core.transition(conn, Cause.RELEASED)
    assert core.hooks == [
        ("draining", 1),
        ("lingering", 1),
        ("closing", 1),
        ("released", 0),
    ]
    assert conn.state is State.CLOSED
    assert core._conns == {}
    assert core.wait(0) == [(ACCEPTED, 1, None), (CLOSED, 1, None)]


def test_lingering_entered_after_the_peers_eof_goes_straight_to_closing(core) -> None:
    conn = core.add()
    conn.eof = True
    core.close(conn.cid)
    core.transition(conn, Cause.FLUSHED)
    assert conn.state is State.CLOSING
    assert core.hooks == [("draining", 1), ("closing", 1)]  # no shutdown, nothing to wait for


def test_backpressure_pauses_above_the_high_mark_and_resumes_below_the_low_mark(core) -> None:
    conn = core.add()
    core._queued(conn, OUTPUT_HIGH_WATER_BYTES)
    assert conn.state is State.OPEN  # at the mark, not above it
    core._queued(conn, 1)
    assert conn.state is State.PAUSED
    core._written(conn, OUTPUT_HIGH_WATER_BYTES + 1 - OUTPUT_LOW_WATER_BYTES - 1)
    assert conn.state is State.PAUSED  # one byte above the low mark
    core._written(conn, 1)
    assert conn.state is State.OPEN
    assert conn.out_bytes == OUTPUT_LOW_WATER_BYTES
    assert core.hooks == [("paused", 1), ("open", 1)]
    assert core.statistics().paused_reads == 1
    assert core.statistics().bytes_out == OUTPUT_HIGH_WATER_BYTES + 1 - OUTPUT_LOW_WATER_BYTES


def test_an_io_error_aborts_and_the_first_error_is_reported(core) -> None:
    conn = core.add()
    first = OSError(104, "Connection reset by peer")
    core._fail(conn, first)
    core._fail(conn, OSError(32, "Broken pipe"))
    core.transition(conn, Cause.RELEASED)
    assert core.wait(0)[-1] == (CLOSED, 1, first)


def test_ids_are_never_reused_and_max_connections_is_the_room(core) -> None:
    a, b = core.add(), core.add()
    assert not core._room()
    core.abort(a.cid)
    core.transition(a, Cause.RELEASED)
    assert core._room()
    assert core.add().cid == 3 != b.cid


# -- the close rule, stated on the real ring ---------------------------------------


@pytest.mark.skipif(URING_SKIP is not None, reason=str(URING_SKIP))
@pytest.mark.parametrize(
    "scenario", ["graceful", "graceful-with-output", "abort-mid-send", "paused-then-close", "eof"]
)
def test_uring_never_closes_an_fd_while_an_op_names_it(scenario: str) -> None:
    """Every IORING_OP_CLOSE is queued when the connection has no op in flight.

    Checked on the ring's own in-flight table (every user_data carries its
    connection id) and its send queue's state, not on the backend's count,
    so the test would catch a count that drifted.
    """
    from server.backends import uring
    from server.backends.uring import CID_BITS, CID_MASK, UringBackend

    backend = UringBackend(BackendOptions(ring_entries=64, recv_buffers=64))
    ring = backend._ring
    closes: list[int] = []
    real_prep_close = ring.prep_close

    def checked_prep_close(fd: int, user_data: int) -> None:
        cid = user_data & CID_MASK
        busy = [ud >> CID_BITS for ud in ring._inflight if ud & CID_MASK == cid]
        if ring.sending(backend._conns[cid].slot):
            busy.append("send")
        assert busy == [], f"close of connection {cid} with ops in flight: {busy}"
        closes.append(cid)
        real_prep_close(fd, user_data)

    ring.prep_close = checked_prep_close
    listener = socket.create_server(("127.0.0.1", 0))
    backend.listen(listener)
    client = socket.create_connection(listener.getsockname())
    events: list = []

    def pump(until, limit_s: float = 5.0) -> None:
        deadline = time.monotonic() + limit_s
        while not until():
            assert time.monotonic() < deadline, (scenario, events)
            events.extend(backend.wait(0.05))

    try:
        pump(lambda: any(e[0] == ACCEPTED for e in events))
        cid = events[0][1]
        if scenario == "graceful":
            backend.close(cid)
            client.shutdown(socket.SHUT_WR)
        elif scenario == "graceful-with-output":
            backend.send(cid, b"x" * 300_000)
            backend.close(cid)
            client.setblocking(False)
            got = 0
            deadline = time.monotonic() + 5
            while got < 300_000 and time.monotonic() < deadline:
                events.extend(backend.wait(0.01))
                with contextlib.suppress(BlockingIOError):
                    got += len(client.recv(65536))
            assert got == 300_000
            client.shutdown(socket.SHUT_WR)
        elif scenario == "abort-mid-send":
            backend.send(cid, b"x" * 16_000_000)  # far more than the socket holds
            events.extend(backend.wait(0.05))
            assert ring.sending(backend._conns[cid].slot)
            backend.abort(cid)
        elif scenario == "paused-then-close":
            backend.send(cid, b"x" * (OUTPUT_HIGH_WATER_BYTES * 32))  # more than loopback holds
            backend.send(cid, b"y")  # queued behind: above the high mark
            events.extend(backend.wait(0.05))  # the ring reports PAUSE from its cycle
            assert backend._conns[cid].state is State.PAUSED
            backend.close(cid)
            events.extend(backend.wait(0.05))
            backend.abort(cid)
        else:  # eof
            client.shutdown(socket.SHUT_WR)
            pump(lambda: (RECEIVED, cid, b"") in events)
            backend.close(cid)
        pump(lambda: any(e[0] == CLOSED for e in events))
        assert closes == [cid]
        # Nothing of the connection is left: only the listener's accept and the wakeup poll.
        assert sorted(ring._inflight) == sorted([uring._ACCEPT_UD, uring._WAKEUP_UD])
    finally:
        client.close()
        backend.shutdown()
    assert backend.statistics().ops_in_flight == 0


def _backend(name: str, **options: int):
    if name == "uring":
        if URING_SKIP is not None:
            pytest.skip(URING_SKIP)
        from server.backends.uring import UringBackend

        return UringBackend(BackendOptions(ring_entries=64, recv_buffers=64, **options))
    from server.backends.epoll import EpollBackend

    return EpollBackend(BackendOptions(**options))


@pytest.mark.parametrize("name", ["epoll", "uring"])
def test_accepting_turns_false_once_no_accept_can_complete(name: str) -> None:
    """What a retiring worker waits for before it counts its connections as done."""
    backend = _backend(name)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        backend.listen(listener)
        backend.wait(0)
        assert backend.accepting()
        backend.stop_accepting()
        deadline = time.monotonic() + 5
        while backend.accepting():  # uring: until the cancelled accept has ended
            assert time.monotonic() < deadline
            backend.wait(0.05)
        assert listener.fileno() == -1  # and the backend closed its socket
    finally:
        backend.shutdown()


@pytest.mark.skipif(URING_SKIP is not None, reason=str(URING_SKIP))
def test_uring_serves_the_connections_it_parked_after_stop_accepting() -> None:
    """A connection the kernel accepted for us is ours to serve: with --workers the
    accept queue is shared, and closing it would reset a client another worker
    would have served.  (It used to be closed.)"""
    backend = _backend("uring", max_connections=1)
    listener = socket.create_server(("127.0.0.1", 0))
    events: list = []

    def pump(until, limit_s: float = 5.0) -> None:
        deadline = time.monotonic() + limit_s
        while not until():
            assert time.monotonic() < deadline, events
            events.extend(backend.wait(0.05))

    backend.listen(listener)
    first = socket.create_connection(listener.getsockname(), timeout=5)
    second = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        pump(lambda: backend._parked)  # the second is accepted, and parked: no room
        (first_cid,) = [cid for kind, cid, _ in events if kind == ACCEPTED]
        backend.stop_accepting()
        backend.close(first_cid)
        first.shutdown(socket.SHUT_WR)
        pump(lambda: len([e for e in events if e[0] == ACCEPTED]) == 2)
        second_cid = [cid for kind, cid, _ in events if kind == ACCEPTED][1]
        second.sendall(b"still served")
        pump(lambda: (RECEIVED, second_cid, b"still served") in events)
        backend.send(second_cid, b"answered")
        backend.wait(0.05)
        assert second.recv(100) == b"answered"
    finally:
        first.close()
        second.close()
        backend.shutdown()
