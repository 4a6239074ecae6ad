"""``--workers N``: N single-threaded server processes serving sockets the parent opened.

The parent opens the listening sockets and forks the workers, which inherit
them: for TCP one ``SO_REUSEPORT`` socket per worker (the kernel spreads new
connections across them), for ``--uds``, ``--fd`` and systemd's socket the
one socket they all serve.  Each worker builds its own backend, so each has
its own ring.  The parent only forwards SIGINT/SIGTERM, and SIGUSR1 (so
``kill -USR1 <parent>`` makes every worker print its statistics line
instead of killing the parent), and waits; it exits 0 when every worker did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

from server.config import Config

logger = logging.getLogger("server.workers")


def run_workers(config: Config) -> int:
    """Fork `config.workers` servers and wait for them; returns the exit code."""
    from server.lifecycle import Server
    from server.listeners import ListenerError, open_listeners

    try:  # opened in the parent, so a busy port fails before forking
        listeners = open_listeners(config, config.workers)
    except ListenerError as exc:
        print(f"ringserve: error: {exc}", file=sys.stderr)
        return 1
    pids: list[int] = []
    for i in range(config.workers):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            mine = listeners[i % len(listeners)]
            for other in listeners:
                if other is not mine:
                    other.sock.close()
            code = 1
            try:
                code = Server(config, mine.for_child()).run()
            finally:
                os._exit(code)
        pids.append(pid)
    for listener in listeners:  # the workers have theirs
        listener.sock.close()

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
    for listener in listeners:
        listener.remove_file()
    return worst
