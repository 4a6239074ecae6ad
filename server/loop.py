"""The hot loop's dispatch step, run inside the asyncio loop's one select().

`server.aio.BackendSelector.select()` makes the iteration's one
``backend.wait()`` and hands its events to `Dispatcher.dispatch` before it
returns: received bytes go to the connection's protocol object and its
output is queued with ``backend.send()``, all inside that call, so a message
costs no asyncio Handle, Future or transport.  With the uring backend
everything queued in an iteration reaches the kernel in one
``io_uring_enter``, at the top of the next ``wait()``.  What is not the
server's own (READY events of the app's file descriptors) is turned into the
``(key, mask)`` pairs asyncio expects, and asyncio runs their callbacks.

Timeouts are a sweep on an asyncio timer, about once a second, outside the
hot path; stopping is a coroutine (`Dispatcher.serve`).

Rules for code in here: no allocation beyond what an event needs, no
attribute lookups that can be hoisted out of the loop, and logging only
behind a level check.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import time
from collections.abc import Callable
from typing import Any, Final, cast

from server.backends.base import (
    ACCEPTED,
    CLOSED,
    READY,
    RECEIVED,
    WRITE_PAUSED,
    WRITE_RESUMED,
    Backend,
    Event,
)
from server.protocols import HANDSHAKE_HEAD, AsyncServerProtocol, ServerProtocol

logger = logging.getLogger("server.loop")

MAX_SWEEP_INTERVAL_S: Final = 1.0

ReadyPairs = list[tuple[selectors.SelectorKey, int]]


class ConnectionTransport:
    """What a protocol object that answers later (an ASGI app, a WSGI thread) writes
    through: asyncio's transport methods, on one connection of the backend."""

    __slots__ = ("_backend", "_cid", "_sockname")

    def __init__(self, backend: Backend, cid: int, sockname: Any) -> None:
        self._backend = backend
        self._cid = cid
        self._sockname = sockname

    def write(self, data: bytes) -> None:
        self._backend.send(self._cid, data)

    def close(self) -> None:
        """Close once what was written is sent."""
        self._backend.close(self._cid)

    def abort(self) -> None:
        self._backend.abort(self._cid)

    def pause_reading(self) -> None:
        self._backend.pause_reading(self._cid)

    def resume_reading(self) -> None:
        self._backend.resume_reading(self._cid)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._backend.peername(self._cid) or default
        if name == "sockname":
            return self._sockname
        return default


