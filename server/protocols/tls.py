"""TLS as a protocol layer: `ssl.SSLObject` over two `ssl.MemoryBIO` objects.

Theory of operation.  The ``ssl`` module can run TLS without a socket: an
``SSLObject`` reads the records it is fed from an incoming ``MemoryBIO``
and writes the records it produces to an outgoing one ("Memory BIO
Support" in the ssl docs; trio's ``SSLStream`` is built the same way).
`TlsConnection` is a `ServerProtocol` that wraps any other one (HTTP with
either parser, sync or async, or echo): ciphertext from the backend goes
into the incoming BIO, the plaintext that comes out goes to the inner
protocol's ``receive_data``, what the inner protocol answers is encrypted
with ``SSLObject.write`` and the outgoing BIO's bytes are returned to the
loop.  So both backends and every protocol get TLS with no socket code,
and with TLS off none of this is on the path (the factory is not wrapped).

A connection goes through three states:

- HANDSHAKE: ``do_handshake()`` until it stops asking for more bytes
  (``SSLWantReadError``).  Once the client has sent something the
  connection is busy and `pending_head` reports `HANDSHAKE_HEAD`, so the
  loop's sweep cuts a handshake that takes longer than
  ``--timeout-handshake`` the way it cuts a slow request head.  A client
  that connects and sends nothing is an idle connection (keep-alive
  timeout), as without TLS.
- OPEN: records are decrypted until the incoming BIO is empty; a
  close_notify from the peer is its EOF (``receive_data(b"")`` for the
  inner protocol), and so is a TCP EOF without one (a "ragged" EOF is not
  an error for HTTP/1.1, whose messages carry their own framing).
- DONE: the handshake failed, a record was bad, or our close_notify went
  out; nothing more is read or written.

A failed handshake costs that connection only: the alert OpenSSL produced
(if any) is sent, the connection closes, ``client_errors`` counts it and it
is logged at debug level.  A plain HTTP request on the TLS port (OpenSSL's
``HTTP_REQUEST``) gets a clear-text 400 instead of an alert, as nginx does
(``plain_reply``), so the person with ``curl http://`` learns why.

Closing sends close_notify (``SSLObject.unwrap()``, whose "want read" is
ignored: the peer's answer is not waited for).

Rules from the ssl docs followed here: ``SSLObject.read`` returns ``b""``
once the peer's close_notify is read; ``write`` on a memory BIO never
stops short (the BIO grows), so its output is taken whole.  OpenSSL reads
records without read-ahead by default, so an empty incoming BIO and no
``pending()`` bytes mean all the plaintext has been read, and the common
case (whole records) costs no ``SSLWantReadError``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

from server.protocols import HANDSHAKE_HEAD, AsyncServerProtocol, ServerProtocol, Transport
from server.protocols.http.common import Counters

logger = logging.getLogger("server.tls")

HANDSHAKE: Final = 0
OPEN: Final = 1
DONE: Final = 2

# The most plaintext one TLS record carries (RFC 8446 5.1: 2^14 bytes); one
# SSLObject.read returns at most one record's.
RECORD_PLAINTEXT_BYTES: Final = 16384

PLAIN_HTTP_BODY: Final = b"The plain HTTP request was sent to HTTPS port\n"
PLAIN_HTTP_REPLY: Final = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(PLAIN_HTTP_BODY), PLAIN_HTTP_BODY)
)


class TlsConnection:
    """One TLS connection around an inner protocol object.

    Args:
        inner: the protocol object the plaintext is for (made by the
            server's own factory).
        context: the server's `ssl.SSLContext` (`make_context`).
        counters: where a failed handshake or a bad record is counted
            (``client_errors``).
        plain_reply: sent in clear text, instead of an alert, to a client
            that speaks plain HTTP on this port (None: just close).
    """

    __slots__ = (
        "_closing",
        "_counters",
        "_eof",
        "_incoming",
        "_inner",
        "_inner_async",
        "_notified",
        "_outgoing",
        "_plain_reply",
        "_received",
        "_sslobj",
        "_state",
        "_transport",
    )

    # Always: close_notify at shutdown goes out through the transport, and an
    # async inner protocol writes through it.
    needs_transport = True

    def __init__(
        self,
        inner: ServerProtocol,
        context: ssl.SSLContext,
        counters: Counters,
        plain_reply: bytes | None = None,
    ) -> None:
        self._inner = inner
        self._inner_async = inner.needs_transport
        self._counters = counters
        self._plain_reply = plain_reply
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._state = HANDSHAKE
        self._received = False  # the client has sent something
        self._eof = False  # the inner protocol was given its EOF
        self._notified = False  # our close_notify is written
        self._closing = False  # closing for a reason of our own (failure, timeout)
        self._transport: Transport | None = None

    # -- what the loop reads ------------------------------------------------------

    @property
    def should_close(self) -> bool:
        return self._closing or self._inner.should_close

    @property
    def busy(self) -> bool:
        state = self._state
        if state == OPEN:
            return self._inner.busy
        return state == HANDSHAKE and self._received

    @property
    def responding(self) -> bool:
        return self._state == OPEN and self._inner.responding

    @property
    def inner(self) -> ServerProtocol:
        """The protocol object the plaintext goes to."""
        return self._inner

    def pending_head(self) -> int:
        state = self._state
        if state == OPEN:
            return self._inner.pending_head()
        return HANDSHAKE_HEAD if state == HANDSHAKE and self._received else 0

    # -- bytes in, bytes out --------------------------------------------------------

    def receive_data(self, data: bytes) -> bytes:
        """Feed ciphertext (``b""`` = EOF); return the ciphertext to send.

        Never raises for anything the peer sends.
        """
        if self._state == DONE:
            return b""
        if not data:
            return self._peer_eof()
        self._incoming.write(data)
        if self._state == HANDSHAKE:
            self._received = True
            try:
                self._sslobj.do_handshake()
            except ssl.SSLWantReadError:
                return self._outgoing.read()
            except ssl.SSLError as exc:
                return self._fail(exc, handshake=True)
            self._state = OPEN
            if logger.isEnabledFor(logging.DEBUG):
                sslobj = self._sslobj
                logger.debug(
                    "TLS handshake done with %s: %s, %s, ALPN %s",
                    self._peer(),
                    sslobj.version(),
                    (sslobj.cipher() or ("?",))[0],
                    sslobj.selected_alpn_protocol(),
                )
        return self._decrypt()

    def _decrypt(self, peer_done: bool = False) -> bytes:
        """Read every complete record, hand the plaintext on, encrypt the answer.

        `peer_done`: the TCP EOF came (with or without a close_notify before it).
        """
        sslobj = self._sslobj
        incoming = self._incoming
        chunks: list[bytes] = []
        try:
            while incoming.pending or sslobj.pending():
                chunk = sslobj.read(RECORD_PLAINTEXT_BYTES)
                if not chunk:  # the peer's close_notify
                    peer_done = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass  # a record not complete yet
        except ssl.SSLError as exc:
            return self._fail(exc, handshake=False)
        inner = self._inner
        out = b""
        if chunks:
            out = inner.receive_data(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if peer_done and not self._eof:
            self._eof = True
            last = inner.receive_data(b"")
            if last:
                out = out + last if out else last
        if self._state != OPEN:
            # The inner protocol closed its transport meanwhile (close_notify sent).
            return self._outgoing.read()
        if out:
            sslobj.write(out)
        if inner.should_close:
            self._notify_close()
        return self._outgoing.read()

    def _peer_eof(self) -> bytes:
        """The TCP connection's EOF."""
        if self._state == HANDSHAKE:
            self._state = DONE
            self._closing = True
            if self._received:  # it left in the middle: a failed handshake
                self._counters.client_errors += 1
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("TLS handshake with %s: the client left", self._peer())
            return b""
        if self._eof:
            return b""  # after its close_notify: nothing more can come
        # Without a close_notify (a "ragged" EOF) too: an HTTP/1.1 message is
        # framed, so a truncated one is the inner protocol's to see (400).
        return self._decrypt(peer_done=True)

    def _fail(self, exc: ssl.SSLError, handshake: bool) -> bytes:
        """The peer sent something TLS refuses: the alert (or the plain reply), then close."""
        self._state = DONE
        self._closing = True
        self._counters.client_errors += 1
        if logger.isEnabledFor(logging.DEBUG):
            what = "handshake" if handshake else "record"
            logger.debug("TLS %s from %s refused: %s", what, self._peer(), exc)
        if handshake and exc.reason == "HTTP_REQUEST" and self._plain_reply is not None:
            self._outgoing.read()  # nothing a plain HTTP client could read
            return self._plain_reply
        return self._outgoing.read()

    def _notify_close(self) -> None:
        """Write our close_notify into the outgoing BIO, once; the peer's is not awaited."""
        if self._notified or self._state != OPEN:
            return
        self._notified = True
        # "want read": the peer's close_notify has not come, and need not.
        with contextlib.suppress(ssl.SSLError):
            self._sslobj.unwrap()
        self._state = DONE

    def _peer(self) -> Any:
        transport = self._transport
        return transport.get_extra_info("peername") if transport is not None else None

    # -- the loop's other calls ---------------------------------------------------

    def timed_out(self) -> bytes:
        if self._state != OPEN:  # the handshake took too long (or it is over)
            self._state = DONE
            self._closing = True
            return b""
        last = self._inner.timed_out()
        if last:
            self._sslobj.write(last)
        self._notify_close()
        self._closing = True
        return self._outgoing.read()

    def stop_keepalive(self) -> None:
        if self._state != OPEN:
            self._state = DONE
            self._closing = True
            return
        self._inner.stop_keepalive()
        if self._inner.should_close:
            self._flush_close()

    def drain(self) -> None:
        # A handshaking client is about to send a request: the inner protocol
        # answers it, then closes.
        self._inner.drain()
        if self._inner.should_close:
            if self._state == OPEN:
                self._flush_close()
            else:
                self._state = DONE
                self._closing = True

    def _flush_close(self) -> None:
        """close_notify through the transport (the loop closes the connection next)."""
        self._notify_close()
        data = self._outgoing.read()
        if data and self._transport is not None:
            self._transport.write(data)

    def connection_made(self, transport: Transport) -> None:
        self._transport = transport
        if self._inner_async:
            cast(AsyncServerProtocol, self._inner).connection_made(TlsTransport(self, transport))

    def connection_lost(self, exc: OSError | None) -> None:
        self._state = DONE
        if self._inner_async:
            cast(AsyncServerProtocol, self._inner).connection_lost(exc)
        self._transport = None

    def pause_writing(self) -> None:
        if self._inner_async:
            cast(AsyncServerProtocol, self._inner).pause_writing()

    def resume_writing(self) -> None:
        if self._inner_async:
            cast(AsyncServerProtocol, self._inner).resume_writing()

    # -- the inner protocol's transport (TlsTransport) ---------------------------------

    def _write_plain(self, data: bytes) -> None:
        if self._state != OPEN or not data or self._transport is None:
            return  # closing or closed: dropped, as a closed transport would
        self._sslobj.write(data)
        self._transport.write(self._outgoing.read())

    def _close(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._notify_close()
        data = self._outgoing.read()
        if data:
            transport.write(data)
        transport.close()

    def _extra_info(self, name: str, default: Any) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "peercert":
            return self._sslobj.getpeercert() if self._state == OPEN else default
        if name == "cipher":
            return self._sslobj.cipher() if self._state == OPEN else default
        transport = self._transport
        return default if transport is None else transport.get_extra_info(name, default)


class TlsTransport:
    """What an async inner protocol writes through: plaintext in, ciphertext to the
    connection's real transport (asyncio's SSL transport, in miniature)."""

    __slots__ = ("_conn", "_real")

    def __init__(self, conn: TlsConnection, real: Transport) -> None:
        self._conn = conn
        self._real = real

    def write(self, data: bytes) -> None:
        self._conn._write_plain(data)

    def close(self) -> None:
        """close_notify, then close once what was written is sent."""
        self._conn._close()

    def abort(self) -> None:
        self._real.abort()

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Also ``"ssl_object"``, ``"peercert"`` and ``"cipher"``, as asyncio's."""
        return self._conn._extra_info(name, default)


def tls_factory(
    make_inner: Callable[[], ServerProtocol],
    context: ssl.SSLContext,
    counters: Counters,
    plain_reply: bytes | None = None,
) -> Callable[[], ServerProtocol]:
    """The server's protocol factory with every connection wrapped in TLS."""

    def make() -> ServerProtocol:
        return TlsConnection(make_inner(), context, counters, plain_reply)

    return make


# -- the context -------------------------------------------------------------------


class TlsSetupError(Exception):
    """A certificate, key, password or CA file cannot be used; the message names it."""


class _NoPassword(Exception):
    pass


# --ssl-version values (uvicorn's: the ssl module's PROTOCOL_* numbers) and
# the versions each allows; None: the ssl module's default range (TLS 1.2
# and 1.3 on Python 3.10+).
SSL_VERSIONS: Final[dict[int, tuple[ssl.TLSVersion, ssl.TLSVersion] | None]] = {
    int(ssl.PROTOCOL_TLS_SERVER): None,
    int(ssl.PROTOCOL_TLS): None,  # PROTOCOL_SSLv23: negotiate, as TLS_SERVER
    5: (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),  # PROTOCOL_TLSv1_2
}


def make_context(
    certfile: str,
    keyfile: str | None = None,
    password: str | None = None,
    ca_certs: str | None = None,
    cert_reqs: int = 0,
    ciphers: str | None = None,
    version: int = int(ssl.PROTOCOL_TLS_SERVER),
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """The server's SSLContext, from uvicorn's options.

    Args:
        certfile: PEM certificate chain (the key too, if `keyfile` is None).
        keyfile: PEM private key.
        password: for an encrypted `keyfile`; without one an encrypted key
            is refused (OpenSSL would otherwise ask on the terminal).
        ca_certs: PEM CA certificates client certificates are checked against.
        cert_reqs: 0, 1, 2: ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED.
        ciphers: an OpenSSL cipher string for TLS 1.2 (None: the ssl module's).
        version: a key of `SSL_VERSIONS`.
        alpn: the protocols offered in ALPN.

    Raises:
        TlsSetupError: naming the option, the file and the cause.
    """
    key_path = keyfile or certfile
    key_flag = "--ssl-keyfile" if keyfile else "--ssl-certfile"
    for flag, path in (
        ("--ssl-certfile", certfile),
        ("--ssl-keyfile", keyfile),
        ("--ssl-ca-certs", ca_certs),
    ):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise TlsSetupError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=certfile)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"--ssl-certfile {certfile}: no PEM certificate in it ({exc})") from exc
    with open(key_path, "rb") as f:
        if b"PRIVATE KEY-----" not in f.read():
            raise TlsSetupError(f"{key_flag} {key_path}: no PEM private key in it")
    asked: list[bool] = []

    def get_password() -> str:
        asked.append(True)
        if password is None:
            raise _NoPassword
        return password

    try:
        ctx.load_cert_chain(certfile, keyfile, get_password)
    except _NoPassword:
        raise TlsSetupError(
            f"{key_flag} {key_path}: the key is encrypted; give --ssl-keyfile-password "
            "(or RINGSERVE_SSL_KEYFILE_PASSWORD)"
        ) from None
    except ssl.SSLError as exc:
        if asked:
            raise TlsSetupError(
                f"{key_flag} {key_path}: cannot decrypt the key: wrong --ssl-keyfile-password"
            ) from exc
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise TlsSetupError(
                f"{key_flag} {key_path}: the private key does not match the certificate "
                f"in --ssl-certfile {certfile} ({exc})"
            ) from exc
        raise TlsSetupError(f"{key_flag} {key_path}: cannot load the private key ({exc})") from exc
    ctx.verify_mode = ssl.VerifyMode(cert_reqs)
    if ca_certs is not None:
        try:
            ctx.load_verify_locations(cafile=ca_certs)
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"--ssl-ca-certs {ca_certs}: no PEM CA certificate in it ({exc})"
            ) from exc
    if ciphers is not None:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise TlsSetupError(f"--ssl-ciphers {ciphers!r}: no cipher matches it") from exc
    versions = SSL_VERSIONS[version]
    if versions is not None:
        ctx.minimum_version, ctx.maximum_version = versions
    # A client that asks to renegotiate makes the server redo the expensive half
    # of a handshake at will; TLS 1.3 has no renegotiation at all.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
