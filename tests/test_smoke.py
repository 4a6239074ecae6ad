"""The harness itself: both backends start, answer and tear down cleanly."""

from __future__ import annotations

import socket

from tests.conftest import ServerThread


def test_http_hello_and_clean_teardown(make_server) -> None:
    with make_server(protocol="http") as srv:
        srv: ServerThread
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert body == b"Hello from ringserve\n"
