"""Sans-IO connection handlers: bytes in, bytes out, no sockets.

Both backends drive the same objects through ``ServerProtocol``, so any
difference in a benchmark comes from I/O alone.
"""

from __future__ import annotations

from typing import Any, Protocol


class Transport(Protocol):
    """How a protocol object writes outside ``receive_data`` (asyncio's transport
    methods, on one connection; `server.loop.ConnectionTransport`)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Close once what was written is sent."""

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"peername"``, ``"sockname"``."""


class ServerProtocol(Protocol):
    """One connection's protocol state, as the hot loop sees it.

    Attributes:
        should_close: once true, the loop closes the connection after the
            output already returned has been sent.
        busy: a request has started and is not answered yet.  A busy
            connection that receives nothing for the read timeout is timed
            out (``timed_out()``); one that is not busy is closed after the
            idle (keep-alive) timeout; shutdown waits for busy ones only.
        responding: the request is complete and the app is working on the
            response (an ASGI app awaiting something, a WSGI app in a
            thread): neither timeout applies, shutdown still waits.
        needs_transport: the object answers outside ``receive_data`` too;
            it is then given a `Transport` (``connection_made``) and told of
            the connection's end and of write backpressure.  A class
            attribute: the synchronous protocols say False and pay nothing.
    """

    should_close: bool
    busy: bool
    responding: bool
    needs_transport: bool

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the peer (``b""`` means EOF); return bytes to send."""
        ...

    def pending_head(self) -> int:
        """Which request head is being read: 0 if none, else its number on
        this connection (1 for the first), so the loop can bound the time a
        head takes as a whole (``--header-timeout``), not only the silence
        between its bytes."""
        ...

    def timed_out(self) -> bytes:
        """The connection timed out: return last words (may be empty); it closes."""
        ...

    def stop_keepalive(self) -> None:
        """Close after the response being handled (used at shutdown)."""

    def drain(self) -> None:
        """Close after the next response, but stay open for it (a retiring worker).

        Unlike `stop_keepalive`, an idle connection is not closed at once:
        its client may have sent its next request already, and closing would
        lose it (the client sees the connection end instead of a response).
        Protocols without requests to finish set ``should_close`` at once.
        """


class AsyncServerProtocol(ServerProtocol, Protocol):
    """A `ServerProtocol` that also answers later (``needs_transport`` is True)."""

    def connection_made(self, transport: Transport) -> None: ...

    def connection_lost(self, exc: OSError | None) -> None:
        """The connection is gone (the peer left, or it was closed)."""

    def pause_writing(self) -> None:
        """Unsent output went above the high mark: stop producing until resume_writing."""

    def resume_writing(self) -> None: ...
