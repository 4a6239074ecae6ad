"""EchoConnection: every byte back, unchanged, as the very object given."""

from __future__ import annotations

import pytest

from server.protocols.echo import EchoConnection
from tests.protocols.helpers import chunkings

DATA = b"hello\r\n\x00\xff" + bytes(range(256)) + b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(("name", "chunks"), list(chunkings(DATA, max_cuts=50)))
def test_echo_returns_every_chunk_unchanged_and_the_same_object(
    name: str, chunks: list[bytes]
) -> None:
    conn = EchoConnection()
    outputs = []
    for chunk in chunks:
        out = conn.receive_data(chunk)
        assert out is chunk  # no copy
        outputs.append(out)
        assert conn.should_close is False
        assert conn.busy is False
    assert b"".join(outputs) == DATA


def test_eof_returns_empty_and_asks_to_close() -> None:
    conn = EchoConnection()
    assert conn.receive_data(b"abc") == b"abc"
    assert conn.should_close is False
    eof = b""
    assert conn.receive_data(eof) is eof
    assert conn.should_close is True
    assert conn.busy is False


def test_eof_first_thing() -> None:
    conn = EchoConnection()
    assert conn.receive_data(b"") == b""
    assert conn.should_close is True


def test_timed_out_says_nothing_and_closes() -> None:
    conn = EchoConnection()
    conn.receive_data(b"partial")
    assert conn.timed_out() == b""
    assert conn.should_close is True
    assert conn.busy is False


def test_stop_keepalive_closes_at_once() -> None:
    conn = EchoConnection()
    assert conn.should_close is False
    conn.stop_keepalive()
    assert conn.should_close is True
    assert conn.busy is False


def test_drain_closes_at_once() -> None:
    """A byte stream has no request to wait for: a retiring worker closes it as a stop does."""
    conn = EchoConnection()
    conn.drain()
    assert conn.should_close is True


def test_fresh_connection_state() -> None:
    conn = EchoConnection()
    assert conn.should_close is False
    assert conn.busy is False
    # busy is a class constant: an echo connection never holds an unanswered request.
    assert EchoConnection.busy is False
    with pytest.raises(AttributeError):
        conn.extra = 1  # type: ignore[attr-defined]  # __slots__: no per-connection dict


def test_pending_head_is_always_zero() -> None:
    """Echo has no request heads: --header-timeout never applies."""
    conn = EchoConnection()
    assert conn.pending_head() == 0
    assert conn.receive_data(b"GET / HTT") == b"GET / HTT"
    assert conn.pending_head() == 0
