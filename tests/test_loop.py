"""The dispatch step's rules, on the real asyncio loop over a fake backend and a
fake clock: exact and instant.

`FakeBackend.wait(timeout)` hands out the next scripted batch of events, or,
when none is scripted, lets `timeout` seconds pass on the fake clock and
returns nothing, as a real backend would on a quiet socket.  Closing and
aborting are recorded and answered with CLOSED on the next wait, as the real
backends do.  The asyncio loop (`server.aio.RingEventLoop`) runs on the same
fake clock, so its timers (the sweep, the grace period) fire exactly when
the script says.  The real-socket suites (tests/backends, tests/reliability)
keep checking the same behaviour end to end, with generous time bounds.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from server.aio import BackendSelector, RingEventLoop
from server.backends.base import ACCEPTED, CLOSED, READY, RECEIVED
from server.loop import MAX_SWEEP_INTERVAL_S, Dispatcher
from server.protocols import HANDSHAKE_HEAD


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Step = Callable[[], list[tuple[int, int, Any]]]


class FakeBackend:
    """Scripted arrivals: (time, events or a callable returning them), in time order."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.script: deque[tuple[float, Step]] = deque()
        self.log: list[tuple[Any, ...]] = []  # ("send"|"close"|"abort", cid[, data]) in order
        self.waits: list[float | None] = []
        self.accepting = True
        self.watched: dict[int, int] = {}
        self._closed: list[int] = []

    # the interface the loop drives
    def wait(self, timeout: float | None) -> list[tuple[int, int, Any]]:
        """Return what is due by now + timeout, moving the clock to it; else let timeout pass."""
        self.waits.append(timeout)
        events: list[tuple[int, int, Any]] = [(CLOSED, cid, None) for cid in self._closed]
        self._closed = []
        if events:
            return events
        if self.script and (timeout is None or self.script[0][0] <= self.clock.now + timeout):
            due, step = self.script.popleft()
            self.clock.now = max(self.clock.now, due)
            return step()
        assert timeout is not None, "the loop would wait forever"
        self.clock.now += timeout
        return []

    def send(self, cid: int, data: bytes) -> None:
        self.log.append(("send", cid, data))

    def close(self, cid: int) -> None:
        self.log.append(("close", cid))
        self._closed.append(cid)

    def abort(self, cid: int) -> None:
        self.log.append(("abort", cid))
        self._closed.append(cid)

    def stop_accepting(self) -> None:
        self.accepting = False

    def watch(self, fd: int, events: int) -> None:
        if events:
            self.watched[fd] = events
        else:
            self.watched.pop(fd, None)

    def shutdown(self) -> None:
        pass


class Proto:
    """A protocol object whose answers the test sets."""

    needs_transport = False
    responding = False

    def __init__(self, reply: Callable[[bytes], bytes] = lambda d: d) -> None:
        self.reply = reply
        self.should_close = False
        self.busy = False
        self.head = 0
        self.received: list[bytes] = []
        self.timeouts = 0
        self.keepalive_stopped = False

    def receive_data(self, data: bytes) -> bytes:
        self.received.append(data)
        if not data:
            self.should_close = True
        return self.reply(data)

    def pending_head(self) -> int:
        return self.head

    def timed_out(self) -> bytes:
        self.timeouts += 1
        self.should_close = True
        return b"408" if self.busy else b""

    def stop_keepalive(self) -> None:
        self.keepalive_stopped = True
        if not self.busy:
            self.should_close = True


class Harness:
    def __init__(self, backend_class: type[FakeBackend] | None = None, **timeouts: float) -> None:
        self.clock = FakeClock()
        self.backend = (backend_class or FakeBackend)(self.clock)
        self.protos: list[Proto] = []
        self.factory: Callable[[], Proto] = Proto
        options = {"idle_timeout": 5.0, "read_timeout": 30.0, **timeouts}
        self.loop = Dispatcher(self.backend, self._make, clock=self.clock, **options)  # type: ignore[arg-type]
        self.selector = BackendSelector(self.backend, owns_backend=False)  # type: ignore[arg-type]
        self.aio = RingEventLoop(self.selector, clock=self.clock)
        self.loop.attach(self.selector)
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()

    def _make(self) -> Proto:
        proto = self.factory()
        self.protos.append(proto)
        return proto

    def at(self, t: float, *events: tuple[int, int, Any] | Step) -> None:
        """At `t` seconds: these events arrive (a callable is called then, for its events)."""

        def step() -> list[tuple[int, int, Any]]:
            out: list[tuple[int, int, Any]] = []
            for e in events:
                out += e() if callable(e) else [e]
            return out

        assert not self.backend.script or self.backend.script[-1][0] <= t
        self.backend.script.append((t, step))

    def stop_at(self, t: float) -> None:
        def stop() -> list[tuple[int, int, Any]]:
            self.stop.set()
            return []

        self.at(t, stop)

    def run(self, grace: float = 10.0) -> None:
        try:
            self.aio.run_until_complete(self.loop.serve(self.stop, self.hurry, grace))
        finally:
            self.aio.close()


