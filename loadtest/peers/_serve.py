"""What the uvloop peers share: serve an ``asyncio.Protocol`` until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

import uvloop


async def _serve(
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    banner: str,
    on_exit: Callable[[], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    server = await loop.create_server(factory, host, port, backlog=1024, reuse_address=True)
    print(banner.format(host=host, port=port), flush=True)
    await stop
    server.close()
    if on_exit is not None:
        on_exit()


def run(
    factory: Callable[[], asyncio.Protocol],
    banner: str,
    default_port: int,
    on_exit: Callable[[], None] | None = None,
) -> None:
    """Parse ``--host``/``--port``, then serve `factory` on uvloop until a signal.

    `banner` is printed once listening, with ``{host}`` and ``{port}`` filled in;
    `on_exit` runs after the listener closes.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=default_port)
    args = p.parse_args()
    uvloop.run(_serve(factory, args.host, args.port, banner, on_exit))
