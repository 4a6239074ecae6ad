"""Locust users for ringserve: a raw-TCP echo user and an HTTP user.

`TcpEchoUser` follows Locust's custom-client pattern (locust's
``examples/custom_xmlrpc_client`` and ``examples/grpc``): its client wraps a
socket, times each exchange and fires ``environment.events.request`` itself,
so the stats, the web UI, ``--csv`` and distributed runs all see it like any
HTTP request.  Under Locust the socket module is gevent's, so a blocking
``recv`` only blocks its own user.

Every response is checked byte for byte: a short, wrong or missing echo is a
failure, never a success with odd timing.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from locust import FastHttpUser, User, tag, task
from locust.env import Environment
from locust.exception import LocustError

from loadtest import ECHO_MESSAGE_BYTES

DEFAULT_HOST = "http://127.0.0.1:8080"
HOST_ENV = "LOADTEST_HOST"
ECHO_TIMEOUT_S = 10.0
HELLO_BODY = b"Hello from ringserve\n"


def default_host() -> str:
    """The target when Locust's --host is not given: $LOADTEST_HOST, else localhost:8080."""
    return os.environ.get(HOST_ENV, DEFAULT_HOST)


def parse_address(host: str) -> tuple[str, int]:
    """``tcp://h:p``, ``http://h:p`` or ``h:p`` as (host, port).

    Raises:
        ValueError: no port, or not an address.
    """
    parts = urlsplit(host if "://" in host else f"tcp://{host}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{host!r} is not host:port (or a URL with a port)")
    return parts.hostname, parts.port


def make_message(user_id: int, seq: int, size: int = ECHO_MESSAGE_BYTES) -> bytes:
    """A `size`-byte message naming its user and sequence number.

    Distinct per message, so a reordered, repeated or stale echo fails the check.
    """
    head = b"%d:%d:" % (user_id, seq)
    return (head + b"x" * size)[:size]


class EchoMismatch(Exception):
    """The server echoed something other than what was sent."""


class TcpEchoClient:
    """One TCP connection to an echo server, reporting to Locust.

    Args:
        address: (host, port) of the server.
        environment: the Locust environment whose request event is fired.
        timeout: seconds to wait for a connect or a whole echo.
    """

    def __init__(
        self, address: tuple[str, int], environment: Environment, timeout: float = ECHO_TIMEOUT_S
    ) -> None:
        self.address = address
        self.environment = environment
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.create_connection(self.address, timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def echo(self, payload: bytes, name: str = "echo") -> None:
        """Send `payload`, read the same number of bytes back and compare them.

        Fires one request event; any error (including a mismatch) is a failure
        and drops the connection, so the next call starts on a fresh one.
        Connecting is not part of the timed exchange.
        """
        exc: Exception | None = None
        received = 0
        start = time.perf_counter()
        try:
            sock = self.connect()
            start = time.perf_counter()
            sock.sendall(payload)
            reply = self._recv_exactly(sock, len(payload))
            received = len(reply)
            if reply != payload:
                raise EchoMismatch(f"sent {payload[:24]!r}..., got back {reply[:24]!r}...")
        except Exception as error:
            exc = error
            self.close()
        self.environment.events.request.fire(
            request_type="tcp",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=received,
            exception=exc,
            context={},
        )

    @staticmethod
    def _recv_exactly(sock: socket.socket, size: int) -> bytes:
        chunks: list[bytes] = []
        left = size
        while left:
            chunk = sock.recv(left)
            if not chunk:
                raise ConnectionError(f"connection closed after {size - left} of {size} bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class TcpEchoUser(User):
    """A user with a `TcpEchoClient` as ``self.client``; subclass it and add tasks.

    ``host`` may be ``tcp://h:p``, ``h:p`` or any URL with a port.
    """

    abstract = True
    host = default_host()
    _ids = itertools.count()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("TcpEchoUser needs a host: pass --host or set $LOADTEST_HOST")
        try:
            address = parse_address(self.host)
        except ValueError as exc:
            raise LocustError(str(exc)) from exc
        self.client = TcpEchoClient(address, environment)
        self.user_id = next(self._ids)
        self.seq = itertools.count()

    def on_stop(self) -> None:
        self.client.close()


class EchoUser(TcpEchoUser):
    """Ping-pong on one connection: a 64-byte message, then its exact echo."""

    @tag("echo")
    @task
    def echo(self) -> None:
        self.client.echo(make_message(self.user_id, next(self.seq)), name="echo 64B")


class HttpAppUser(FastHttpUser):
    """The built-in HTTP app: ``GET /`` and ``POST /echo``, each response validated."""

    host = default_host()
    _ids = itertools.count()

    def on_start(self) -> None:
        self.user_id = next(self._ids)
        self.seq = itertools.count()

    @tag("http")
    @task
    def hello(self) -> None:
        with self.client.get("/", name="GET /", catch_response=True) as resp:
            _expect(resp, 200, HELLO_BODY)

    @tag("http")
    @task
    def echo(self) -> None:
        body = make_message(self.user_id, next(self.seq))
        headers = {"content-type": "application/octet-stream"}
        with self.client.post(
            "/echo",
            data=body.decode("ascii"),
            headers=headers,
            name="POST /echo",
            catch_response=True,
        ) as resp:
            _expect(resp, 200, body)


def _expect(resp: Any, status: int, body: bytes) -> None:
    """Mark `resp` (a Locust ResponseContextManager) a success only on an exact match."""
    if resp.status_code != status:
        error = getattr(resp, "error", None)
        resp.failure(
            f"status {resp.status_code}, expected {status}" + (f": {error}" if error else "")
        )
    elif resp.content != body:
        resp.failure(f"body {resp.content[:40]!r}, expected {body[:40]!r}")
    else:
        resp.success()
