"""Locust users for ringserve: ``HttpAppUser`` (HTTP), ``FastApiUser`` (the FastAPI
example) and ``EchoUser`` (raw TCP echo).

Pick them by class name (``locust -f loadtest/locustfile.py EchoUser``) or
by tag (``--tags http``, ``--tags fastapi``, ``--tags echo``).  The target defaults to
$LOADTEST_HOST (else http://127.0.0.1:8080); Locust's ``--host`` wins; the
echo user takes ``tcp://h:p``, ``h:p`` or any URL.  It all works in the web
UI, headless, ``--processes`` and ``--master``/``--worker``.  Every response
is checked byte for byte: a short, wrong or missing one is a failure, never
a success with odd timing.  `TcpEchoUser` follows Locust's custom-client
pattern (``examples/custom_xmlrpc_client``): its client times each exchange
and fires ``environment.events.request`` itself, so stats, the web UI and
``--csv`` see it like any request (under Locust, sockets are gevent's).
``--warmup-seconds W`` (`loadtest.compare` passes it) resets the stats W
seconds after spawning completes and prints the `loadtest` window markers.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust import FastHttpUser, User, events, tag, task
from locust.env import Environment
from locust.exception import LocustError
from locust.runners import WorkerRunner

# Locust puts this file's directory on sys.path, not the project root; add it
# so `loadtest` is this package from any working directory.
if (_ROOT := str(Path(__file__).resolve().parent.parent)) not in sys.path:
    sys.path.insert(0, _ROOT)

import loadtest

HOST = os.environ.get("LOADTEST_HOST", "http://127.0.0.1:8080")
HELLO_BODY = b"Hello from ringserve\n"


def parse_address(host: str) -> tuple[str, int]:
    """``tcp://h:p``, ``http://h:p`` or ``h:p`` as (host, port); ValueError without a port."""
    parts = urlsplit(host if "://" in host else f"tcp://{host}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{host!r} is not host:port (or a URL with a port)")
    return parts.hostname, parts.port


def make_message(user_id: int, seq: int, size: int = loadtest.ECHO_MESSAGE_BYTES) -> bytes:
    """A message naming its user and sequence number: a reordered or stale echo fails."""
    return (b"%d:%d:" % (user_id, seq) + b"x" * size)[:size]


class TcpEchoClient:
    """One TCP connection to an echo server, reporting to Locust (`timeout`: per exchange)."""

    def __init__(self, address: tuple[str, int], environment: Environment, timeout: float = 10.0):
        self.address, self.environment, self.timeout = address, environment, timeout
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def echo(self, payload: bytes, name: str = "echo") -> None:
        """Send `payload`, check its echo, fire one request event (a failure drops the socket)."""
        exc: Exception | None = None
        reply = b""
        start = time.perf_counter()
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            self.sock.sendall(payload)
            while len(reply) < len(payload):
                if not (chunk := self.sock.recv(len(payload) - len(reply))):
                    raise ConnectionError(f"closed after {len(reply)} of {len(payload)} bytes")
                reply += chunk
            if reply != payload:
                raise ValueError(f"sent {payload[:24]!r}..., got back {reply[:24]!r}...")
        except Exception as error:
            exc = error
            self.close()
        self.environment.events.request.fire(
            request_type="tcp", name=name, response_time=(time.perf_counter() - start) * 1000.0,
            response_length=len(reply), exception=exc, context={},
        )  # fmt: skip


class TcpEchoUser(User):
    """A user with a `TcpEchoClient` as ``self.client``; subclass it and add tasks."""

    abstract, host = True, HOST
    _ids = itertools.count()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        try:
            self.client = TcpEchoClient(parse_address(self.host or ""), environment)
        except ValueError as exc:
            raise LocustError(f"{exc}: pass --host or set $LOADTEST_HOST") from exc
        self.user_id, self.seq = next(self._ids), itertools.count()

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

    host = HOST
    _ids = itertools.count()

    def on_start(self) -> None:
        self.user_id, self.seq = next(self._ids), itertools.count()

    @tag("http")
    @task
    def hello(self) -> None:
        with self.client.get("/", name="GET /", catch_response=True) as resp:
            _expect(resp, HELLO_BODY)

    @tag("http")
    @task
    def echo(self) -> None:
        body = make_message(self.user_id, next(self.seq))
        headers = {"content-type": "application/octet-stream"}
        with self.client.post(
            "/echo", data=body.decode("ascii"), headers=headers, name="POST /echo",
            catch_response=True,
        ) as resp:  # fmt: skip
            _expect(resp, body)