def busy_reader() -> Proto:
    """A request in progress that never completes: answers nothing, stays busy."""
    p = Proto(reply=lambda d: b"")
    p.busy = True
    return p


# -- dispatch -----------------------------------------------------------------------


def test_received_bytes_reach_their_protocol_and_the_reply_is_sent() -> None:
    h = Harness()
    h.at(0, (ACCEPTED, 1, None), (ACCEPTED, 2, None))
    h.at(0.1, (RECEIVED, 2, b"b"), (RECEIVED, 1, b"a"))
    h.at(0.2, (RECEIVED, 1, b""))
    h.stop_at(0.3)
    h.run()
    assert [p.received for p in h.protos] == [[b"a", b""], [b"b"]]
    assert h.backend.log == [
        ("send", 2, b"b"),
        ("send", 1, b"a"),
        ("close", 1),  # EOF: should_close
        ("close", 2),  # the stop closes the idle one
    ]


def test_events_for_an_unknown_connection_are_ignored() -> None:
    h = Harness()
    h.at(0, (RECEIVED, 7, b"late"), (CLOSED, 7, None))
    h.stop_at(0)
    h.run()
    assert h.backend.log == []


def test_an_exception_in_one_protocol_aborts_that_connection_only(caplog) -> None:
    h = Harness()

    def explode(data: bytes) -> bytes:
        raise ValueError("bug")

    def first_one_breaks() -> list[tuple[int, int, Any]]:
        h.protos[0].reply = explode
        return [(RECEIVED, 1, b"x"), (RECEIVED, 2, b"y")]

    h.at(0, (ACCEPTED, 1, None), (ACCEPTED, 2, None))
    h.at(0.1, first_one_breaks)
    h.at(0.2, (RECEIVED, 2, b"z"))
    h.stop_at(0.3)
    with caplog.at_level(logging.ERROR, logger="server.loop"):
        h.run()
    assert h.backend.log == [("abort", 1), ("send", 2, b"y"), ("send", 2, b"z"), ("close", 2)]
    assert h.loop.internal_errors == 1
    assert h.protos[1].received == [b"y", b"z"]
    (record,) = caplog.records
    assert record.getMessage() == "protocol error on connection 1; closing it"
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_ready_fds_of_the_app_run_their_asyncio_callbacks_in_the_same_iteration() -> None:
    """An add_reader callback runs after the dispatch of the wait that reported its fd."""
    h = Harness()
    seen: list[tuple[str, int]] = []

    def register() -> list[tuple[int, int, Any]]:
        h.aio.add_reader(42, lambda: seen.append(("fd 42", len(h.protos[0].received))))
        return []

    h.at(0, (ACCEPTED, 1, None))
    h.at(0.1, register)
    watched: list[dict[int, int]] = []

    def look() -> list[tuple[int, int, Any]]:
        watched.append({**h.backend.watched})
        return [(RECEIVED, 1, b"b")]

    h.at(0.2, (RECEIVED, 1, b"a"), (READY, 42, selectors.EVENT_READ), (READY, 7, 1))
    h.at(0.3, look)
    h.stop_at(0.4)
    self_pipe = h.aio._ssock.fileno()
    h.run()
    # the loop's self-pipe and the app's fd, in the same backend; none left after close
    assert watched == [{self_pipe: selectors.EVENT_READ, 42: selectors.EVENT_READ}]
    assert h.backend.watched == {}
    assert seen == [("fd 42", 1)]  # once: fd 7 is not the app's, and 42 was ready once


# -- timeouts -----------------------------------------------------------------------


def test_the_sweep_interval_is_a_quarter_of_the_shortest_timeout_and_at_most_a_second() -> None:
    assert Harness().loop.sweep_interval == MAX_SWEEP_INTERVAL_S
    assert Harness(idle_timeout=2.0).loop.sweep_interval == 0.5
    assert Harness(read_timeout=0.4).loop.sweep_interval == pytest.approx(0.1)
    assert Harness(header_timeout=0.2).loop.sweep_interval == pytest.approx(0.05)


