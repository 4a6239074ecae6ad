"""Who a request came from, and a line for each answer: proxy headers and the access log.

`observed` makes a subclass of a parser's connection class (either parser,
synchronous or `framing.AsyncMode`) that

- learns its peer's address from the transport, once per connection (one
  ``getpeername``), and hands it to the app: WSGI's ``REMOTE_ADDR`` and
  ``REMOTE_PORT``, ASGI's ``client``;
- with `ProxyHeaders`, when that peer is a trusted proxy, takes the client
  address and the scheme from the request's ``Forwarded`` (RFC 7239) or
  ``X-Forwarded-For`` / ``X-Forwarded-Proto`` headers instead;
- with an access logger, logs one line per response the connection gives,
  the app's or the server's own (400, 408, 413, 431, 500...), once it is
  complete::

      127.0.0.1:54321 - "GET /path?q HTTP/1.1" 200 1234 0.4ms

  (client, request line, status, body bytes, time from the complete head
  to the complete response; ``"-"`` for a request line or duration the
  server never saw, as for a head refused before it was parsed).

The server uses the plain classes when none of this is asked for, so off
costs nothing; on, it costs one transport object per connection and a few
attribute loads per request, plus the log record when the log is on.
Everything here is sans-IO, like the parsers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from server.protocols.http.common import Response, error_body
from server.protocols.http.framing import FramedConnection
from server.protocols.http.proxy import ProxyHeaders

_LINE = '%s - "%s %s HTTP/%s" %d %d'
_NO_LINE = '%s - "-" %d %d'  # a head refused before it was parsed


class _Observed(FramedConnection):
    """The mixin `observed` puts in front of a parser's class; see the module."""

    __slots__ = ()

    needs_transport = True
    proxy: ProxyHeaders | None = None
    access: logging.Logger | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._transport = None
        self._peer: Any = None  # not asked yet; () if unknown
        self._trusted = False
        self._t0 = 0.0
        self._status = 0
        self._sent = 0

    def _find_peer(self) -> Any:
        transport = self._transport
        peer: Any = (transport.get_extra_info("peername") if transport is not None else None) or ()
        self._peer = peer
        proxy = self.proxy
        self._trusted = bool(peer) and proxy is not None and proxy.trusts(peer[0])
        return peer

    def _parse(self, head: bytes) -> int:
        self._t0 = time.perf_counter()
        status = super()._parse(head)
        peer = self._peer
        if peer is None:
            peer = self._find_peer()
        if not status and self._trusted:
            assert self.proxy is not None
            self._client, self._scheme = self.proxy.resolve(self._headers, peer or None)
        else:
            self._client, self._scheme = peer or None, None
        return status

    # -- the access log: where a response is complete ---------------------------------

    def _send(self, resp: Response) -> tuple[bytes, bool] | None:
        sent = super()._send(resp)
        if self.access is not None:
            if sent is None:  # the caller sends a 500 instead
                self._log(500, len(error_body(500)))
            else:
                body = resp.body
                self._log(resp.status, 0 if self._method == b"HEAD" or not body else len(body))
        return sent

    def _error(self, status: int) -> bytes:
        data = super()._error(status)
        if data and self.access is not None:
            self._log(status, len(error_body(status)))
        return data

    def _stream_head(self, status: int, headers: Any) -> bytes | None:
        data: bytes | None = super()._stream_head(status, headers)  # type: ignore[misc]
        self._status = status
        self._sent = 0
        return data

    def _stream_body(self, chunk: bytes) -> bytes | None:
        data: bytes | None = super()._stream_body(chunk)  # type: ignore[misc]
        if data is not None and self._method != b"HEAD":
            self._sent += len(chunk)
        return data

    def _stream_end(self) -> tuple[bytes, bool] | None:
        ended: tuple[bytes, bool] | None = super()._stream_end()  # type: ignore[misc]
        if self.access is not None:
            self._log(self._status, self._sent)
        return ended

    def _log(self, status: int, nbytes: int) -> None:
        access = self.access
        assert access is not None
        client = self._client
        if client is None:
            client = self._peer if self._peer is not None else self._find_peer()
        t0 = self._t0
        self._t0 = 0.0
        self._client = None  # a head refused before parsing must not inherit it
        # The message is formatted by the log's thread (`server.accesslog`),
        # not here: only the record is made on the loop.
        who = f"{client[0]}:{client[1]}" if client else "-"
        if self._method:
            args: tuple[Any, ...] = (
                who,
                self._method.decode("ascii", "replace"),
                self._target.decode("latin-1"),
                self._version.decode("ascii", "replace"),
                status,
                nbytes,
            )
            fmt = _LINE
        else:
            args = (who, status, nbytes)
            fmt = _NO_LINE
        if t0:
            access.info(fmt + " %.1fms", *args, (time.perf_counter() - t0) * 1e3)
        else:
            access.info(fmt + " -", *args)


def observed(cls: Any, proxy: ProxyHeaders | None, access: logging.Logger | None) -> Any:
    """`cls` (a parser's connection class) with peer addresses, and with `proxy`
    headers and the `access` log if given."""
    return type(
        "Observed" + cls.__name__,
        (_Observed, cls),
        {"__slots__": (), "proxy": proxy, "access": access},
    )
