"""TlsConnection without sockets: a client SSLObject over memory BIOs on the other side.

The ciphertext is fed whole and one byte at a time; what the inner protocol
sees, what the loop reads (busy, pending_head, should_close) and the
close_notify are checked exactly.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import pytest

from server.protocols import HANDSHAKE_HEAD
from server.protocols.echo import EchoConnection
from server.protocols.http.common import Counters
from server.protocols.tls import PLAIN_HTTP_REPLY, TlsConnection, make_context
from tests.support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def context(pki: Pki) -> ssl.SSLContext:
    return make_context(str(pki.server_cert), str(pki.server_key), alpn=["http/1.1"])


class Recorder:
    """An inner protocol that records what it is given and answers b"<n>:" + data."""

    needs_transport = False
    responding = False

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.should_close = False
        self.busy = False
        self.keepalive_stopped = False

    def receive_data(self, data: bytes) -> bytes:
        self.received.append(data)
        if not data:
            self.should_close = True
            return b""
        return b"%d:" % len(self.received) + data

    def pending_head(self) -> int:
        return 7

    def timed_out(self) -> bytes:
        self.should_close = True
        return b"late"

    def stop_keepalive(self) -> None:
        self.keepalive_stopped = True
        self.should_close = True

    def drain(self) -> None:
        self.should_close = True


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


class Client:
    def __init__(self, pki: Pki) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = pki.client_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )

    def handshake_step(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        return self.outgoing.read()

    def send(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.outgoing.read()

    def take(self, data: bytes) -> bytes:
        """Feed the server's bytes; return the plaintext they carry."""
        self.incoming.write(data)
        out = b""
        try:
            while chunk := self.obj.read(65536):
                out += chunk
        except ssl.SSLWantReadError:
            pass
        return out


def feed(conn: TlsConnection, data: bytes, bytewise: bool) -> bytes:
    if not bytewise:
        return conn.receive_data(data)
    return b"".join(conn.receive_data(data[i : i + 1]) for i in range(len(data)))


def handshake(conn: TlsConnection, client: Client, bytewise: bool = False) -> None:
    for _ in range(4):
        to_server = client.handshake_step()
        if to_server:
            client.incoming.write(feed(conn, to_server, bytewise))
    client.handshake_step()
    assert client.obj.version() is not None


@pytest.mark.parametrize("bytewise", [False, True])
def test_handshake_then_plaintext_both_ways(
    pki: Pki, context: ssl.SSLContext, bytewise: bool
) -> None:
    inner = Recorder()
    counters = Counters()
    conn = TlsConnection(inner, context, counters)
    assert (conn.busy, conn.pending_head(), conn.should_close) == (False, 0, False)
    client = Client(pki)
    hello = client.handshake_step()
    assert feed(conn, hello[:10], False) == b""  # not a whole record yet
    assert (conn.busy, conn.pending_head()) == (True, HANDSHAKE_HEAD)
    client.incoming.write(feed(conn, hello[10:], bytewise))
    handshake(conn, client, bytewise)
    assert client.obj.selected_alpn_protocol() == "http/1.1"
    assert conn.pending_head() == 7  # the inner protocol's now
    assert conn.busy is False
    out = feed(conn, client.send(b"hello") + client.send(b"world"), bytewise)
    if bytewise:  # one record completes per call
        assert inner.received == [b"hello", b"world"]
        assert client.take(out) == b"1:hello2:world"
    else:  # both records in one call: one receive_data, in order
        assert inner.received == [b"helloworld"]
        assert client.take(out) == b"1:helloworld"
    assert counters.client_errors == 0


