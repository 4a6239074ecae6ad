"""TLS end to end: real clients (Python's ssl, curl, openssl s_client) on both
backends and both parsers, certificates made at test time (`tests.support.tls`).

Every server here runs in `serve_in_thread`, whose teardown asserts that no
connection, op or fd is left.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from server.protocols.tls import PLAIN_HTTP_REPLY
from tests.backends.client import HELLO, HttpReader, connect, recv_until_eof, request, wait_for
from tests.support.tls import Pki, make_pki, poll_plaintext

GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_options(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"ssl_certfile": str(pki.server_cert), "ssl_keyfile": str(pki.server_key), **extra}


class TlsClient:
    """A blocking TLS client socket (Python's ssl) to 127.0.0.1."""

    def __init__(self, address: tuple[str, int], ctx: ssl.SSLContext, timeout: float = 10) -> None:
        raw = connect(address, timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")

    def __enter__(self) -> ssl.SSLSocket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.fixture
def tls_server(make_http_server: Callable[..., Any], pki: Pki) -> Callable[..., Any]:
    def factory(**overrides: Any) -> Any:
        return make_http_server(**tls_options(pki, **overrides))

    return factory


def read_to_eof(sock: ssl.SSLSocket) -> bytes:
    """Bytes until the server's close_notify (or EOF)."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


# -- requests over TLS ---------------------------------------------------------------


def test_get_over_tls_exact_response_and_keepalive(tls_server: Any, pki: Pki) -> None:
    with tls_server() as srv, TlsClient(srv.address, pki.client_context()) as sock:
        assert sock.version() in ("TLSv1.3", "TLSv1.2")
        assert sock.selected_alpn_protocol() == "http/1.1"
        reader = HttpReader(sock)  # type: ignore[arg-type]
        for _ in range(3):  # keep-alive: one connection, one handshake
            sock.sendall(GET)
            resp = reader.read_response()
            assert (resp.status, resp.body) == (200, HELLO)
            assert resp.header("content-length") == b"%d" % len(HELLO)
            assert not resp.closes
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        resp = reader.read_response()
        assert (resp.status, resp.body, resp.closes) == (200, HELLO, True)
        # Then the server's close_notify: a clean TLS EOF, nothing after it.
        assert read_to_eof(sock) == b""
        assert srv.stats()["requests"] == 4
        assert srv.stats()["client_errors"] == 0


def test_pipelined_requests_in_one_record(tls_server: Any, pki: Pki) -> None:
    with tls_server() as srv, TlsClient(srv.address, pki.client_context()) as sock:
        body = b"pipelined"
        post = b"POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        sock.sendall(GET + post + GET)  # one write: one TLS record
        reader = HttpReader(sock)  # type: ignore[arg-type]
        bodies = [reader.read_response().body for _ in range(3)]
        assert bodies == [HELLO, body, HELLO]
        assert srv.stats()["requests"] == 3


def test_large_request_and_response_bodies(tls_server: Any, pki: Pki) -> None:
    """5 MB each way: the body crosses hundreds of records and the backend's
    output marks (the response is 5 MB of ciphertext queued at once)."""
    size = 5 << 20
    payload = os.urandom(size)
    with (
        tls_server(max_body_bytes=8 << 20) as srv,
        TlsClient(srv.address, pki.client_context(), timeout=30) as sock,
    ):
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: l\r\nContent-Length: %d\r\n\r\n" % size)
        sock.sendall(payload)
        resp = HttpReader(sock).read_response(timeout=60)  # type: ignore[arg-type]
        assert resp.status == 200
        assert len(resp.body) == size
        assert hashlib.sha256(resp.body).digest() == hashlib.sha256(payload).digest()


def test_curl_with_cacert(tls_server: Any, pki: Pki) -> None:
    with tls_server() as srv:
        url = f"https://localhost:{srv.port}/"
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(pki.ca), "-w", "\n%{http_version} %{http_code}", url],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert out.stdout == HELLO + b"\n1.1 200"
        # Without our CA curl refuses the certificate: that client's failure only.
        bad = subprocess.run(["curl", "-sS", url], capture_output=True, timeout=30)
        assert bad.returncode == 60, bad  # CURLE_PEER_FAILED_VERIFICATION
        good = subprocess.run(
            ["curl", "-sS", "--cacert", str(pki.ca), url], capture_output=True, timeout=30
        )
        assert good.stdout == HELLO


def test_openssl_s_client_handshake_and_alpn(make_server: Callable[..., Any], pki: Pki) -> None:
    with make_server(**tls_options(pki)) as srv:

        def s_client(alpn: str) -> str:
            out = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}",
                 "-servername", "localhost", "-CAfile", str(pki.ca), "-alpn", alpn,
                 "-ign_eof"],  # wait for the response (and our close) after stdin's end
                input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                capture_output=True,
                timeout=30,
            )  # fmt: skip
            return out.stdout.decode("latin-1")

        text = s_client("h2,http/1.1")
        assert "ALPN protocol: http/1.1" in text
        assert "Verify return code: 0 (ok)" in text
        assert "HTTP/1.1 200 OK" in text and HELLO.decode() in text
        # Only http/1.1 is offered: a client that wants h2 alone gets no ALPN
        # (the handshake still completes; RFC 7301 lets the server decline).
        assert "No ALPN negotiated" in s_client("h2")


# -- client certificates ----------------------------------------------------------


def test_client_certificate_required(tls_server: Any, pki: Pki) -> None:
    with tls_server(ssl_cert_reqs=2, ssl_ca_certs=str(pki.ca)) as srv:
        with TlsClient(srv.address, pki.client_context(cert=True)) as sock:
            sock.sendall(GET)
            assert HttpReader(sock).read_response().body == HELLO  # type: ignore[arg-type]
        for ctx in (pki.client_context(), pki.client_context(stranger=True)):
            # TLS 1.3: the client's side of the handshake completes before the
            # server has checked its certificate; the refusal is the alert it reads.
            with pytest.raises(ssl.SSLError) as info, TlsClient(srv.address, ctx) as sock:
                sock.sendall(GET)
                sock.recv(65536)
            assert info.value.reason in (
                "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                "TLSV1_ALERT_UNKNOWN_CA",
            ), info.value
        # The refused ones cost nothing to the others.
        with TlsClient(srv.address, pki.client_context(cert=True)) as sock:
            sock.sendall(GET)
            assert HttpReader(sock).read_response().body == HELLO  # type: ignore[arg-type]
        wait_for(lambda: srv.stats()["open_connections"] == 0, timeout=10)
        assert srv.stats()["client_errors"] == 2
        assert srv.stats()["requests"] == 2


def test_client_certificate_optional(tls_server: Any, pki: Pki) -> None:
    """--ssl-cert-reqs 1: no certificate is fine, a bad one is refused."""
    with tls_server(ssl_cert_reqs=1, ssl_ca_certs=str(pki.ca)) as srv:
        for ctx in (pki.client_context(), pki.client_context(cert=True)):
            with TlsClient(srv.address, ctx) as sock:
                sock.sendall(GET)
                assert HttpReader(sock).read_response().body == HELLO  # type: ignore[arg-type]
        with (
            pytest.raises(ssl.SSLError),
            TlsClient(srv.address, pki.client_context(stranger=True)) as sock,
        ):
            sock.sendall(GET)
            sock.recv(65536)
        wait_for(lambda: srv.stats()["client_errors"] == 1, timeout=10)


# -- bad handshakes ----------------------------------------------------------------


def test_plain_http_gets_a_clear_text_400(tls_server: Any, pki: Pki) -> None:
    with tls_server() as srv:
        with connect(srv.address) as sock:
            sock.sendall(GET)
            assert recv_until_eof(sock) == PLAIN_HTTP_REPLY
        assert PLAIN_HTTP_REPLY.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert PLAIN_HTTP_REPLY.endswith(b"\r\n\r\nThe plain HTTP request was sent to HTTPS port\n")
        with TlsClient(srv.address, pki.client_context()) as sock:
            sock.sendall(GET)
            assert HttpReader(sock).read_response().body == HELLO  # type: ignore[arg-type]
        assert srv.stats()["client_errors"] == 1


def test_garbage_closes_that_connection_only(tls_server: Any, pki: Pki) -> None:
    with tls_server() as srv, TlsClient(srv.address, pki.client_context()) as good:
        good.sendall(GET)
        reader = HttpReader(good)  # type: ignore[arg-type]
        assert reader.read_response().body == HELLO
        for junk in (b"\x00" * 64, b"hello there, server\r\n", b"\x16\x03\x01\x00\x05hello"):
            with connect(srv.address) as sock:
                sock.sendall(junk)
                got = recv_until_eof(sock)
            # At most a TLS alert record (content type 21), never plaintext.
            assert got == b"" or got[:1] == b"\x15", got
        wait_for(lambda: srv.stats()["client_errors"] == 3, timeout=10)
        good.sendall(GET)  # the connection opened before is still served
        assert reader.read_response().body == HELLO


def _client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("part", ["half", "whole"])
def test_stalled_handshake_is_cut_after_the_handshake_timeout(
    make_server: Callable[..., Any], pki: Pki, part: str
) -> None:
    """A ClientHello (half of one, or one and then silence) does not hold a
    connection past --timeout-handshake, however long the other timeouts are."""
    hello = _client_hello()
    with make_server(
        **tls_options(pki),
        timeout_handshake=0.8,
        timeout_keep_alive=30.0,
        timeout_read=30.0,
        timeout_header=30.0,
    ) as srv:
        with connect(srv.address) as sock:
            sock.sendall(hello[: len(hello) // 2] if part == "half" else hello)
            t0 = time.monotonic()
            got = recv_until_eof(sock)
            elapsed = time.monotonic() - t0
        if part == "half":
            assert got == b""
        else:
            assert got[:1] == b"\x16"  # the ServerHello flight, then the close
        # Cut between the timeout and the timeout plus two sweeps (0.2 s each).
        assert 0.8 <= elapsed < 2.5, elapsed
        assert srv.stats()["timeouts"] == 1


def test_silent_tls_connection_is_an_idle_one(make_server: Callable[..., Any], pki: Pki) -> None:
    """Nothing sent at all: the keep-alive timeout closes it, as without TLS."""
    with make_server(
        **tls_options(pki), timeout_handshake=30.0, timeout_keep_alive=0.6, timeout_read=30.0
    ) as srv:
        with connect(srv.address) as sock:
            t0 = time.monotonic()
            assert recv_until_eof(sock) == b""
            assert 0.5 <= time.monotonic() - t0 < 5
        assert srv.stats()["client_errors"] == 0


def test_slowloris_inside_tls_gets_408(tls_server: Any, pki: Pki) -> None:
    """The header timeout still applies inside TLS: a head trickled one record
    at a time gets 408, then the close."""
    with tls_server(timeout_header=1.0, timeout_read=30.0, timeout_keep_alive=30.0) as srv:
        with TlsClient(srv.address, pki.client_context()) as sock:
            # One thread: send a byte (a record), wait 0.1 s for an answer, again.
            head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 1000
            t0 = time.monotonic()
            sent = 0
            got: bytes | None = None
            while sent < len(head) and (got := poll_plaintext(sock, 0.1)) is None:
                sock.send(head[sent : sent + 1])
                sent += 1
            elapsed = time.monotonic() - t0
            reader = HttpReader(sock)  # type: ignore[arg-type]
            reader.buf = got or b""
            resp = reader.read_response(timeout=10)
            assert (resp.status, resp.closes) == (408, True)
            assert 1.0 <= elapsed < 3.0, elapsed
            assert sent >= 8  # it kept sending all along
        assert srv.stats()["timeouts"] == 1


def test_peer_leaving_mid_handshake_costs_nothing_else(tls_server: Any, pki: Pki) -> None:
    hello = _client_hello()
    with tls_server() as srv:
        for _ in range(3):
            with connect(srv.address) as sock:
                sock.sendall(hello[:40])
        with TlsClient(srv.address, pki.client_context()) as sock:
            sock.sendall(GET)
            assert HttpReader(sock).read_response().body == HELLO  # type: ignore[arg-type]
        wait_for(lambda: srv.stats()["client_errors"] == 3, timeout=10)


# -- other protocols and apps --------------------------------------------------------


def test_echo_over_tls(make_server: Callable[..., Any], pki: Pki) -> None:
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["echo"])
    with (
        make_server(protocol="echo", **tls_options(pki)) as srv,
        TlsClient(srv.address, ctx) as sock,
    ):
        assert sock.selected_alpn_protocol() is None  # ALPN is offered for HTTP only
        data = os.urandom(200_000)
        got = b""
        for i in range(0, len(data), 20_000):  # one thread: an SSLSocket is not shared
            sock.sendall(data[i : i + 20_000])
            while len(got) < min(len(data), i + 20_000):
                got += sock.recv(65536)
        assert got == data
        # A TCP EOF without close_notify (SSLSocket.shutdown drops the TLS layer): the
        # server's answer is its close_notify, one TLS 1.3 record (5 + 2 + 1 + 16 bytes,
        # read raw now), then its close.
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(100):
            rest += chunk
        assert rest[:3] == b"\x17\x03\x03" and len(rest) == 24, rest


def test_asgi_over_tls_scheme_and_body(
    backend_name: str, http_parser: str, pki: Pki, make_http_server: Callable[..., Any]
) -> None:
    body = b"x" * 100_000
    with (
        make_http_server(app="tests.support.apps:asgi_scheme", **tls_options(pki)) as srv,
        TlsClient(srv.address, pki.client_context()) as sock,
    ):
        reader = HttpReader(sock)  # type: ignore[arg-type]
        for _ in range(2):
            sock.sendall(b"POST / HTTP/1.1\r\nHost: l\r\nContent-Length: %d\r\n\r\n" % len(body))
            sock.sendall(body)
            assert reader.read_response().body == b"https " + body
        sock.sendall(GET + GET)
        assert [reader.read_response().body for _ in range(2)] == [b"https "] * 2


@pytest.mark.parametrize("threads", [0, 2])
def test_wsgi_over_tls_url_scheme(
    make_http_server: Callable[..., Any], pki: Pki, threads: int
) -> None:
    with (
        make_http_server(
            app="tests.support.apps:wsgi_scheme", wsgi_threads=threads, **tls_options(pki)
        ) as srv,
        TlsClient(srv.address, pki.client_context()) as sock,
    ):
        sock.sendall(GET + GET)
        reader = HttpReader(sock)  # type: ignore[arg-type]
        assert [reader.read_response().body for _ in range(2)] == [b"https on"] * 2


def test_without_tls_the_scheme_is_http(make_http_server: Callable[..., Any]) -> None:
    with make_http_server(app="tests.support.apps:wsgi_scheme") as srv, connect(srv.address) as s:
        s.sendall(GET)
        assert HttpReader(s).read_response().body == b"http None"


def test_encrypted_key_with_its_password(make_server: Callable[..., Any], pki: Pki) -> None:
    from tests.support.tls import PASSWORD

    with (
        make_server(
            ssl_certfile=str(pki.server_cert),
            ssl_keyfile=str(pki.server_key_encrypted),
            ssl_keyfile_password=PASSWORD,
        ) as srv,
        TlsClient(srv.address, pki.client_context()) as sock,
    ):
        sock.sendall(GET)
        assert HttpReader(sock).read_response().body == HELLO  # type: ignore[arg-type]


def test_tls12_only(make_server: Callable[..., Any], pki: Pki) -> None:
    with (
        make_server(**tls_options(pki, ssl_version=5)) as srv,
        TlsClient(srv.address, pki.client_context()) as sock,
    ):
        assert sock.version() == "TLSv1.2"
        sock.sendall(GET)
        assert HttpReader(sock).read_response().body == HELLO  # type: ignore[arg-type]


# -- TLS behind (or without) a trusted proxy ----------------------------------------

WHO = "tests.backends.observe_apps:"


@pytest.mark.parametrize(
    "app",
    [
        {"app": WHO + "wsgi_who"},
        {"app": WHO + "wsgi_who", "wsgi_threads": 2},
        {"app": WHO + "asgi_who", "lifespan": "off"},
    ],
    ids=["wsgi", "wsgi-threads", "asgi"],
)
@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
def test_the_listeners_https_holds_unless_a_trusted_proxy_says_otherwise(
    tls_server: Any, pki: Pki, app: dict[str, Any], trusted: bool
) -> None:
    allow = "127.0.0.1" if trusted else "10.0.0.0/8"
    with (
        tls_server(proxy_headers=True, forwarded_allow_ips=allow, **app) as srv,
        TlsClient(srv.address, pki.client_context()) as sock,
    ):
        port = sock.getsockname()[1]
        reader = HttpReader(sock)  # type: ignore[arg-type]
        answers = []
        for headers in (
            [],
            [("X-Forwarded-Proto", "http")],
            [("X-Forwarded-For", "203.0.113.7")],
        ):
            sock.sendall(request("GET", "/who", headers=headers))
            resp = reader.read_response()
            assert resp.status == 200
            answers.append(resp.body.decode())
    if trusted:  # no proto header: the listener's https
        assert answers == [
            f"127.0.0.1 {port} https",
            f"127.0.0.1 {port} http",
            "203.0.113.7 0 https",
        ]
    else:
        assert answers == [f"127.0.0.1 {port} https"] * 3