def test_waits_never_block_past_the_next_sweep() -> None:
    h = Harness(idle_timeout=2.0)
    h.at(0, (ACCEPTED, 1, None))
    h.stop_at(1.3)
    h.run()
    assert max(w for w in h.backend.waits if w is not None) == pytest.approx(0.5)
    assert all(w is not None and 0 <= w <= 0.5 + 1e-9 for w in h.backend.waits)


@pytest.mark.parametrize(("last_byte", "expired"), [(0.3, True), (0.6, False)])
def test_an_idle_connection_is_closed_by_the_first_sweep_past_the_idle_timeout(
    last_byte: float, expired: bool
) -> None:
    """Idle timeout 2 s, sweeps at 0.5, 1.0, ...: silence since 0.3 has lasted
    2.2 s at the sweep at 2.5, silence since 0.6 only 1.9 s."""
    h = Harness(idle_timeout=2.0)
    h.at(0, (ACCEPTED, 1, None))
    h.at(last_byte, (RECEIVED, 1, b"hi"))
    h.stop_at(2.55)
    h.run()
    assert h.loop.timeouts == int(expired)
    assert h.backend.log == [("send", 1, b"hi"), ("close", 1)]  # by the sweep, or the stop
    assert h.protos[0].timeouts == int(expired)


def test_a_busy_connection_gets_its_last_words_after_the_read_timeout_not_the_idle_one() -> None:
    h = Harness(idle_timeout=1.0, read_timeout=3.0)  # sweeps every 0.25 s
    h.factory = busy_reader
    sent_at: list[float] = []
    h.at(0, (ACCEPTED, 1, None))
    h.at(0.1, (RECEIVED, 1, b"GET / HT"))
    real_send = h.backend.send

    def send(cid: int, data: bytes) -> None:
        sent_at.append(h.clock.now)
        real_send(cid, data)

    h.backend.send = send  # type: ignore[method-assign]
    h.stop_at(20)
    h.run()
    assert h.backend.log == [("send", 1, b"408"), ("close", 1)]
    # last seen at 0.1: due at 3.1, cut by the sweep at 3.25
    assert sent_at == [pytest.approx(3.25)]


def test_a_head_that_trickles_past_the_header_timeout_is_cut_however_steadily() -> None:
    """A byte every 0.1 s is never silent; the head as a whole may take 2 s."""
    h = Harness(idle_timeout=100.0, read_timeout=100.0, header_timeout=2.0)

    def reading() -> Proto:
        p = busy_reader()
        p.head = 1  # the first head, pending throughout
        return p

    h.factory = reading
    h.at(0, (ACCEPTED, 1, None))
    for i in range(1, 40):
        h.at(i * 0.1, (RECEIVED, 1, b"x"))
    h.stop_at(4.0)
    h.run()
    assert h.protos[0].timeouts == 1
    assert h.backend.log == [("send", 1, b"408"), ("close", 1)]
    # Sweeps every 0.5 s; the first saw the head at 0.5, so it is cut at 2.5.
    assert len(h.protos[0].received) == 25


def test_each_new_head_gets_its_own_header_timeout() -> None:
    h = Harness(idle_timeout=100.0, read_timeout=100.0, header_timeout=2.0)
    h.factory = busy_reader
    timeouts_by_then: list[int] = []
    h.at(0, (ACCEPTED, 1, None))
    for i in range(1, 60):

        def next_head(i: int = i) -> list[tuple[int, int, Any]]:
            h.protos[0].head = 1 + i // 15  # a new head every 1.5 s
            return [(RECEIVED, 1, b"x")]

        h.at(i * 0.1, next_head)

    def done() -> list[tuple[int, int, Any]]:
        timeouts_by_then.append(h.protos[0].timeouts)
        h.protos[0].busy = False
        h.protos[0].should_close = True
        return []

    h.at(6.0, done)
    h.stop_at(6.0)
    h.run()
    assert timeouts_by_then == [0]
    assert len(h.protos[0].received) == 59


def test_a_closing_connection_that_outlives_a_timeout_is_aborted() -> None:
    """The lingering close: the peer neither reads nor sends its EOF."""

    class Lingers(FakeBackend):
        def close(self, cid: int) -> None:
            self.log.append(("close", cid))  # no CLOSED: the peer never sends EOF

    h = Harness(Lingers, idle_timeout=1.0, read_timeout=1.0)
    h.at(0, (ACCEPTED, 1, None))
    h.at(0.1, (RECEIVED, 1, b""))  # EOF: the protocol asks to close
    h.stop_at(10)
    h.run()
    assert h.backend.log == [("close", 1), ("abort", 1)]
    assert h.loop.timeouts == 1


