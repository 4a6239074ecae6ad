"""A real FastAPI app and a real Starlette app on ringserve, over sockets, on both
backends and both parsers: what they answer, byte for byte where it is ours to frame,
and that asyncio's machinery (timers, sockets, executors, timeouts, anyio through
httpx) works on the server's loop.  Lifespan state reaches the request scopes, and
startup and shutdown both ran."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.asgi import fastapi_apps
from tests.asgi.support import norm
from tests.backends.client import connect, exchange, request, wait_for

pytestmark = pytest.mark.timeout(60)

API = "tests.asgi.fastapi_apps:api"
STAR = "tests.asgi.fastapi_apps:star"


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"pong:" + self.rfile.readline())


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, int]]:
    """A TCP line server and an HTTP server on 127.0.0.1, for the apps to call."""
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threads = [threading.Thread(target=srv.serve_forever, daemon=True) for srv in (tcp, web)]
    for t in threads:
        t.start()
    try:
        yield {"tcp": tcp.server_address[1], "web": web.server_address[1]}
    finally:
        for srv in (tcp, web):
            srv.shutdown()
            srv.server_close()
        for t in threads:
            t.join(5)


def get_json(s: object, target: str) -> tuple[int, object]:
    (resp,) = exchange(s, request("GET", target))  # type: ignore[arg-type]
    return resp.status, json.loads(resp.body)


def test_fastapi_routes_params_json_and_422(make_server) -> None:
    with make_server(app=API) as srv, connect(srv.address) as s:
        assert get_json(s, "/items/7?q=x&limit=3") == (200, {"item_id": 7, "q": "x", "limit": 3})
        assert get_json(s, "/items/8") == (200, {"item_id": 8, "q": None, "limit": 10})
        status, body = get_json(s, "/items/notanint")
        assert status == 422
        assert body["detail"][0]["loc"] == ["path", "item_id"]  # type: ignore[index]
        data = json.dumps({"a": [1, 2]}).encode()
        (resp,) = exchange(
            s, request("POST", "/echo-json", data, headers=[("Content-Type", "application/json")])
        )
        assert (resp.status, json.loads(resp.body)) == (200, {"got": {"a": [1, 2]}})
        (resp,) = exchange(s, request("GET", "/nowhere"))
        assert (resp.status, resp.body) == (404, b'{"detail":"Not Found"}')
        # the connection was kept through all of it
        assert get_json(s, "/state") == (200, {"greeting": "hello from lifespan"})


def test_fastapi_streaming_response_is_chunked(make_server) -> None:
    with make_server(app=API) as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("GET", "/stream"))
    assert resp.status == 200
    assert resp.header("transfer-encoding") == b"chunked"
    assert resp.body == b"piece 0;piece 1;piece 2;"


def test_fastapi_background_task_and_lifespan_run(make_server) -> None:
    fastapi_apps.events.clear()
    with make_server(app=API) as srv:
        assert fastapi_apps.events == ["startup"]
        with connect(srv.address) as s:
            assert get_json(s, "/background") == (200, {"queued": "yes"})
            wait_for(lambda: "background ran" in fastapi_apps.events, what="the background task")
    assert fastapi_apps.events == ["startup", "background ran", "shutdown"]


def test_fastapi_handlers_use_asyncio_on_the_servers_loop(make_server, peers) -> None:
    with make_server(app=API) as srv, connect(srv.address) as s:
        status, slept = get_json(s, "/sleep")
        assert status == 200 and 0.05 <= slept["slept"] < 1  # type: ignore[index]
        assert get_json(s, f"/tcp?port={peers['tcp']}") == (200, {"reply": "pong:ping"})
        assert get_json(s, "/executor") == (200, {"other_thread": True})
        assert get_json(s, "/timeout") == (200, {"timed_out": True})
        assert get_json(s, f"/httpx?port={peers['web']}") == (
            200,
            {"status": 200, "body": "hello /hello"},
        )


def test_starlette_app_exact_bytes_body_and_state(make_server) -> None:
    with make_server(app=STAR) as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("GET", "/hi/there"))
        assert norm(resp.raw) == (
            b"HTTP/1.1 200 OK\r\n"
            b"content-length: 15\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"server: ringserve\r\n"
            b"date: <date>\r\n\r\n"
            b"starlette there"
        )
        (resp,) = exchange(s, request("POST", "/len", b"x" * 1000))
        assert json.loads(resp.body) == {"len": 1000, "state": "hello from lifespan"}