def test_close_notify_is_the_peers_eof_and_is_answered(pki: Pki, context: ssl.SSLContext) -> None:
    inner = Recorder()
    conn = TlsConnection(inner, context, Counters())
    client = Client(pki)
    handshake(conn, client)
    client.obj.write(b"last")
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()  # its close_notify after the data, in one write
    out = conn.receive_data(client.outgoing.read())
    assert inner.received == [b"last", b""]
    assert conn.should_close
    client.incoming.write(out)
    assert client.obj.read(100) == b"1:last"
    client.obj.unwrap()  # our close_notify arrived: the shutdown completes
    assert conn.receive_data(b"") == b""  # the TCP EOF after it: nothing new
    assert inner.received == [b"last", b""]


def test_tcp_eof_without_close_notify_is_an_eof(pki: Pki, context: ssl.SSLContext) -> None:
    inner = Recorder()
    conn = TlsConnection(inner, context, Counters())
    client = Client(pki)
    handshake(conn, client)
    out = conn.receive_data(b"")
    assert inner.received == [b""]
    assert conn.should_close
    client.incoming.write(out)
    assert client.obj.read(100) == b""  # our close_notify


def test_timeouts_and_shutdown(pki: Pki, context: ssl.SSLContext) -> None:
    # During the handshake: no last words, close.
    conn = TlsConnection(Recorder(), context, Counters())
    conn.receive_data(Client(pki).handshake_step()[:20])
    assert conn.timed_out() == b""
    assert conn.should_close and not conn.busy
    # Open: the inner protocol's last words, encrypted, then close_notify.
    inner = Recorder()
    conn = TlsConnection(inner, context, Counters())
    client = Client(pki)
    handshake(conn, client)
    client.incoming.write(conn.timed_out())
    assert client.obj.read(100) == b"late"
    assert client.obj.read(100) == b""
    # stop_keepalive: close_notify through the transport, the loop closes next.
    inner = Recorder()
    conn = TlsConnection(inner, context, Counters())
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    client = Client(pki)
    handshake(conn, client)
    conn.stop_keepalive()
    assert inner.keepalive_stopped and conn.should_close
    (notify,) = transport.written
    client.incoming.write(notify)
    assert client.obj.read(100) == b""


def test_failed_handshakes(pki: Pki, context: ssl.SSLContext) -> None:
    counters = Counters()
    conn = TlsConnection(EchoConnection(), context, counters, PLAIN_HTTP_REPLY)
    assert conn.receive_data(b"GET / HTTP/1.1\r\n\r\n") == PLAIN_HTTP_REPLY
    assert conn.should_close and counters.client_errors == 1
    assert conn.receive_data(b"more") == b""  # DONE: nothing more is read
    conn = TlsConnection(EchoConnection(), context, counters)  # echo: no plain reply
    out = conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert out == b"" or out[:1] == b"\x15"
    conn = TlsConnection(EchoConnection(), context, counters)
    assert conn.receive_data(b"\x00" * 16)[:1] in (b"", b"\x15")
    assert conn.should_close and counters.client_errors == 3
    # A client that leaves mid-handshake: counted; one that sent nothing: not.
    conn = TlsConnection(EchoConnection(), context, counters)
    conn.receive_data(Client(pki).handshake_step()[:30])
    assert conn.receive_data(b"") == b"" and conn.should_close
    conn = TlsConnection(EchoConnection(), context, counters)
    assert conn.receive_data(b"") == b"" and conn.should_close
    assert counters.client_errors == 4


def test_a_bad_record_after_the_handshake(pki: Pki, context: ssl.SSLContext) -> None:
    counters = Counters()
    inner = Recorder()
    conn = TlsConnection(inner, context, counters)
    client = Client(pki)
    handshake(conn, client)
    record = bytearray(client.send(b"secret"))
    record[-1] ^= 1  # the tag no longer matches
    out = conn.receive_data(bytes(record))
    assert inner.received == []  # nothing unauthenticated reaches the inner protocol
    client.incoming.write(out)  # an alert (TLS 1.3 encrypts it, so the client reads it)
    with pytest.raises(ssl.SSLError) as info:
        client.obj.read(100)
    assert info.value.reason == "SSLV3_ALERT_BAD_RECORD_MAC", info.value
    assert conn.should_close and counters.client_errors == 1
