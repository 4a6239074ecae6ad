"""An asyncio event loop whose one blocking call per iteration is the backend's wait().

asyncio's ``BaseEventLoop._run_once`` does three things per iteration: run
the timers that are due, make one ``self._selector.select(timeout)`` call,
and run the callbacks that made ready.  ``SelectorEventLoop`` asks only six
things of its selector (``register``, ``modify``, ``unregister``,
``get_key``, ``select``, ``close``), so this module gives it a selector made
of the backend (`BackendSelector`) and keeps everything else of asyncio:
timers and handles, ``call_soon_threadsafe`` (its self-pipe is a watched fd),
``run_in_executor``, ``add_signal_handler`` (its wakeup fd is the same pipe),
``sock_*``, transports, subprocesses.

- The server's own connections stay completion-driven: ``select()`` hands
  the backend's events to the server's dispatch step (`server.loop.Dispatcher`)
  before it returns, so a received message goes straight to its protocol
  object, with no transport, Handle or Future in between.
- Every other file descriptor (what ``add_reader``/``add_writer`` and the
  things built on them wait for: sockets of ``asyncio.open_connection``,
  database drivers, subprocess pipes, the self-pipe) is watched by the same
  backend, a poll on the same ring for io_uring and the same epoll for
  epoll, and comes back as READY events that ``select()`` returns as
  ``(SelectorKey, mask)`` pairs, as any selector does.  One
  ``io_uring_enter`` (or ``epoll_wait``) per iteration serves both.

`new_event_loop()` makes one on a fresh backend, so any asyncio program can
run on the ring: ``asyncio.run(main(), loop_factory=server.aio.new_event_loop)``
(Python 3.12+), ``asyncio.Runner(loop_factory=...)``, or
``uvicorn --loop server.aio:new_event_loop``.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time
from collections.abc import Callable, Mapping
from typing import Any

from server.backends.base import READY, Backend, BackendName, BackendOptions, Event

# The server's dispatch step: handles the events of its connections and
# appends the (key, mask) pairs of READY events to the list it is given.
Dispatch = Callable[[list[Event], list[tuple[selectors.SelectorKey, int]]], None]


class BackendSelector(selectors.BaseSelector):
    """A `selectors.BaseSelector` over a backend (see the module docstring).

    Args:
        backend: the I/O mechanism; closing the selector shuts it down if
            `owns_backend`.
    """

    def __init__(self, backend: Backend, owns_backend: bool = True) -> None:
        self.backend = backend
        self._owns_backend = owns_backend
        self._keys: dict[int, selectors.SelectorKey] = {}
        self.dispatch: Dispatch = self._ready_only
        # The server's deadline for its next select (its sweep): None, or a
        # monotonic time that select() never blocks past.
        self.wake_at: float | None = None

    # -- registration: the app's file descriptors --------------------------------

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self.backend.watch(fd, events)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        try:
            key = self._keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self.backend.watch(fd, 0)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        try:
            key = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events != key.events:
            if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
                raise ValueError(f"Invalid events: {events!r}")
            self.backend.watch(fd, events)
        key = key._replace(events=events, data=data)
        self._keys[fd] = key
        return key

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._keys[_fd(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return {key.fileobj: key for key in self._keys.values()}

    # -- the one wait per iteration ----------------------------------------------

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        wake_at = self.wake_at
        if wake_at is not None:
            left = max(0.0, wake_at - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        events = self.backend.wait(timeout)
        ready: list[tuple[selectors.SelectorKey, int]] = []
        if events:
            self.dispatch(events, ready)
        return ready

    def ready_pairs(self, event: Event, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Turn one READY event into the (key, mask) pair asyncio expects."""
        key = self._keys.get(event[1])
        if key is not None and event[2] & key.events:
            ready.append((key, event[2] & key.events))

    def _ready_only(
        self, events: list[Event], ready: list[tuple[selectors.SelectorKey, int]]
    ) -> None:
        # No server: every event is one of the app's fds.
        for event in events:
            if event[0] == READY:
                self.ready_pairs(event, ready)

    def close(self) -> None:
        for fd in list(self._keys):
            self.backend.watch(fd, 0)
        self._keys.clear()
        if self._owns_backend:
            self.backend.shutdown()


def _fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class RingEventLoop(asyncio.SelectorEventLoop):
    """asyncio's Unix selector loop on a `BackendSelector`.

    Args:
        selector: the backend's selector.
        clock: the loop's time (tests pass a fake one; asyncio's timers follow it).
    """

    def __init__(
        self, selector: BackendSelector, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        super().__init__(selector)
        self.backend_selector = selector

    def time(self) -> float:
        return self._clock()

    # -- eager tasks ------------------------------------------------------------------
    # A Task's constructor schedules its first step with call_soon.  Python
    # 3.12 can run that step at once instead (eager_task_factory); this does
    # the same on 3.11: while `_eager` is set, call_soon runs the callback it
    # is given instead of scheduling it.  A coroutine that finishes without
    # suspending (most request handlers) thus never waits for a loop
    # iteration and costs no Handle; one that suspends is an ordinary Task
    # from then on.  It still is a real Task from its first line, so
    # asyncio.current_task(), asyncio.timeout(), sniffio and anyio work
    # (stepping the coroutine without one breaks them: granian's --opt does).

    _eager = False

    # The override returns None in the eager case (no Handle was made), which
    # asyncio's own signature does not allow: Task's constructor is the only
    # caller while _eager is set, and it discards the result.
    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle | None:
        if self._eager:
            self._eager = False
            if context is None:
                callback(*args)
            else:
                context.run(callback, *args)
            return None  # the Task constructor ignores what call_soon returns
        return super().call_soon(callback, *args, context=context)

    def run_eagerly(self, coro: Any) -> asyncio.Task[Any]:
        """A Task for `coro` whose first step has already run (in the Task's own context)."""
        self._eager = True
        try:
            return asyncio.Task(coro, loop=self)
        finally:
            self._eager = False


def new_event_loop(backend: BackendName | None = None) -> RingEventLoop:
    """An asyncio event loop on a new backend (``RINGSERVE_BACKEND``, default uring).

    Raises:
        server.backends.base.BackendUnavailable: no ring can be created here
            (it never falls back to epoll silently).
    """
    from server.config import load_backend

    name: BackendName = backend or os.environ.get("RINGSERVE_BACKEND", "uring")  # type: ignore[assignment]
    if name not in ("uring", "epoll"):
        raise ValueError(f"RINGSERVE_BACKEND: {name!r} is not uring or epoll")
    return RingEventLoop(BackendSelector(load_backend(name, BackendOptions(max_connections=1))))
