"""ringserve's own h11 protocol object and built-in app, served by uvloop.

Run: ``python -m loadtest.peers.uvloop_h11 --port 8080 [--app module:callable]``.
Same responses, same limits, same per-connection object as ``python -m
server`` (with ``--app``, the same WSGI adapter around that app); only the
event loop differs, which is the point of the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any, cast

from loadtest.peers._serve import Factory, run
from server.apps.builtin import BuiltinApp
from server.apps.wsgi import WsgiAdapter, load_app
from server.protocols.http.common import App, Counters, HttpLimits
from server.protocols.http.h11_impl import H11Connection as HttpConnection

COUNTERS = Counters()
LIMITS = HttpLimits()


def _stats() -> dict[str, Any]:
    return {"backend": "uvloop", "requests": COUNTERS.requests, "pid": os.getpid()}


class H11Protocol(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.conn = HttpConnection(app, LIMITS, COUNTERS)
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


def _factory(args: argparse.Namespace) -> Factory:
    """One app for every connection, as the server has: built-in, or ``--app`` in the adapter."""
    app: App = BuiltinApp(_stats)
    if args.app is not None:
        app = WsgiAdapter(load_app(args.app), args.host, args.port)
    return lambda: H11Protocol(app)


def _print_exit_stats() -> None:
    print(json.dumps({"event": "exit", **_stats()}), flush=True)


def main() -> None:
    run(
        _factory,
        "uvloop-h11",
        default_port=8080,
        on_exit=_print_exit_stats,
        options=lambda p: p.add_argument("--app", help="a WSGI app 'module:callable'"),
    )


if __name__ == "__main__":
    main()
