"""The hot loop, and nothing else.

Each pass: one ``backend.wait()``, then every event is dispatched to its
connection's protocol object, and output is queued with ``backend.send()``.
With the uring backend everything queued in a pass reaches the kernel in one
``io_uring_enter``, at the top of the next ``wait()``.

Rules for code in here: no allocation beyond what an event needs, no
attribute lookups that can be hoisted out of the loop, and logging only
behind a level check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from server.backends.base import ACCEPTED, RECEIVED, Backend
from server.protocols import ServerProtocol

logger = logging.getLogger("server.loop")

MAX_SWEEP_INTERVAL_S: Final = 1.0


class Loop:
    """Drives one backend with one protocol factory.

    Args:
        backend: the I/O mechanism.
        protocol_factory: makes the protocol object of a new connection.
        idle_timeout: seconds a connection with no request in progress
            (``not proto.busy``) may stay silent; then it is closed.
        read_timeout: seconds a connection with a request in progress may go
            without receiving anything; then ``timed_out()`` (HTTP: 408).
        header_timeout: seconds a request head may take as a whole, however
            steadily its bytes trickle in (None: no such bound).  Checked
            at each sweep, so a head is cut between `header_timeout` and
            `header_timeout` + `sweep_interval` after the sweep that first
            saw it.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        backend: Backend,
        protocol_factory: Callable[[], ServerProtocol],
        idle_timeout: float,
        read_timeout: float,
        header_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.protocol_factory = protocol_factory
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.header_timeout = header_timeout
        self.clock = clock
        limits = [MAX_SWEEP_INTERVAL_S, idle_timeout / 4, read_timeout / 4]
        if header_timeout is not None:
            limits.append(header_timeout / 4)
        self.sweep_interval = min(limits)
        self.protocols: dict[int, ServerProtocol] = {}
        self.last_seen: dict[int, float] = {}
        # cid -> (when a sweep first saw the head, which head): see _sweep.
        self.heads_seen: dict[int, tuple[float, int]] = {}
        self.timeouts = 0
        # Exceptions that escaped a protocol object (a bug): each closed its
        # connection and nothing else.
        self.internal_errors = 0
        # Set from signal handlers; read once per pass.
        self.stop_requested = False
        self.on_pass: list[Callable[[], None]] = []

    def run(self, grace_period: float) -> None:
        """Serve until a stop is requested and busy connections finish.

        After a stop request the backend stops accepting, idle connections
        close at once and busy ones get `grace_period` seconds to finish
        their response.
        """
        backend = self.backend
        wait = backend.wait
        send = backend.send
        close = backend.close
        abort = backend.abort
        factory = self.protocol_factory
        protocols = self.protocols
        last_seen = self.last_seen
        heads_seen = self.heads_seen
        on_pass = self.on_pass
        monotonic = self.clock
        debug = logger.isEnabledFor(logging.DEBUG)
        next_sweep = monotonic() + self.sweep_interval
        deadline: float | None = None
        timeout = self.sweep_interval

        while True:
            events = wait(timeout)
            now = monotonic()
            for kind, cid, payload in events:
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
                        abort(cid)
                        continue
                    if out:
                        send(cid, out)
                    if proto.should_close:
                        close(cid)
                    last_seen[cid] = now
                elif kind == ACCEPTED:
                    protocols[cid] = proto = factory()
                    last_seen[cid] = now
                    if deadline is not None:  # stopping: treated as _begin_stop treats the idle
                        proto.stop_keepalive()
                        if proto.should_close:
                            close(cid)
                else:  # CLOSED
                    protocols.pop(cid, None)
                    last_seen.pop(cid, None)
                    heads_seen.pop(cid, None)
                    if debug:
                        logger.debug("connection %d closed: %s", cid, payload)
            if on_pass:
                for callback in on_pass:
                    callback()
                on_pass.clear()
            if self.stop_requested and deadline is None:
                deadline = now + grace_period
                self._begin_stop()
            if deadline is not None:
                if not protocols:
                    return
                if now >= deadline:
                    logger.warning("grace period over; closing %d connections", len(protocols))
                    return
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + self.sweep_interval
            timeout = max(0.0, next_sweep - now)

    def _begin_stop(self) -> None:
        self.backend.stop_accepting()
        for cid, proto in list(self.protocols.items()):
            proto.stop_keepalive()
            if proto.should_close:
                self.backend.close(cid)

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
        expired = []
        for cid, seen in self.last_seen.items():
            proto = protocols[cid]
            if not proto.busy:
                if seen < idle_cutoff:
                    expired.append(cid)
                continue
            if seen < read_cutoff:
                expired.append(cid)
            elif header_timeout is not None:
                head = proto.pending_head()
                first = heads_seen.get(cid)
                if not head:
                    if first is not None:
                        del heads_seen[cid]
                elif first is None or first[1] != head:
                    heads_seen[cid] = (now, head)
                elif now - first[0] >= header_timeout:
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
