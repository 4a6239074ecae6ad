"""HTTP/1.1, with one module per parser and what they share in ``common``.

``h11_impl`` (h11, the default and the reference) and ``httptools_impl``
(llhttp, Node.js's parser, through httptools) have the same shape and give
the same bytes on the wire; uvicorn keeps its two parsers side by side the
same way.  Both are built on ``framing.py``, which frames requests for them,
and each checks a head against the other's rules (a request is served only
if both accept it), so both libraries are dependencies; a parser module is
still imported only when ``--http`` chooses it.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, Protocol

from server.protocols import ServerProtocol
from server.protocols.http.common import Counters, HttpLimits

HttpName = Literal["h11", "httptools"]

# name -> "module:class"; imported lazily, like the backends.
HTTP_IMPLEMENTATIONS: dict[HttpName, str] = {
    "h11": "server.protocols.http.h11_impl:H11Connection",
    "httptools": "server.protocols.http.httptools_impl:HttptoolsConnection",
}
# The same parsers for an app that answers later (ASGI): framing.AsyncMode.
ASGI_IMPLEMENTATIONS: dict[HttpName, str] = {
    "h11": "server.protocols.http.h11_impl:H11AsgiConnection",
    "httptools": "server.protocols.http.httptools_impl:HttptoolsAsgiConnection",
}


class HttpConnectionClass(Protocol):
    """What a parser module's connection class is called with."""

    def __call__(self, app: Any, limits: HttpLimits, counters: Counters) -> ServerProtocol: ...


def load_http(name: HttpName, asgi: bool = False) -> HttpConnectionClass:
    """The connection class of parser `name` (for an ASGI app if `asgi`).

    Raises:
        ImportError: the parser's library is not installed.
    """
    table = ASGI_IMPLEMENTATIONS if asgi else HTTP_IMPLEMENTATIONS
    module_name, _, cls_name = table[name].partition(":")
    cls: HttpConnectionClass = getattr(importlib.import_module(module_name), cls_name)
    return cls
