"""ringserve's own h11 protocol object and built-in app, served by uvloop.

Run: ``python -m loadtest.peers.uvloop_h11 --port 8080``.  Same responses,
same limits, same per-connection object as ``python -m server``; only the
event loop differs, which is the point of the comparison.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, cast

from loadtest.peers._serve import run
from server.apps.builtin import BuiltinApp
from server.protocols.http.common import Counters, HttpLimits
from server.protocols.http.h11_impl import H11Connection as HttpConnection

COUNTERS = Counters()
LIMITS = HttpLimits()


def _stats() -> dict[str, Any]:
    return {"backend": "uvloop", "requests": COUNTERS.requests, "pid": os.getpid()}


APP = BuiltinApp(_stats)


class H11Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.conn = HttpConnection(APP, LIMITS, COUNTERS)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        out = self.conn.receive_data(data)
        assert self.transport is not None
        if out:
            self.transport.write(out)
        if self.conn.should_close:
            self.transport.close()

    def eof_received(self) -> bool:
        self.data_received(b"")
        return False


def _print_exit_stats() -> None:
    print(json.dumps({"event": "exit", **_stats()}), flush=True)


def main() -> None:
    run(
        H11Protocol,
        "uvloop+h11 listening on http://{host}:{port}",
        default_port=8080,
        on_exit=_print_exit_stats,
    )


if __name__ == "__main__":
    main()
