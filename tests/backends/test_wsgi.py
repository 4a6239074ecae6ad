"""WSGI apps (tests/backends/wsgi_apps.py) served over real sockets, on both backends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.backends import wsgi_apps
from tests.backends.client import (
    HttpReader,
    connect,
    exchange,
    pattern,
    request,
    sha256,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=[0, 4], ids=["inline", "4-threads"])
def make_server(make_http_server: Any, request: pytest.FixtureRequest) -> Any:
    """Every test here is HTTP: it runs with each parser as well as on each backend,
    and with the app inline and in a pool of threads (--wsgi-threads), where every
    byte must be the same."""
    threads = request.param

    def factory(**overrides: Any) -> Any:
        return make_http_server(wsgi_threads=threads, **overrides)

    factory.threads = threads  # type: ignore[attr-defined]
    return factory


PLAIN = "tests.backends.wsgi_apps:app"
FLASK = "tests.backends.wsgi_apps:flask_app"


def test_plain_wsgi_hello_exact(make_server) -> None:
    with make_server(app=PLAIN) as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("GET", "/"))
    assert resp.normalized_head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 28\r\n"
        b"server: ringserve\r\n"
        b"date: <date>\r\n\r\n"
    )
    assert resp.body == b"Hello from a plain WSGI app\n"


def test_plain_wsgi_environ(make_server) -> None:
    with make_server(app=PLAIN) as srv, connect(srv.address) as s:
        (resp,) = exchange(
            s,
            request(
                "POST",
                "/environ?a=1&b=%20x",
                b"ignored",
                [("Content-Type", "text/x-mine"), ("X-Twice", "one"), ("X-Twice", "two")],
            ),
        )
        port = srv.port
    env = json.loads(resp.body)
    assert resp.header("content-length") == b"%d" % len(resp.body)  # added by the server
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20x"
    assert env["CONTENT_TYPE"] == "text/x-mine"
    assert env["CONTENT_LENGTH"] == "7"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.multithread"] is (make_server.threads > 1)  # PEP 3333
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["headers"]["HTTP_HOST"] == "test"
    assert env["headers"]["HTTP_X_TWICE"] == "one,two"
    assert "HTTP_CONTENT_TYPE" not in env["headers"]
    assert "HTTP_CONTENT_LENGTH" not in env["headers"]
    # PEP 3333: SERVER_PORT is the port the request came in on, not the configured 0.
    assert env["SERVER_PORT"] == str(port)


def test_plain_wsgi_path_is_percent_decoded(make_server) -> None:
    with make_server(app=PLAIN) as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("GET", "/environ/a%20b%2Fc%C3%A9?x=%2F"))
    env = json.loads(resp.body)
    # PEP 3333: decoded bytes, as a latin-1 "native string"; the query string stays raw.
    assert env["PATH_INFO"] == "/environ/a b/c\xc3\xa9"
    assert env["QUERY_STRING"] == "x=%2F"


def test_plain_wsgi_echo_large_body(make_server) -> None:
    body = pattern(500_000, 5)
    with make_server(app=PLAIN) as srv, connect(srv.address) as s:
        (resp,) = exchange(s, request("POST", "/echo", body))
    assert resp.status == 200
    assert sha256(resp.body) == sha256(body)


def test_plain_wsgi_streamed_iterable_write_and_errors(make_server) -> None:
    wsgi_apps.closed.clear()
    with make_server(app=PLAIN) as srv, connect(srv.address) as s:
        stream, write, boom, missing, after = exchange(
            s,
            request("GET", "/stream")
            + request("GET", "/write")
            + request("GET", "/boom")
            + request("GET", "/missing")
            + request("GET", "/"),
            5,
        )
        stats = srv.stats()
    assert (stream.status, stream.reason, stream.body) == (201, b"Created", b"one,two,three")
    assert stream.header("x-custom") == b"yes"
    assert stream.header("content-length") == b"13"
    assert wsgi_apps.closed == ["streamed"]
    assert write.body == b"written and returned"
    assert (boom.status, boom.body) == (500, b"500 Internal Server Error\n")
    assert (missing.status, missing.body) == (404, b"no such page: /missing")
    assert after.status == 200  # the connection survived the app's exception
    assert (stats["app_errors"], stats["client_errors"]) == (1, 0)
    assert stats["requests"] == 5


def test_flask_app(make_server) -> None:
    pytest.importorskip("flask")
    with make_server(app=FLASK) as srv, connect(srv.address) as s:
        reader = HttpReader(s)
        s.sendall(request("GET", "/"))
        resp = reader.read_response()
        assert (resp.status, resp.body) == (200, b"Hello from Flask\n")
        assert resp.header("content-type") == b"text/html; charset=utf-8"

        s.sendall(request("GET", "/hello/w%C3%B6rld?x=1", headers=[("User-Agent", "tester/1")]))
        resp = reader.read_response()
        assert resp.status == 200
        assert json.loads(resp.body) == {"name": "wörld", "query": {"x": "1"}, "agent": "tester/1"}

        payload = json.dumps({"numbers": [1, 2, 3.5]}).encode()
        s.sendall(request("POST", "/json", payload, [("Content-Type", "application/json")]))
        resp = reader.read_response()
        assert (resp.status, json.loads(resp.body)) == (200, {"sum": 6.5})

        body = pattern(200_000, 9)
        s.sendall(request("POST", "/echo", body))
        resp = reader.read_response()
        assert (resp.status, sha256(resp.body)) == (200, sha256(body))

        s.sendall(request("GET", "/nope") + request("POST", "/"))
        r404 = reader.read_response()
        r405 = reader.read_response()
        assert r404.status == 404
        assert r405.status == 405
        assert set(r405.header("allow").split(b", ")) == {b"GET", b"HEAD", b"OPTIONS"}

        s.sendall(request("GET", "/boom", headers=[("Connection", "close")]))
        resp = reader.read_response()
        assert resp.status == 500
        reader.assert_eof()
        assert srv.stats()["accepted"] == 1


def test_flask_app_many_clients(make_server) -> None:
    pytest.importorskip("flask")
    with make_server(app=FLASK) as srv:
        socks = [connect(srv.address) for _ in range(20)]
        try:
            for i, s in enumerate(socks):
                s.sendall(request("GET", f"/hello/c{i}"))
            for i, s in enumerate(socks):
                resp = HttpReader(s).read_response()
                assert json.loads(resp.body)["name"] == f"c{i}"
        finally:
            for s in socks:
                s.close()


def test_a_blocking_app_stalls_only_its_own_request_in_a_thread_pool(make_server) -> None:
    """--wsgi-threads: a request that blocks its thread for 1.5 s does not hold up a
    request on another connection; inline, the whole loop waits for it."""
    import threading
    import time

    with make_server(app="tests.backends.wsgi_apps:sleepy_app") as srv:
        slow_done: list[float] = []

        def slow() -> None:
            with connect(srv.address) as s:
                (resp,) = exchange(s, request("GET", "/slow"))
                assert resp.body == b"/slow"
                slow_done.append(time.monotonic())

        started = time.monotonic()
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)  # the slow request is in its thread (or holds the loop)
        with connect(srv.address) as s:
            (resp,) = exchange(s, request("GET", "/fast"))
        fast_took = time.monotonic() - started
        t.join(10)
    assert resp.body == b"/fast"
    assert slow_done, "the slow request was answered"
    if make_server.threads:
        assert fast_took < 1.2, fast_took  # it did not wait for the slow one
        assert slow_done[0] - started >= 1.5
    else:
        assert fast_took >= 1.5, fast_took  # inline: it waited
