"""Cancellation and stopping with ASGI apps in flight, on both backends and parsers."""

from __future__ import annotations

import socket

import pytest

from tests.asgi.apps import Control
from tests.asgi.support import read_expected, whole
from tests.backends.client import connect, request, wait_for

pytestmark = pytest.mark.timeout(60)


def test_a_stop_lets_requests_in_flight_finish_then_the_server_stops(
    make_server, fresh_control: Control
) -> None:
    """Server.request_stop (what SIGTERM does) while three apps wait: no new
    connection is taken, each app's response goes out whole and says it closes, each
    connection closes after it, and the server stops."""
    with make_server() as srv:
        socks = [connect(srv.address) for _ in range(3)]
        try:
            gates = [fresh_control.gate(f"g{i}") for i in range(3)]
            for i, s in enumerate(socks):
                s.sendall(request("GET", f"/gate/g{i}"))
            for gate in gates:
                assert gate.reached.wait(10)
            srv.server.request_stop()
            wait_for(lambda: srv.server.dispatcher.stopping, what="the stop")
            with pytest.raises(OSError):  # the listener is closed
                socket.create_connection(srv.address, timeout=2).close()
            for gate in gates:
                gate.open()
            for i, s in enumerate(socks):
                expected = whole(b"HTTP/1.1 200 OK", b"opened g%d" % i, close=True)
                assert read_expected(s, expected) == expected
                assert s.recv(10) == b""
        finally:
            for s in socks:
                s.close()
        srv._thread.join(10)
        assert not srv._thread.is_alive(), "the server did not stop after its requests"
        assert srv.final_stats["requests"] == 3


@pytest.mark.parametrize("where", ["receive", "stream"])
def test_a_client_leaving_mid_request_ends_the_apps_task(
    make_server, fresh_control: Control, where: str
) -> None:
    """The client goes while the app waits in receive() (a body half sent) or streams:
    receive() says http.disconnect / send() raises, and the app's task ends (the
    teardown checks that no task is left)."""
    with make_server() as srv:
        with connect(srv.address) as s:
            if where == "receive":
                s.sendall(b"POST /disconnect HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
                wait_for(lambda: fresh_control.seen("message"), what="the first message")
            else:
                s.sendall(request("GET", "/send-after-disconnect"))
                wait_for(lambda: fresh_control.seen("streaming"), what="the stream")
        if where == "receive":
            wait_for(lambda: fresh_control.seen("disconnected"), what="http.disconnect")
        else:
            wait_for(lambda: fresh_control.seen("send-raised"), what="send() raising")
            assert fresh_control.seen("send-raised") == [("ClientDisconnected", True)]
        wait_for(lambda: not srv.app_tasks(), what="the app's task to end")