class FastApiUser(FastHttpUser):
    """``examples/fastapi_app.py``: ``GET /items/{id}?q=`` (3 of 4 requests) and ``POST
    /items`` with a JSON body; each answer's status, content-type and JSON checked exactly."""

    host = HOST
    _ids = itertools.count()
    TAGS = ("new", "sale", "ring", "uring")

    def on_start(self) -> None:
        self.user_id, self.seq = next(self._ids), itertools.count()
        self.rng = random.Random(self.user_id)

    @tag("fastapi")
    @task(3)
    def read_item(self) -> None:
        item_id, q = self.rng.randint(1, 1_000_000), f"u{self.user_id}-{next(self.seq)}"
        with self.client.get(
            f"/items/{item_id}?q={q}", name="GET /items/{id}?q=", catch_response=True
        ) as resp:
            _expect_json(resp, 200, {"item_id": item_id, "q": q})

    @tag("fastapi")
    @task
    def create_item(self) -> None:
        price, quantity = round(self.rng.uniform(0.5, 100), 2), self.rng.randint(1, 10)
        item = {"name": f"item {self.user_id}-{next(self.seq)}", "price": price,
                "quantity": quantity, "tags": [self.rng.choice(self.TAGS)]}  # fmt: skip
        with self.client.post("/items", json=item, name="POST /items", catch_response=True) as resp:
            _expect_json(resp, 201, {**item, "total": round(price * quantity, 2)})


def _expect_json(resp: Any, status: int, expected: Any) -> None:
    """A success only for `status` with an ``application/json`` body equal to `expected`."""
    ctype = resp.headers.get("content-type", "") if resp.headers else ""
    if resp.status_code != status:
        error = getattr(resp, "error", None)
        resp.failure(
            f"status {resp.status_code}, expected {status}" + (f": {error}" if error else "")
        )
        return
    try:
        got = json.loads(resp.content or b"")
    except ValueError:
        got = ValueError  # never equal to a JSON value
    if ctype != "application/json":
        resp.failure(f"content-type {ctype!r}, expected 'application/json'")
    elif got != expected:
        resp.failure(f"body {(resp.content or b'')[:80]!r}, expected {expected!r}")
    else:
        resp.success()


def _expect(resp: Any, body: bytes) -> None:
    """Mark `resp` (a Locust ResponseContextManager) a success only on a 200 with `body`."""
    if resp.status_code != 200:
        error = getattr(resp, "error", None)
        resp.failure(f"status {resp.status_code}, expected 200" + (f": {error}" if error else ""))
    elif resp.content != body:
        resp.failure(f"body {resp.content[:40]!r}, expected {body[:40]!r}")
    else:
        resp.success()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--warmup-seconds", type=float, default=None, include_in_web_ui=False,
        help="reset the statistics this many seconds after spawning completes (ringserve)",
    )  # fmt: skip


@events.init.add_listener
def _drop_users_without_tasks(environment: Environment, **_: Any) -> None:
    """Let ``--tags echo`` / ``--tags http`` pick the users, not only their tasks.

    Locust filters tasks by tag when a test starts but keeps a user whose
    every task is filtered out, and that user then fails with "No tasks
    defined".  Drop such users at init, before a master builds its
    dispatcher, using Locust's rule: a task runs if it has one of the tags
    (when tags are given) and none of the excluded ones.
    """
    options = environment.parsed_options
    tags, excluded = (set(getattr(options, k, None) or ()) for k in ("tags", "exclude_tags"))

    def runs(task: Any) -> bool:
        if isinstance(task, type):  # a TaskSet: let Locust decide
            return True
        task_tags: set[str] = getattr(task, "locust_tag_set", set())
        return (not tags or bool(task_tags & tags)) and not task_tags & excluded

    kept = [cls for cls in environment.user_classes if any(runs(t) for t in cls.tasks)]
    if (tags or excluded) and kept:
        environment.user_classes[:] = kept


@events.init.add_listener
def _discard_warmup(environment: Environment, **_: Any) -> None:
    """With --warmup-seconds: reset the stats once per test, after the warm-up.

    Only the local runner or the master resets: workers send increments, so
    the master's totals are what the report shows.
    """
    warmup = getattr(environment.parsed_options, "warmup_seconds", None)
    if warmup is None or isinstance(environment.runner, WorkerRunner):
        return
    state: dict[str, Any] = {"armed": False, "timer": None}

    def open_window() -> None:
        if environment.runner is not None:
            environment.runner.stats.reset_all()
        print(loadtest.WINDOW_START_MARKER, file=sys.stderr, flush=True)

    def on_spawning_complete(**_: Any) -> None:
        if state["armed"]:  # not again when the user count changes mid-test
            state.update(armed=False, timer=gevent.spawn_later(warmup, open_window))

    def on_test_stopping(**_: Any) -> None:
        if state["timer"] is not None:
            state["timer"].kill(block=False)
        state.update(armed=False, timer=None)
        print(loadtest.WINDOW_END_MARKER, file=sys.stderr, flush=True)

    environment.events.test_start.add_listener(lambda **_: state.update(armed=True))
    environment.events.spawning_complete.add_listener(on_spawning_complete)
    environment.events.test_stopping.add_listener(on_test_stopping)
