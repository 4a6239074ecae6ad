"""ASGI 3 on the ring: the HTTP and lifespan specs (version 2.4).

An HTTP connection in async mode (`server.protocols.http.framing.AsyncMode`)
makes one `RequestCycle` per request and starts the app on it as soon as
the request head is complete.  The app runs as a Task started eagerly
(`server.aio.RingEventLoop.run_eagerly`): a handler that never suspends, as
most don't, runs to its end inside the dispatch of the bytes that completed
its request, and its response leaves in the same ``io_uring_enter`` as the
other responses of that batch.

- ``receive()`` hands out the body as it arrives (``more_body``) and never
  suspends while bytes are waiting; while the app does not call it, reading
  from the peer pauses once `BODY_PAUSE_BYTES` are waiting (backpressure);
  ``100 Continue`` is sent the first time it is called, if the client asked.
  After the last piece it waits for the connection to close
  (``http.disconnect``); after the response, it returns that at once.
- ``send()`` keeps ``http.response.start`` until the first body message: a
  whole response (start, one body without ``more_body``) is written in one
  piece through the parser's cached response head, the common case; a
  streamed one is written as it comes.  Above the output high-water mark
  ``send()`` waits for the drain; on a closed connection it raises
  `ClientDisconnected` (an OSError, as spec 2.4 asks).
- An app that raises before its response starts gets a 500; after it
  started, the connection is closed.  An app that returns without a
  response gets a 500 too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from server.protocols.http.common import split_target

if TYPE_CHECKING:
    from server.protocols.http.framing import AsyncMode

logger = logging.getLogger("server.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiCallable = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI: Final = {"version": "3.0", "spec_version": "2.4"}
# Body bytes waiting for receive() beyond which the peer is not read.
BODY_PAUSE_BYTES: Final = 64 * 1024
_DISCONNECT: Final = {"type": "http.disconnect"}
# Streamed body bytes a send() may write without returning to the loop: the backend
# says WRITE_PAUSED from the loop, so an app streaming in a tight loop (each send()
# returning at once) must let it run to hear it.  The backend's high-water mark.
SEND_YIELD_BYTES: Final = 1 << 20


class ClientDisconnected(OSError):
    """send() on a connection the client has closed (ASGI spec 2.4)."""


def is_asgi(app: Any) -> bool:
    """True if `app` is an ASGI 3 callable (a coroutine function, or an object whose
    __call__ is one), as uvicorn's --interface auto decides."""
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - the attribute, not callable()
    return inspect.iscoroutinefunction(call)


class AsgiApp:
    """An ASGI application, with what every request's scope shares.

    Args:
        app: the ASGI 3 callable.
        root_path: the mount point in front of the app (--root-path).
        server: the listener's (host, port).
        scheme: ``"https"`` when the server speaks TLS.
    """

    def __init__(
        self, app: AsgiCallable, root_path: str = "", server: Any = None, scheme: str = "http"
    ) -> None:
        self.app = app
        self.root_path = root_path
        # As uvicorn (and Starlette's routing) read the spec: path and raw_path are
        # the full path, so root_path starts them.
        self.raw_root_path = root_path.encode("latin-1")
        self.server = server
        self.scheme = scheme
        self.state: dict[str, Any] = {}  # filled by lifespan startup


