"""The echo protocol: every byte received is sent back, in order."""

from __future__ import annotations


class EchoConnection:
    """Sans-IO echo. Returns the very ``bytes`` object it is given (no copy).

    On EOF (``receive_data(b"")``) it asks to close; the loop sends whatever
    is still queued first, so a half-closed client gets all its bytes back.
    """

    __slots__ = ("should_close",)

    busy = False  # every byte is answered as soon as it arrives
    responding = False
    needs_transport = False

    def __init__(self) -> None:
        self.should_close = False

    def receive_data(self, data: bytes) -> bytes:
        if not data:
            self.should_close = True
        return data

    def pending_head(self) -> int:
        return 0  # no heads: each byte is a whole message

    def timed_out(self) -> bytes:
        self.should_close = True
        return b""

    def stop_keepalive(self) -> None:
        self.should_close = True

    def drain(self) -> None:
        self.should_close = True  # a stream has no request boundary to wait for
