"""What the uvloop peers share: serve an ``asyncio.Protocol`` until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable

import uvloop

Factory = Callable[[], asyncio.Protocol]


async def _serve(
    factory: Factory, host: str, port: int, name: str, on_exit: Callable[[], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    server = await loop.create_server(factory, host, port, backlog=1024, reuse_address=True)
    port = server.sockets[0].getsockname()[1]  # the bound one, also for --port 0
    # Announced as `python -m server` does, so compare waits for the line, not a socket.
    print(json.dumps({"event": "listening", "host": host, "port": port, "server": name}),
          flush=True)  # fmt: skip
    print(f"{name} listening on {host}:{port}", file=sys.stderr, flush=True)
    await stop
    server.close()
    if on_exit is not None:
        on_exit()


def run(
    factory: Callable[[argparse.Namespace], Factory],
    name: str,
    default_port: int,
    on_exit: Callable[[], None] | None = None,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse ``--host``/``--port`` (and `options`), then serve on uvloop until a signal.

    `factory` makes the protocol factory from the parsed options.  Once
    listening it prints ``{"event": "listening", "host": ..., "port": ...}``
    on stdout (and a line for people on stderr); `on_exit` runs after the
    listener closes.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=default_port)
    if options is not None:
        options(p)
    args = p.parse_args()
    uvloop.run(_serve(factory(args), args.host, args.port, name, on_exit))