class Dispatcher:
    """Drives one backend's connections with one protocol factory.

    Args:
        backend: the I/O mechanism.
        protocol_factory: makes the protocol object of a new connection.
        idle_timeout: seconds a connection with no request in progress
            (``not proto.busy``) may stay silent; then it is closed.
        read_timeout: seconds a connection reading a request may go without
            receiving anything; then ``timed_out()`` (HTTP: 408).  A
            connection whose app is working on a complete request
            (``proto.responding``) is timed out by neither.
        header_timeout: seconds a request head may take as a whole, however
            steadily its bytes trickle in (None: no such bound).  Checked
            at each sweep, so a head is cut between `header_timeout` and
            `header_timeout` + `sweep_interval` after the sweep that first
            saw it.
        handshake_timeout: the same bound for a TLS handshake (a protocol
            object whose ``pending_head()`` is ``HANDSHAKE_HEAD``); None: TLS
            is off.
        clock: monotonic seconds (tests pass a fake one).
        sockname: the listener's address, for the transports' get_extra_info.
    """

    def __init__(
        self,
        backend: Backend,
        protocol_factory: Callable[[], ServerProtocol],
        idle_timeout: float,
        read_timeout: float,
        header_timeout: float | None = None,
        handshake_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sockname: Any = None,
    ) -> None:
        self.backend = backend
        self.protocol_factory = protocol_factory
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.header_timeout = header_timeout
        self.handshake_timeout = handshake_timeout
        self.clock = clock
        self.sockname = sockname
        limits = [MAX_SWEEP_INTERVAL_S, idle_timeout / 4, read_timeout / 4]
        if header_timeout is not None:
            limits.append(header_timeout / 4)
        if handshake_timeout is not None:
            limits.append(handshake_timeout / 4)
        self.sweep_interval = min(limits)
        self.protocols: dict[int, ServerProtocol] = {}
        self.last_seen: dict[int, float] = {}
        # cid -> (when a sweep first saw the head, which head): see _sweep.
        self.heads_seen: dict[int, tuple[float, int]] = {}
        self.timeouts = 0
        # Exceptions that escaped a protocol object (a bug): each closed its
        # connection and nothing else.
        self.internal_errors = 0
        self.stopping = False
        self._all_closed: asyncio.Future[None] | None = None
        self._ready_pairs: Callable[[Event, ReadyPairs], None] = _no_app_fds

    def attach(self, selector: Any) -> None:
        """Become `selector`'s dispatch step (a `server.aio.BackendSelector`)."""
        selector.dispatch = self.dispatch
        self._ready_pairs = selector.ready_pairs

    # -- the hot path ---------------------------------------------------------------

    def dispatch(self, events: list[Event], ready: ReadyPairs) -> None:
        """Handle one wait()'s events; the app's READY fds go to `ready`."""
        backend = self.backend
        protocols = self.protocols
        last_seen = self.last_seen
        now = self.clock()
        for event in events:
            kind, cid, payload = event
            if kind == RECEIVED:
                proto = protocols.get(cid)
                if proto is None:
                    continue
                try:
                    out = proto.receive_data(payload)
                except Exception:
                    # A bug for one connection must not touch the others.
                    self.internal_errors += 1
                    logger.exception("protocol error on connection %d; closing it", cid)
                    backend.abort(cid)
                    continue
                if out:
                    backend.send(cid, out)
                if proto.should_close:
                    backend.close(cid)
                last_seen[cid] = now
            elif kind == ACCEPTED:
                protocols[cid] = proto = self.protocol_factory()
                last_seen[cid] = now
                if proto.needs_transport:
                    transport = ConnectionTransport(backend, cid, self.sockname)
                    cast(AsyncServerProtocol, proto).connection_made(transport)
                if self.stopping:  # treated as _begin_stop treats the idle
                    proto.stop_keepalive()
                    if proto.should_close:
                        backend.close(cid)
            elif kind == CLOSED:
                proto = protocols.pop(cid, None)
                last_seen.pop(cid, None)
                self.heads_seen.pop(cid, None)
                if proto is not None and proto.needs_transport:
                    cast(AsyncServerProtocol, proto).connection_lost(payload)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("connection %d closed: %s", cid, payload)
                if self.stopping and not protocols:
                    self._closed_all()
            elif kind == READY:
                self._ready_pairs(event, ready)
            else:  # WRITE_PAUSED, WRITE_RESUMED
                proto = protocols.get(cid)
                if proto is not None and proto.needs_transport:
                    if kind == WRITE_PAUSED:
                        cast(AsyncServerProtocol, proto).pause_writing()
                    elif kind == WRITE_RESUMED:
                        cast(AsyncServerProtocol, proto).resume_writing()

    # -- timeouts -------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """Time out connections that have been silent, or on one head, too long.

        A head's age is measured from the first sweep that saw it pending
        (`heads_seen`), so the hot loop pays nothing for it.
        """
        idle_cutoff = now - self.idle_timeout
        read_cutoff = now - self.read_timeout
        protocols = self.protocols
        heads_seen = self.heads_seen
        header_timeout = self.header_timeout
        handshake_timeout = self.handshake_timeout
        check_heads = header_timeout is not None or handshake_timeout is not None
        expired = []
        for cid, seen in self.last_seen.items():
            proto = protocols[cid]
            if proto.responding:
                continue
            if not proto.busy:
                if seen < idle_cutoff:
                    expired.append(cid)
                continue
            if seen < read_cutoff:
                expired.append(cid)
            elif check_heads:
                head = proto.pending_head()
                first = heads_seen.get(cid)
                if not head:
                    if first is not None:
                        del heads_seen[cid]
                elif first is None or first[1] != head:
                    heads_seen[cid] = (now, head)
                else:
                    limit = handshake_timeout if head == HANDSHAKE_HEAD else header_timeout
                    if limit is not None and now - first[0] >= limit:
                        expired.append(cid)
        for cid in expired:
            heads_seen.pop(cid, None)
            proto = self.protocols[cid]
            self.timeouts += 1
            if proto.should_close:
                # Closing took a whole timeout: the peer neither reads the
                # rest of our output nor sends its EOF.
                self.backend.abort(cid)
                continue
            try:
                last_words = proto.timed_out()
            except Exception:
                logger.exception("protocol error on timeout of connection %d", cid)
                last_words = b""
            if last_words:
                self.backend.send(cid, last_words)
            self.backend.close(cid)
            self.last_seen[cid] = now + self.read_timeout  # give the close time

    def _sweep_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep(self.clock())
        self._sweep_handle = loop.call_later(self.sweep_interval, self._sweep_soon, loop)

    # -- serving and stopping -------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, hurry: asyncio.Event, grace_period: float) -> None:
        """Serve until `stop` is set, then until busy connections finish.

        After the stop the backend stops accepting, idle connections close
        at once and busy ones get `grace_period` seconds to finish their
        response (less if `hurry` is set: a second signal).
        """
        loop = asyncio.get_running_loop()
        self._sweep_handle = loop.call_later(self.sweep_interval, self._sweep_soon, loop)
        try:
            await stop.wait()
            self._begin_stop(loop)
            if not self.protocols:
                return
            assert self._all_closed is not None
            hurried = asyncio.ensure_future(hurry.wait())
            done, _ = await asyncio.wait(
                (self._all_closed, hurried), timeout=grace_period, return_when="FIRST_COMPLETED"
            )
            hurried.cancel()
            if not done:
                logger.warning("grace period over; closing %d connections", len(self.protocols))
        finally:
            self._sweep_handle.cancel()

    def _begin_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stopping = True
        self._all_closed = loop.create_future()
        self.backend.stop_accepting()
        for cid, proto in list(self.protocols.items()):
            proto.stop_keepalive()
            if proto.should_close:
                self.backend.close(cid)

    def _closed_all(self) -> None:
        if self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)


def _no_app_fds(event: Event, ready: ReadyPairs) -> None:
    pass  # not attached to a selector: no fd of the app is watched
