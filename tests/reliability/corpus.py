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

# Shapes where h11 and llhttp could disagree, for the sans-IO differential tests
# (tests/reliability/test_fuzz_protocol.py); not sent over sockets.
_POST = b"POST /echo HTTP/1.1\r\n" + H
_CHUNKED = _POST + b"Transfer-Encoding: chunked\r\n\r\n"
EDGES: list[tuple[str, bytes]] = [
    ("cl-leading-zeros", _POST + b"Content-Length: 005\r\n\r\nhello"),
    ("cl-21-digits", _POST + b"Content-Length: " + b"0" * 20 + b"5\r\n\r\nhello"),
    ("cl-over-u64", _POST + b"Content-Length: 18446744073709551616\r\n\r\n"),
    ("cl-empty", _POST + b"Content-Length: \r\n\r\n"),
    ("cl-trailing-space", _POST + b"Content-Length: 5 \r\n\r\nhello"),
    ("te-gzip-chunked", _POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("te-chunked-gzip", _POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("te-chunked-twice", _POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    ("te-empty", _POST + b"Transfer-Encoding: \r\n\r\n"),
    ("unknown-method", b"FOO / HTTP/1.1\r\n" + H + b"\r\n"),
    ("lowercase-method", b"get / HTTP/1.1\r\n" + H + b"\r\n"),
    ("webdav-method", b"PROPFIND / HTTP/1.1\r\n" + H + b"\r\n"),
    ("pri-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("http-0.9-version", b"GET / HTTP/0.9\r\n" + H + b"\r\n"),
    ("http-2-no-host", b"GET / HTTP/2.0\r\n\r\n"),
    ("http-10-no-host", b"GET / HTTP/1.0\r\n\r\n"),
    ("http-10-two-hosts", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("target-authority-form", b"GET a:443 HTTP/1.1\r\n" + H + b"\r\n"),
    ("target-no-slash", b"GET abc HTTP/1.1\r\n" + H + b"\r\n"),
    ("target-fragment", b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n"),
    ("target-backslash", b"GET /a\\b HTTP/1.1\r\n" + H + b"\r\n"),
    ("target-del", b"GET /a\x7f HTTP/1.1\r\n" + H + b"\r\n"),
    ("target-ctl", b"GET /a\x01 HTTP/1.1\r\n" + H + b"\r\n"),
    ("ctl-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n"),
    ("del-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n"),
    ("tab-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\tb\t\r\n\r\n"),
    ("obs-text-in-name", b"GET / HTTP/1.1\r\n" + H + b"X-\xe9: b\r\n\r\n"),
    ("tab-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n"),
    ("empty-value", b"GET / HTTP/1.1\r\n" + H + b"X-A:\r\n\r\n"),
    ("whitespace-value", b"GET / HTTP/1.1\r\n" + H + b"X-A:  \t \r\n\r\n"),
    ("expect-uppercase", _POST + b"Expect: 100-Continue\r\nContent-Length: 2\r\n\r\nhi"),
    (
        "expect-http10",
        b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    ),
    ("connection-close-list", b"GET / HTTP/1.1\r\n" + H + b"Connection: keep-alive, Close\r\n\r\n"),
    ("http10-keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2),
    ("leading-crlf", b"\r\n" + b"GET / HTTP/1.1\r\n" + H + b"\r\n"),
    ("leading-lf", b"\n" + b"GET / HTTP/1.1\r\n" + H + b"\r\n"),
    (
        "upgrade-with-body",
        b"GET / HTTP/1.1\r\n" + H + b"Upgrade: x\r\nConnection: upgrade\r\n"
        b"Content-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\n" + H + b"\r\n",
    ),
    (
        "connect-then-get",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
    ),
    ("chunk-ext-token", _CHUNKED + b"5;a=b;c\r\nhello\r\n0\r\n\r\n"),
    ("chunk-ext-quoted", _CHUNKED + b'5;a="b c"\r\nhello\r\n0\r\n\r\n'),
    ("chunk-ext-space", _CHUNKED + b"5; a=b\r\nhello\r\n0\r\n\r\n"),
    ("chunk-ext-empty", _CHUNKED + b"5;\r\nhello\r\n0\r\n\r\n"),
    ("chunk-ext-nul", _CHUNKED + b"5;a\x00\r\nhello\r\n0\r\n\r\n"),
    ("chunk-size-trailing-space", _CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n"),
    ("chunk-size-17-digits", _CHUNKED + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n"),
    ("chunk-size-u64-overflow", _CHUNKED + b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n"),
    ("chunk-uppercase-hex", _CHUNKED + b"A\r\n0123456789\r\n0\r\n\r\n"),
    ("trailer-lf-only", _CHUNKED + b"0\r\n\n"),
    ("trailer-bare-lf", _CHUNKED + b"0\r\nX-T: a\n\n"),
    ("trailer-content-length", _CHUNKED + b"0\r\nContent-Length: 5\r\n\r\n"),
    ("trailer-bad-content-length", _CHUNKED + b"0\r\nContent-Length: x\r\n\r\n"),
    ("trailer-transfer-encoding", _CHUNKED + b"0\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("trailer-obs-fold", _CHUNKED + b"0\r\nX-T: a\r\n b\r\n\r\n"),
    ("trailer-ctl", _CHUNKED + b"0\r\nX-T: a\x01\r\n\r\n"),
    ("trailer-host", _CHUNKED + b"0\r\nHost: b\r\n\r\n"),
    ("chunk-data-crlf-mismatch", _CHUNKED + b"5\r\nhello\n\n0\r\n\r\n"),
    (
        "pipelined-after-chunked",
        _CHUNKED + b"2\r\nhi\r\n0\r\n\r\n" + b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    ),
]
