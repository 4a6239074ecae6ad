"""``--workers N``: N single-threaded server processes sharing one port.

Each worker binds its own listening socket with ``SO_REUSEPORT`` (the kernel
spreads new connections across them) and builds its own backend, so each
has its own ring.  The parent only forwards SIGINT/SIGTERM, and SIGUSR1
(so ``kill -USR1 <parent>`` makes every worker print its statistics line
instead of killing the parent), and waits; it exits 0 when every worker did.
With ``--metrics HOST:PORT``, worker i serves its own counters on PORT + i.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys

from server.config import Config

logger = logging.getLogger("server.workers")


def _worker_config(config: Config, index: int) -> Config:
    """Worker `index`'s config: its own --metrics port, PORT + index (each worker
    has its own counters; a scraper sums them)."""
    if config.metrics is None:
        return config
    host, _, port = config.metrics.rpartition(":")
    return dataclasses.replace(config, metrics=f"{host}:{int(port) + index}")


def run_workers(config: Config) -> int:
    """Fork `config.workers` servers and wait for them; returns the exit code."""
    from server.lifecycle import Server, StartupError, make_listener

    if config.port == 0:
        print("ringserve: error: --workers needs a fixed --port", file=sys.stderr)
        return 1
    try:  # bind once in the parent first, so a busy port fails before forking
        probe = make_listener(config, reuse_port=True)
    except StartupError as exc:
        print(f"ringserve: error: {exc}", file=sys.stderr)
        return 1
    pids: list[int] = []
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            probe.close()
            code = 1
            try:
                code = Server(_worker_config(config, index)).run()
            finally:
                os._exit(code)
        pids.append(pid)
    probe.close()

    def forward(signum: int, frame: object) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, forward)
    worst = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status))
    return worst
