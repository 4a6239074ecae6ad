"""Idle keep-alive connections hand their h11 state to a pool; reuse is invisible."""

from __future__ import annotations

from server.apps.builtin import BuiltinApp
from server.protocols.http import h11_impl as http
from server.protocols.http.common import Counters, HttpLimits
from server.protocols.http.h11_impl import H11Connection as HttpConnection

LIMITS = HttpLimits()
GET_11 = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
GET_10 = b"GET / HTTP/1.0\r\n\r\n"


def make() -> HttpConnection:
    return HttpConnection(BuiltinApp(dict), LIMITS, Counters())


def pool() -> list:
    return http._h11_pools.setdefault(LIMITS.max_header_bytes, [])


POST_HEAD = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n"


def test_idle_connection_holds_no_h11_state_and_busy_one_does() -> None:
    pool().clear()
    conn = make()
    assert conn._conn is None
    conn.receive_data(b"POST /echo HT")  # a partial head is only bytes, framed before h11
    assert conn._conn is None and conn.busy
    conn.receive_data(POST_HEAD[13:])  # a request in progress keeps its state
    assert conn._conn is not None and conn.busy
    held = conn._conn
    conn.receive_data(b"hi")
    assert conn._conn is None and not conn.busy and not conn.should_close
    assert pool() == [held]


def test_a_reused_h11_object_answers_exactly_like_a_fresh_one() -> None:
    pool().clear()
    fresh = make().receive_data(GET_11)
    donor = make()
    assert donor.receive_data(GET_11) == fresh
    (pooled,) = pool()
    taker = make()
    assert taker.receive_data(GET_11) == fresh
    assert pool() == [pooled]  # taken and given back again


def test_no_http_version_leaks_from_a_previous_client() -> None:
    pool().clear()
    old = make()
    old.receive_data(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert pool()[0].their_http_version is None  # reset when pooled
    # An HTTP/1.0 client on the reused object still gets a closing response.
    new = make()
    out = new.receive_data(GET_10)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert new.should_close
    # A malformed request on a reused object gets its 400 and a close.
    make().receive_data(GET_11)
    bad = make()
    assert bad.receive_data(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert bad.should_close


def test_the_pool_is_bounded() -> None:
    pool().clear()
    conns = [make() for _ in range(http.H11_POOL_MAX + 10)]
    for c in conns:
        c.receive_data(POST_HEAD)  # all take state at once
    for c in conns:
        c.receive_data(b"hi")
    assert len(pool()) == http.H11_POOL_MAX
