"""``python -m server`` as a subprocess, for the tests.

`ServerProcess` is `loadtest.servers.ServerProcess` (spawn, wait for the
``{"event": "listening"}`` line, signal, SIGUSR1 statistics, stop) plus
what tests look at: its output lines and JSON events, and requests over
HTTP.  Its environment has no ``RINGSERVE_*`` setting unless `env` is
given, so a variable set where the tests run cannot change what they test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil

from loadtest import servers
from tests.backends.client import HttpReader, HttpResponse, connect


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any RINGSERVE_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGSERVE_")}
    env.update(extra)
    return env


class ServerProcess(servers.ServerProcess):
    """``python -m server *args``; see the module docstring."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, nofile: int | None = None
    ) -> None:
        argv = [sys.executable, "-m", "server", *args]
        super().__init__(argv, nofile=nofile, env=clean_env() if env is None else env)

    def start(self, timeout: float = 20.0) -> ServerProcess:  # type: ignore[override]
        """Start it and wait for its listening line; returns itself."""
        super().start(timeout)
        return self

    def _ready(self) -> bool:
        if self.listening.get("uds") is not None:  # no TCP address: see `uds`
            return True
        return super()._ready()

    @property
    def uds(self) -> str:
        """The path of the Unix socket it listens on."""
        path = self.listening["uds"]
        assert isinstance(path, str), self.listening
        return path

    def output(self) -> str:
        return f"stdout:\n{''.join(self.stdout_lines)}stderr:\n{''.join(self.stderr_lines)}"

    def wait_line(
        self, pattern: str, stream: str = "stderr", timeout: float = 10.0
    ) -> re.Match[str]:
        """The first line of its stderr (or stdout) matching `pattern`, waiting for it."""
        lines = self.stdout_lines if stream == "stdout" else self.stderr_lines
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            if m := next(filter(None, map(rx.search, list(lines))), None):
                return m
            if time.monotonic() > deadline or not any(r.is_alive() for r in self._readers):
                raise AssertionError(f"no line matching {pattern!r}\n{self.output()}")
            time.sleep(0.01)

    @property
    def banner(self) -> str:
        """The start-up line for people, on stderr."""
        return self.wait_line("listening on ").string

    def json_lines(self, event: str) -> list[dict[str, Any]]:
        """Its JSON lines on stdout with this "event"."""
        records = [json.loads(line) for line in list(self.stdout_lines) if line.startswith("{")]
        return [r for r in records if r.get("event") == event]

    def wait(self, timeout: float = 15.0) -> int:
        """Its exit status once it has exited (AssertionError, with its output, if it does not)."""
        try:
            return super().wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit in {timeout} s\n{self.output()}") from None

    def kill_all(self) -> None:
        """Kill it and its workers (they lead process groups of their own: `kill` misses them)."""
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error, AssertionError):
            children = psutil.Process(self.pid).children()
        self.kill()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()

    def fetch(self, data: bytes) -> HttpResponse:
        """One request on a fresh connection (to its Unix socket, if that is what it serves)."""
        if self.listening.get("uds") is not None:
            return unix_fetch(self.uds, data)
        with connect(self.address) as sock:
            sock.sendall(data)
            return HttpReader(sock).read_response()


def unix_fetch(path: str, data: bytes, timeout: float = 10.0) -> HttpResponse:
    """One request on a fresh connection to the Unix socket at `path`; its response."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data)
        return HttpReader(sock).read_response()


def local_server(
    backend: str,
    protocol: str = "http",
    args: Sequence[str] = (),
    nofile: int | None = None,
    host: str | None = "127.0.0.1",
) -> ServerProcess:
    """Our server on `host` (None: its default) and a port the kernel picks; not started."""
    where = [] if host is None else ["--host", host]
    return ServerProcess(
        "--backend", backend, "--protocol", protocol, *where, "--port", "0", *args, nofile=nofile
    )
