"""Hostile HTTP requests: a fixed corpus, shared by the fuzz and the socket tests."""

from __future__ import annotations

H = b"Host: a\r\n"
GIANT = 40_000  # over the 16 KiB default head limit


def _req(head: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\n" + body


# Well-formed requests, for the fuzzer to truncate, mutate and combine.
VALID: list[bytes] = [
    b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    b"HEAD / HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /stats HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /nowhere?x=1 HTTP/1.1\r\n" + H + b"\r\n",
    b"DELETE /echo HTTP/1.1\r\n" + H + b"\r\n",
    b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\n" + H + b"Content-Type: a/b\r\nContent-Length: 0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n3\r\n, w\r\n0\r\nTrailer: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\n" + H + b"\r\n",
    b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
]

# (name, bytes): each is something a hostile or broken client sends.
NASTY: list[tuple[str, bytes]] = [
    # request smuggling shapes
    (
        "cl-and-te",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /nowhere HTTP/1.1\r\n" + H + b"\r\n",
    ),
    (
        "te-and-cl",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n"
        b"0\r\n\r\nGET /nowhere HTTP/1.1\r\n" + H + b"\r\n",
    ),
    (
        "duplicate-differing-cl",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    (
        "duplicate-equal-cl",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    ),
    ("cl-list", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\nhello!"),
    ("cl-plus", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello"),
    ("cl-negative", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n"),
    ("cl-hex", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello"),
    ("cl-space-inside", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\nhello"),
    ("cl-huge", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n"),
    ("cl-over-limit", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1048577\r\n\r\n"),
    (
        "cl-over-limit-expect",
        b"POST /echo HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
    ),
    (
        "te-chunked-identity",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "te-identity-chunked",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te-twice",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "te-xchunked",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "te-mixed-case",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: cHuNkEd\r\n\r\n0\r\n\r\n",
    ),
    (
        "te-space-before-colon",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    ("te-vertical-tab", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n"),
    ("te-http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    (
        "obs-fold-te",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    ),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n\tc\r\n\r\n"),
    ("obs-fold-first-header", b"GET / HTTP/1.1\r\n X-A: b\r\n" + H + b"\r\n"),
    # line endings
    ("bare-lf", b"GET / HTTP/1.1\n" + b"Host: a\n\n"),
    ("bare-lf-mixed", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n"),
    ("bare-cr", b"GET / HTTP/1.1\rHost: a\r\r\n\r\n"),
    ("cr-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n"),
    # NUL bytes and invalid UTF-8
    ("nul-in-target", b"GET /\x00 HTTP/1.1\r\n" + H + b"\r\n"),
    ("nul-in-name", b"GET / HTTP/1.1\r\n" + H + b"X-\x00A: b\r\n\r\n"),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n"),
    ("nul-in-method", b"G\x00T / HTTP/1.1\r\n" + H + b"\r\n"),
    ("nul-flood", b"\x00" * 4096),
    ("utf8-invalid-target", b"GET /\xff\xfe\xc3\x28 HTTP/1.1\r\n" + H + b"\r\n"),
    ("utf8-invalid-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: \xc3\x28\xa0\xa1\r\n\r\n"),
    ("utf8-invalid-name", b"GET / HTTP/1.1\r\n" + H + b"X-\xc3\x28: b\r\n\r\n"),
    ("utf8-body", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n\r\n\xff\xfe\xc3\x28"),
    # giant pieces
    ("giant-header-value", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * GIANT + b"\r\n\r\n"),
    ("giant-header-name", b"GET / HTTP/1.1\r\n" + H + b"X" * GIANT + b": b\r\n\r\n"),
    ("giant-target", b"GET /" + b"a" * GIANT + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("giant-method", b"G" * GIANT + b" / HTTP/1.1\r\n" + H + b"\r\n"),
    ("many-headers", b"GET / HTTP/1.1\r\n" + H + b"X: y\r\n" * 8000 + b"\r\n"),
    ("giant-unterminated-line", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * GIANT),
    ("giant-head-split-lines", b"GET / HTTP/1.1\r\n" + H + (b"X-" + b"a" * 1000 + b": b\r\n") * 20),
    # bad chunked bodies
    *[
        (
            f"chunk-size-{name}",
            b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + size + body,
        )
        for name, size, body in [
            ("letters", b"zz\r\n", b"hello\r\n0\r\n\r\n"),
            ("negative", b"-1\r\n", b"hello\r\n0\r\n\r\n"),
            ("overflow", b"f" * 40 + b"\r\n", b"hello\r\n0\r\n\r\n"),
            ("0x", b"0x5\r\n", b"hello\r\n0\r\n\r\n"),
            ("empty", b"\r\n", b"hello\r\n0\r\n\r\n"),
            ("space-inside", b"1 2\r\n", b"hello\r\n0\r\n\r\n"),
            ("leading-space", b" 5\r\n", b"hello\r\n0\r\n\r\n"),
            ("too-small", b"2\r\n", b"hello\r\n0\r\n\r\n"),
            ("no-crlf-after-data", b"5\r\n", b"helloXX0\r\n\r\n"),
            ("giant-extension", b"5;" + b"e" * GIANT + b"\r\n", b"hello\r\n0\r\n\r\n"),
            ("giant-trailer", b"0\r\n", b"X-T: " + b"t" * GIANT + b"\r\n\r\n"),
            ("huge-declared", b"7fffffff\r\n", b"a" * 4096),
            ("bare-lf", b"5\n", b"hello\n0\n\n"),
        ]
    ],
    # request lines
    ("two-spaces", b"GET  / HTTP/1.1\r\n" + H + b"\r\n"),
    ("extra-token", b"GET / HTTP/1.1 x\r\n" + H + b"\r\n"),
    ("http-2", b"GET / HTTP/2.0\r\n" + H + b"\r\n"),
    ("http-1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n"),
    ("lowercase-version", b"GET / http/1.1\r\n" + H + b"\r\n"),
    ("http-0.9", b"GET /\r\n\r\n"),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n"),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("space-in-name", b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n"),
    ("empty-name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n"),
    ("no-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\r\n\r\n"),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
    ("upgrade", b"GET / HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
    ("tls-client-hello", bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00" * 64),
    ("binary-noise", bytes((i * 97 + 13) % 256 for i in range(3000))),
    ("eof-mid-head", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: "),
    ("eof-mid-body", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\nonly this"),
    # a good request, then garbage on the same connection
    ("good-then-garbage", b"GET / HTTP/1.1\r\n" + H + b"\r\nGARBAGE\x00\xff\r\n\r\n"),
    (
        "pipeline-then-smuggle",
        VALID[0] + VALID[5] + b"POST / HTTP/1.1\r\nContent-Length: z\r\n\r\n",
    ),
]