# -- stopping -----------------------------------------------------------------------


def test_a_stop_closes_idle_connections_and_waits_for_busy_ones() -> None:
    h = Harness()

    def second_is_busy() -> list[tuple[int, int, Any]]:
        h.protos[1].busy = True
        h.protos[1].reply = lambda d: b""
        return [(RECEIVED, 2, b"GET / HT")]

    def second_finishes() -> list[tuple[int, int, Any]]:
        h.protos[1].busy = False
        h.protos[1].reply = lambda d: b"answer"
        h.protos[1].should_close = True
        return [(RECEIVED, 2, b"TP/1.1\r\n\r\n")]

    h.at(0, (ACCEPTED, 1, None), (ACCEPTED, 2, None))
    h.at(0.1, second_is_busy)
    h.stop_at(0.2)
    h.at(1.0, second_finishes)
    h.run()
    assert h.backend.accepting is False
    assert h.backend.log == [("close", 1), ("send", 2, b"answer"), ("close", 2)]
    assert [p.keepalive_stopped for p in h.protos] == [True, True]
    assert h.loop.protocols == {}
    assert h.clock.now == 1.0  # it returned as soon as the last one closed


def test_a_connection_accepted_while_stopping_is_closed_unless_busy() -> None:
    """Accepted in the batch that carried the stop: treated as the idle ones are."""
    h = Harness()
    h.factory = busy_reader
    h.at(0, (ACCEPTED, 1, None), (RECEIVED, 1, b"GET / HT"))  # keeps the loop running
    h.stop_at(0.1)

    def idle_newcomer() -> list[tuple[int, int, Any]]:
        h.factory = Proto
        return [(ACCEPTED, 2, None)]

    def first_finishes() -> list[tuple[int, int, Any]]:
        h.protos[0].busy = False
        h.protos[0].should_close = True
        return []

    h.at(0.2, idle_newcomer)
    h.at(0.3, first_finishes, (RECEIVED, 1, b"TP/1.1\r\n\r\n"))
    h.run()
    assert h.protos[1].keepalive_stopped is True
    assert h.backend.log == [("close", 2), ("close", 1)]


def test_the_grace_period_running_out_ends_the_loop_with_connections_open(caplog) -> None:
    h = Harness(idle_timeout=100.0, read_timeout=100.0)
    h.factory = busy_reader
    h.at(0, (ACCEPTED, 1, None), (RECEIVED, 1, b"GET / HT"))
    h.stop_at(1.0)
    with caplog.at_level(logging.WARNING, logger="server.loop"):
        h.run(grace=2.5)
    # a timer of the asyncio loop: the grace period ends at 1.0 + 2.5 exactly
    assert h.clock.now == pytest.approx(3.5)
    assert list(h.loop.protocols) == [1]  # left for the backend's shutdown to abort
    assert h.backend.log == []
    assert [r.getMessage() for r in caplog.records] == ["grace period over; closing 1 connections"]


def test_a_tls_handshake_gets_the_handshake_timeout_not_the_header_one() -> None:
    """pending_head() == HANDSHAKE_HEAD: bounded by handshake_timeout (2 s), then a
    real head by header_timeout (100 s); bytes every 0.1 s beat the read timeout."""
    h = Harness(idle_timeout=100.0, read_timeout=100.0, header_timeout=100.0, handshake_timeout=2.0)
    assert h.loop.sweep_interval == pytest.approx(0.5)

    def handshaking() -> Proto:
        p = busy_reader()
        p.head = HANDSHAKE_HEAD
        return p

    h.factory = handshaking
    h.at(0, (ACCEPTED, 1, None), (ACCEPTED, 2, None))

    def done_handshake() -> list[tuple[int, int, Any]]:
        h.protos[1].head = 1  # connection 2 finished its handshake at 1.5 s: a head now
        return [(RECEIVED, 2, b"x")]

    for i in range(1, 40):
        if i == 15:
            h.at(i * 0.1, (RECEIVED, 1, b"x"), done_handshake)
        else:
            h.at(i * 0.1, (RECEIVED, 1, b"x"), (RECEIVED, 2, b"x"))
    h.stop_at(4.0)
    h.run(grace=0.0)
    # Connection 1: first seen handshaking by the sweep at 0.5, cut at 2.5.
    assert h.protos[0].timeouts == 1
    assert len(h.protos[0].received) == 25
    assert h.protos[1].timeouts == 0  # its head is far from 100 s
    assert ("close", 1) in h.backend.log
