"""Sans-IO connection handlers: bytes in, bytes out, no sockets.

Both backends drive the same objects through ``ServerProtocol``, so any
difference in a benchmark comes from I/O alone.
"""

from __future__ import annotations

from typing import Protocol


class ServerProtocol(Protocol):
    """One connection's protocol state, as the hot loop sees it.

    Attributes:
        should_close: once true, the loop closes the connection after the
            output already returned has been sent.
        busy: a request has started and is not answered yet.  A busy
            connection that receives nothing for the read timeout is timed
            out (``timed_out()``); one that is not busy is closed after the
            idle (keep-alive) timeout; shutdown waits for busy ones only.
    """

    should_close: bool
    busy: bool

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