class RequestCycle:
    """One HTTP request and its response, between the app and its connection."""

    __slots__ = (
        "_body",
        "_body_bytes",
        "_body_done",
        "_conn",
        "_drain",
        "_eof",
        "_unyielded",
        "_waiter",
        "closed",
        "complete",
        "headers",
        "reason",
        "started",
        "status",
        "streaming",
        "task",
    )

    def __init__(self, conn: AsyncMode) -> None:
        self._conn = conn
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._body_done = False
        self._waiter: asyncio.Future[None] | None = None  # receive() waiting
        self._drain: asyncio.Future[None] | None = None  # send() waiting for the drain
        self._unyielded = 0  # streamed bytes since send() last let the loop run
        self._eof = False  # the peer sends nothing more
        self.closed = False  # the connection is gone
        self.started = False
        self.streaming = False
        self.complete = False
        self.status = 0
        self.headers: Any = ()
        self.reason: bytes | None = None  # only from ringserve's own adapters
        self.task: asyncio.Task[None] | None = None

    # -- what the connection tells the cycle --------------------------------------

    def feed(self, piece: bytes) -> None:
        """A piece of the request body arrived."""
        self._body.append(piece)
        self._body_bytes += len(piece)
        if self._body_bytes > BODY_PAUSE_BYTES:
            self._conn.pause_reading()
        self._wake()

    def body_done(self) -> None:
        self._body_done = True
        self._wake()

    def eof(self) -> None:
        """The peer sent its EOF after the request: once the body is read, receive()
        says http.disconnect (it will send nothing more).  send() goes on: a client
        that only shut down its side still reads the response."""
        self._eof = True
        self._wake()

    def disconnect(self) -> None:
        """The connection closed: receive() says so, send() raises."""
        self.closed = True
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the app's two callables ------------------------------------------------------

    async def receive(self) -> Message:
        conn = self._conn
        if self.closed or self.complete:
            return _DISCONNECT
        conn.send_continue()
        while not self._body and not self._body_done and not self.closed:
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            conn.resume_reading()
            await waiter
        if self._body:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._body = []
            self._body_bytes = -1 if self._body_done else 0  # -1: the last piece went out
            conn.resume_reading()
            return {"type": "http.request", "body": body, "more_body": not self._body_done}
        if self.closed:
            return _DISCONNECT
        if self._body_done and self._body_bytes >= 0:
            self._body_bytes = -1  # the last piece (maybe empty) goes out once
            return {"type": "http.request", "body": b"", "more_body": False}
        # Everything was read: what comes next is the end of the connection.
        while not self.closed and not self.complete and not self._eof:
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            await waiter
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        if self.closed:
            raise ClientDisconnected("the client closed the connection")
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            self.started = True
            self.status = message["status"]
            self.headers = message.get("headers", ())
            self.reason = message.get("reason")
            return
        if kind != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', got {kind!r}")
        if self.complete:
            raise RuntimeError("the response is already complete")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        conn = self._conn
        if not self.streaming and not more:
            self.complete = True
            conn.write_response(self.status, self.headers, body, self.reason)
            return
        if not self.streaming:
            self.streaming = True
            if not conn.write_head(self.status, self.headers):
                raise RuntimeError("the server refused the response head")
        if body and not conn.write_body(body):
            raise RuntimeError("the body does not fit the response's framing")
        if not more:
            self.complete = True
            conn.write_end()
            return
        drain = self._drain
        if drain is None or drain.done():
            self._unyielded += len(body)
            if self._unyielded < SEND_YIELD_BYTES:
                return
            self._unyielded = 0
            await asyncio.sleep(0)  # the loop hears of a WRITE_PAUSED, or the close
            drain = self._drain
            if drain is None or drain.done():
                if self.closed:
                    raise ClientDisconnected("the client closed the connection")
                return
        self._unyielded = 0
        await drain
        if self.closed:
            raise ClientDisconnected("the client closed the connection")


class Lifespan:
    """The lifespan protocol: startup before serving, shutdown after.

    Args:
        app: the application.
        mode: "on" (failure to support it is an error), "auto" (an app that
            raises before taking part is taken not to support it), "off".
    """

    def __init__(self, app: AsgiApp, mode: str = "auto") -> None:
        self._app = app
        self._mode = mode
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._supported = mode != "off"
        self.error: str | None = None

    async def startup(self) -> bool:
        """True once the app completed startup (or does not do lifespan); False on failure
        (`error` says why)."""
        if not self._supported:
            return True
        scope = {"type": "lifespan", "asgi": ASGI, "state": self._app.state}
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        return await self._answer("lifespan.startup")

    async def shutdown(self) -> bool:
        if not self._supported or self._task is None:
            return True
        await self._inbox.put({"type": "lifespan.shutdown"})
        ok = await self._answer("lifespan.shutdown")
        await asyncio.wait([self._task], timeout=5)
        return ok

    async def _answer(self, phase: str) -> bool:
        assert self._task is not None
        got = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait([got, self._task], return_when="FIRST_COMPLETED")
        if not got.done():
            got.cancel()
            if not self._supported:  # auto: the app raised at once
                return True
            self.error = self.error or f"the app ended during {phase}"
            return False
        message = got.result()
        if message["type"] == f"{phase}.complete":
            return True
        self.error = message.get("message", "") or f"{phase} failed"
        return False

    async def _run(self, scope: Scope) -> None:
        started = False

        async def receive() -> Message:
            nonlocal started
            started = True
            return await self._inbox.get()

        async def send(message: Message) -> None:
            await self._outbox.put(message)

        try:
            await self._app.app(scope, receive, send)
        except BaseException as exc:
            if self._mode == "auto" and not started:
                logger.info("ASGI lifespan not supported by the app (%r)", exc)
                self._supported = False
                return
            self.error = f"the app raised {exc!r} in lifespan"
            logger.error("ASGI lifespan failed", exc_info=exc)
            if isinstance(exc, asyncio.CancelledError):
                raise


def build_scope(
    app: AsgiApp,
    method: bytes,
    target: bytes,
    headers: Any,
    http_version: bytes,
    client: Any,
    scheme: str | None = None,
) -> Scope:
    """The HTTP scope of one request (ASGI spec 2.4, "HTTP connection scope")."""
    raw_path, query = split_target(target)
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path, encoding="utf-8", errors="surrogateescape")
    if app.root_path:
        path = app.root_path + path
        raw_path = app.raw_root_path + raw_path
    return {
        "type": "http",
        "asgi": ASGI,
        "http_version": "1.1" if http_version == b"1.1" else "1.0",
        "method": method.decode("ascii"),
        "scheme": scheme or app.scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": app.root_path,
        "headers": headers if type(headers) is list else list(headers),
        "client": client,
        "server": app.server,
        "state": app.state.copy(),
    }
