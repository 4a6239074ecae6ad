"""The example apps on our server: every backend and parser, each route as documented."""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any

import pytest

from examples import asgi_hello

pytest.importorskip("fastapi", reason="the FastAPI example needs pip install -e '.[fastapi]'")


def _call(address: tuple[str, int], method: str, path: str, body: Any = None) -> Any:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type"), resp.read()
    finally:
        conn.close()


def test_fastapi_example(make_http_server: Any) -> None:
    with make_http_server(app="examples.fastapi_app:app") as srv:
        got = _call(srv.address, "GET", "/items/42?q=hello")
        assert got == (200, "application/json", b'{"item_id":42,"q":"hello"}')
        assert json.loads(_call(srv.address, "GET", "/items/7")[2]) == {"item_id": 7, "q": None}
        assert _call(srv.address, "GET", "/items/x")[0] == 422
        item = {"name": "pen", "price": 1.5, "quantity": 3, "tags": ["new"]}
        status, ctype, body = _call(srv.address, "POST", "/items", item)
        assert (status, ctype, json.loads(body)) == (
            201,
            "application/json",
            {**item, "total": 4.5},
        )
        assert _call(srv.address, "POST", "/items", {"name": "", "price": -1})[0] == 422
        status, ctype, body = _call(srv.address, "GET", "/items?count=3")
        assert (status, ctype) == (200, "application/x-ndjson")
        lines = [json.loads(line) for line in body.splitlines()]
        assert lines == [{"item_id": i, "name": f"item {i}"} for i in range(3)]
        # The lifespan's state reached the request.
        assert _call(srv.address, "GET", "/")[2] == b'{"message":"Hello from ringserve"}'


def test_fastapi_example_factory(make_server: Any) -> None:
    with make_server(app="examples.fastapi_app:create_app", factory=True, lifespan="on") as srv:
        assert _call(srv.address, "GET", "/items/1?q=a")[2] == b'{"item_id":1,"q":"a"}'


def test_asgi_hello_takes_part_in_lifespan() -> None:
    """So it starts under --lifespan on (and auto), as on uvicorn."""
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asgi_hello.app({"type": "lifespan"}, receive, send))
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


def test_asgi_hello_under_lifespan_on(make_http_server: Any) -> None:
    with make_http_server(app="examples.asgi_hello:app", lifespan="on") as srv:
        assert _call(srv.address, "GET", "/") == (
            200, "text/plain; charset=utf-8", b"Hello from ringserve\n"
        )  # fmt: skip
