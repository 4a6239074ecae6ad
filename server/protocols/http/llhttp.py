"""llhttp (Node.js's parser, through httptools), typed, and its verdicts.

httptools ships a ``parser.pyi`` whose callback protocol is ``object``; the
`Sink` Protocol below is the part of it this server relies on, so nothing
typed ``Any`` leaves this module.  Every parser is made by `new_parser`, so
all are configured alike, because llhttp serves two purposes here:

- ``httptools_impl`` parses request heads with it;
- both connections ask it whether a complete head, chunk-size line or
  trailer block is acceptable (`head_ok`, `chunk_line_ok`, `trailers_ok`),
  so that a request is served only if h11 *and* llhttp accept it
  (``framing.py`` says why).

llhttp runs with its defaults, which are strict: no bare LF, no obs-fold,
known methods only, one Content-Length, and no request with both
Transfer-Encoding and Content-Length (RFC 9112 6.1 lets a server refuse it
rather than frame it by Transfer-Encoding; h11 frames it).
"""

from __future__ import annotations

from typing import Final, Protocol

import httptools

ParserError: Final = httptools.HttpParserError
Upgrade: Final = httptools.HttpParserUpgrade


class Sink(Protocol):
    """What a parser calls back: httptools looks up ``on_url``, ``on_header``,
    ``on_body``, ``on_message_complete``... on it and calls those it finds; every
    sink here has at least this one."""

    def on_headers_complete(self) -> None: ...


class Parser(Protocol):
    """The methods of ``httptools.HttpRequestParser`` used here."""

    def feed_data(self, data: bytes | bytearray | memoryview) -> None: ...

    def get_method(self) -> bytes: ...

    def get_http_version(self) -> str: ...

    def should_keep_alive(self) -> bool: ...


def new_parser(sink: Sink) -> Parser:
    """A request parser calling back `sink` (no leniency: llhttp's strict defaults)."""
    return httptools.HttpRequestParser(sink)


class _Verdict:
    """Callbacks that only note how far the parser got."""

    __slots__ = ("headers_done", "message_done")

    def __init__(self) -> None:
        self.headers_done = False
        self.message_done = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_message_complete(self) -> None:
        self.message_done = True


def head_ok(head: bytes | bytearray) -> bool:
    """Whether llhttp accepts `head` (a request line and headers, up to the blank line)."""
    verdict = _Verdict()
    try:
        new_parser(verdict).feed_data(head)
    except Upgrade:
        return verdict.headers_done  # CONNECT, or Upgrade: the head is fine
    except ParserError:
        return False
    return verdict.headers_done


CHUNKED_HEAD: Final = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk_line_ok(line: bytes | bytearray) -> bool:
    """Whether llhttp accepts `line` (a chunk size, extensions, CRLF) in a chunked body."""
    try:
        new_parser(_Verdict()).feed_data(CHUNKED_HEAD + line)
    except ParserError:
        return False
    return True


def trailers_ok(block: bytes | bytearray) -> bool:
    """Whether llhttp accepts `block` (trailer lines and the blank line) after the last chunk."""
    verdict = _Verdict()
    try:
        new_parser(verdict).feed_data(CHUNKED_HEAD + b"0\r\n" + block)
    except ParserError:
        return False
    return verdict.message_done
