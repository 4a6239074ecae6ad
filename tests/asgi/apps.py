"""Raw ASGI 3 applications the ASGI suites serve (``Config(app="tests.asgi.apps:app")``).

No framework: each route speaks the HTTP and lifespan messages itself, so a
test sees exactly what the server gives an app and exactly what it does
with what the app sends.  The server runs in a thread of the test process
(`tests.conftest.serve_in_thread`), so the apps tell the test what they
saw through `control` (``note()``, read with ``seen()``), and wait for it at
`Gate`\\ s the test opens.  The suites reset `control` before each test.

Routes of `app` (query parameters in brackets):

- ``/scope...``: the scope as JSON (bytes as latin-1 strings);
- ``/state-mutate``: changes its scope's ``state`` (the next scope's is a fresh copy);
- ``/body``: reads the body; JSON of each message's (length, more_body), the sha256;
- ``/pieces``: notes each body message as it arrives;
- ``/echo``: the body back, one whole response;
- ``/stream`` [n, size, cl, status, sleep]: `n` pieces of `size` bytes with
  ``more_body``, a content-length if `cl` (its value, or the true one if empty);
- ``/sleep`` [s]: ``asyncio.sleep`` then a response;
- ``/p/NAME`` [sleep]: ``NAME``, after ``asyncio.sleep(sleep)`` if given;
- ``/gate/NAME``: responds once gate NAME opens, without reading the body;
- ``/read-after/NAME``: waits for gate NAME, then reads the body (its sha256);
- ``/no-read`` [sleep, status]: responds (at once, or after ``asyncio.sleep``), never
  calling receive();
- ``/disconnect``: receive() until ``http.disconnect``, noting each message;
- ``/send-after-complete`` [what]: a whole response, then another body message or a
  trailers message (what send() raised noted);
- ``/after-response``: a whole response, then receive() (noted);
- ``/send-after-disconnect``: starts a stream, waits for the disconnect, sends
  again until send() raises (the exception noted; at most 2 s);
- ``/raise-before``, ``/raise-after-start``, ``/raise-mid-stream``,
  ``/no-response``, ``/double-start``, ``/body-before-start``,
  ``/start-after-body``: broken apps;
- ``/big`` [mb, piece]: `mb` MiB streamed in `piece`-byte pieces in a tight loop,
  progress noted;
- ``/status/CODE``: an empty response with that status (streamed if ``stream``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]


class Gate:
    """Where an app waits for the test: ``await gate.wait()`` in the app, ``gate.open()``
    from the test's thread; ``reached`` is set once the app waits there."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._lock = threading.Lock()
        self._opened = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._opened:
                self.reached.set()
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        self.reached.set()
        await future

    def open(self) -> None:
        with self._lock:
            self._opened = True
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Control:
    """What the apps tell the test, and the gates the test opens."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.gates: dict[str, Gate] = {}
        self.progress: dict[str, int] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            for gate in self.gates.values():
                gate.open()  # nothing waits past its test
            self.events = []
            self.gates = {}
            self.progress = {}

    def note(self, *event: Any) -> None:
        self.events.append(event)

    def seen(self, name: str) -> list[tuple[Any, ...]]:
        return [e[1:] for e in list(self.events) if e[0] == name]

    def http_events(self) -> list[tuple[Any, ...]]:
        """What the app noted other than its lifespan."""
        return [e for e in list(self.events) if not str(e[0]).startswith("lifespan.")]

    def names(self) -> list[str]:
        return [e[0] for e in list(self.events)]

    def gate(self, name: str) -> Gate:
        with self._lock:
            return self.gates.setdefault(name, Gate())


control = Control()


def _query(scope: Scope) -> dict[str, str]:
    return {
        k: v[-1]
        for k, v in parse_qs(
            scope["query_string"].decode("latin-1"), keep_blank_values=True
        ).items()
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


async def _read_body(receive: Any) -> tuple[bytes, list[tuple[int, bool]]]:
    pieces: list[bytes] = []
    messages: list[tuple[int, bool]] = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        pieces.append(message.get("body", b""))
        more = message.get("more_body", False)
        messages.append((len(pieces[-1]), more))
        if not more:
            return b"".join(pieces), messages


async def _respond(
    send: Any,
    body: bytes,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if headers is None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(scope: Scope, receive: Any, send: Any) -> None:
    """Startup fills the state every request's scope gets a copy of."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started"] = "yes"
            scope["state"]["items"] = [1, 2]
            control.note("lifespan.startup", scope["asgi"])
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            control.note("lifespan.shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    assert scope["type"] == "http", scope["type"]
    path: str = scope["path"]
    root = scope["root_path"]
    if root and path.startswith(root):
        path = path[len(root) :]
    query = _query(scope)
    if path.startswith("/scope"):
        data = _jsonable({k: v for k, v in scope.items()})
        data["types"] = {k: type(v).__name__ for k, v in scope.items()}
        data["header_types"] = sorted(
            {f"{type(n).__name__},{type(v).__name__}" for n, v in scope["headers"]}
        )
        await _respond(send, json.dumps(data).encode(), headers=[(b"content-type", b"json")])
    elif path == "/state-mutate":
        scope["state"]["mutated"] = True
        scope["state"]["items"].append(3)  # a shallow copy: this one is shared
        await _respond(send, b"mutated")
    elif path == "/body":
        body, messages = await _read_body(receive)
        info = {"messages": messages, "sha256": hashlib.sha256(body).hexdigest(), "len": len(body)}
        await _respond(send, json.dumps(info).encode())
    elif path == "/pieces":
        while True:
            message = await receive()
            control.note("piece", message.get("body", b""), message.get("more_body", False))
            if not message.get("more_body", False):
                break
        await _respond(send, json.dumps({"sha256": "-"}).encode())
    elif path == "/echo":
        body, _ = await _read_body(receive)
        await _respond(send, body)
    elif path == "/stream":
        n, size = int(query.get("n", "3")), int(query.get("size", "5"))
        headers = [(b"content-type", b"text/plain")]
        if "cl" in query:
            headers.append((b"content-length", (query["cl"] or str(n * size)).encode()))
        status = int(query.get("status", "200"))
        pause = float(query.get("sleep", "0"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i in range(n):
            if pause:
                await asyncio.sleep(pause)
            piece = (b"%d" % (i % 10)) * size
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        control.note("stream.done", path)
    elif path == "/sleep":
        await asyncio.sleep(float(query.get("s", "0.01")))
        await _respond(send, b"slept")
    elif path.startswith("/p/"):
        name = path[3:]
        if "sleep" in query:
            await asyncio.sleep(float(query["sleep"]))
        body, _ = await _read_body(receive)
        await _respond(send, name.encode() + (b":" + body if body else b""))
    elif path.startswith("/gate/"):
        await control.gate(path[6:]).wait()
        await _respond(send, b"opened " + path[6:].encode())
    elif path.startswith("/read-after/"):
        await control.gate(path[12:]).wait()
        body, messages = await _read_body(receive)
        control.note("read", len(body), len(messages))
        info = {"sha256": hashlib.sha256(body).hexdigest(), "len": len(body)}
        await _respond(send, json.dumps(info).encode())
    elif path == "/no-read":
        if "sleep" in query:
            await asyncio.sleep(float(query["sleep"]))
        await _respond(send, b"not read", status=int(query.get("status", "200")))
    elif path == "/disconnect":
        control.note("waiting", path)
        while True:
            message = await receive()
            control.note("message", message["type"], message.get("body"), message.get("more_body"))
            if message["type"] == "http.disconnect":
                break
        control.note("disconnected", path)
    elif path == "/send-after-complete":
        # [what]: "body" (another body message) or "trailers" (the trailers message,
        # after a start that asked for them: the server offers no trailers extension)
        trailers = query.get("what") == "trailers"
        start = {"type": "http.response.start", "status": 200, "headers": []}
        if trailers:
            start["trailers"] = True
        await send(start)
        await send({"type": "http.response.body", "body": b"complete"})
        extra = (
            {"type": "http.response.trailers", "headers": [(b"x-t", b"1")]}
            if trailers
            else {"type": "http.response.body", "body": b"late"}
        )
        try:
            await send(extra)
        except RuntimeError as exc:
            control.note("late-send", str(exc))
            return
        control.note("late-send", None)
    elif path == "/after-response":
        await _respond(send, b"done")
        control.note("after-response", await receive())
    elif path == "/send-after-disconnect":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        control.note("streaming", path)
        while (await receive())["type"] != "http.disconnect":
            pass
        # The peer's EOF is all the server knows at first (a client that only shut down
        # its side still reads): send() raises once a write found the socket gone.
        try:
            for _ in range(200):
                await send({"type": "http.response.body", "body": b"more", "more_body": True})
                await asyncio.sleep(0.01)
        except BaseException as exc:
            control.note("send-raised", type(exc).__name__, isinstance(exc, OSError))
            raise
        control.note("send-raised", None, False)
    elif path == "/raise-before":
        if "sleep" in query:
            await asyncio.sleep(float(query["sleep"]))
        raise RuntimeError("the app failed before its response")
    elif path == "/raise-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("the app failed after http.response.start")
    elif path == "/raise-mid-stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        if "sleep" in query:
            await asyncio.sleep(float(query["sleep"]))
        raise RuntimeError("the app failed in the middle of its response")
    elif path == "/no-response":
        if "sleep" in query:
            await asyncio.sleep(float(query["sleep"]))
        return
    elif path == "/double-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.start", "status": 201, "headers": []})
        except RuntimeError as exc:
            control.note("refused", str(exc))
            raise
    elif path == "/body-before-start":
        try:
            await send({"type": "http.response.body", "body": b"x"})
        except RuntimeError as exc:
            control.note("refused", str(exc))
            raise
    elif path == "/start-after-body":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except RuntimeError as exc:
            control.note("refused", str(exc))
            raise
    elif path == "/big":
        total = int(float(query.get("mb", "8")) * (1 << 20))
        piece = int(query.get("piece", str(64 << 10)))
        chunk = b"x" * piece
        headers = [(b"content-length", b"%d" % total)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        while sent < total:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += piece
            control.progress["big"] = sent
        await send({"type": "http.response.body", "body": b""})
        control.note("big.done", sent)
    elif path.startswith("/status/"):
        status = int(path[8:])
        await send({"type": "http.response.start", "status": status, "headers": []})
        if "stream" in query:
            await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _respond(send, b"no route " + path.encode(), status=404)


# -- lifespan variants -----------------------------------------------------------------


async def no_lifespan_app(scope: Scope, receive: Any, send: Any) -> None:
    """An app that does not do lifespan: it raises on that scope, as many do."""
    if scope["type"] != "http":
        control.note("lifespan-refused", scope["type"])
        raise ValueError(f"unsupported scope type {scope['type']!r}")
    await _respond(send, b"no lifespan here")


async def startup_fails_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the database is unreachable"})
        return
    await _respond(send, b"never served")


async def startup_raises_app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("exploded during startup")
    await _respond(send, b"never served")


class FactoryMade:
    """An ASGI app as an instance whose __call__ is a coroutine function (--factory)."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send)
            return
        await _respond(send, self.greeting)


def factory() -> FactoryMade:
    return FactoryMade(b"made by the factory")
