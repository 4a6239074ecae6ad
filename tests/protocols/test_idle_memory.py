"""An idle keep-alive connection costs under 1 KiB on either parser (tracemalloc).

Between requests a connection holds no parser state: H11Connection hands its
h11.Connection back to a pool, HttptoolsConnection parses each head with a
pooled llhttp parser it gives back at once.  What is left is the object's
own slots.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from server.apps.builtin import BuiltinApp
from server.protocols.http.common import Counters, HttpLimits
from tests.protocols import helpers

N = 2000
GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"


def per_connection(requests: bytes) -> float:
    app = BuiltinApp(dict)
    limits, counters = HttpLimits(), Counters()
    warm = helpers.HttpConnection(app, limits, counters)
    for _ in range(3):  # fill the pools, the response cache and the Date header
        assert warm.receive_data(requests)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        conns = [helpers.HttpConnection(app, limits, counters) for _ in range(N)]
        for conn in conns:
            assert conn.receive_data(requests).startswith(b"HTTP/1.1 200 OK\r\n")
            assert not conn.busy and not conn.should_close
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert counters.requests >= N
    return (after - before) / N


@pytest.mark.usefixtures("http_parser")
@pytest.mark.parametrize("requests", [GET, POST + GET + POST], ids=["get", "pipelined"])
def test_an_idle_keepalive_connection_costs_under_1_kib(requests: bytes) -> None:
    size = per_connection(requests)
    print(f"\n{helpers.HttpConnection.__name__}: {size:.0f} bytes per idle connection")
    assert size < 1024
