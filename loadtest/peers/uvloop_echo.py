"""An ``asyncio.Protocol`` echo server on uvloop.

Run: ``python -m loadtest.peers.uvloop_echo --port 9000``.
"""

from __future__ import annotations

import asyncio
from typing import cast

from loadtest.peers._serve import run


class EchoProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once the echo is flushed


def main() -> None:
    run(lambda args: EchoProtocol, "uvloop-echo", default_port=9000)


if __name__ == "__main__":
    main()
