"""Hostile input at the protocol layer: each HTTP connection + the built-in app, no sockets.

Whatever bytes arrive, in whatever chunks: no exception leaves the protocol
object, and its output is a sequence of well-formed HTTP/1.1 responses (parsed
strictly by `support.parse_all`), where an error the server answers itself is
the last response and is followed by ``should_close``; or nothing at all.

And the two parsers are one server: fed the same bytes in the same pieces,
H11Connection and HttptoolsConnection give the same bytes, the same states
after every piece, the same counters, and the app sees the same requests
(the differential tests at the end).
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocols.http import common
from server.protocols.http.common import HttpLimits
from tests.support import chunkings

from .corpus import EDGES, NASTY, VALID
from .sansio import LIMITS, PARSERS, drive, split, verify

# -- strategies ----------------------------------------------------------------------

_names = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"X-A", b"TE"]
)
_values = st.one_of(
    st.sampled_from(
        [
            b"a",
            b"0",
            b"5",
            b"chunked",
            b"identity",
            b"chunked, identity",
            b"close",
            b"keep-alive",
            b"100-continue",
            b"-1",
            b"5, 6",
            b"999999999999999999999",
        ]
    ),
    st.binary(max_size=40),
)
_header = st.one_of(
    st.tuples(_names, _values).map(lambda nv: nv[0] + b": " + nv[1] + b"\r\n"),
    st.binary(max_size=30).map(lambda b: b + b"\r\n"),  # arbitrary header line
    st.sampled_from([b" folded\r\n", b"\tfolded\r\n", b"X-Lf: a\n", b"X-Cr: a\r", b"\r\n"]),
)


@st.composite
def generated_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"G\x00T", b""]))
    target = draw(st.sampled_from([b"/", b"/echo", b"/stats", b"*", b"http://a/echo", b"/\xff"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2", b""]))
    headers = b"".join(draw(st.lists(_header, max_size=6)))
    body = draw(st.binary(max_size=80))
    return method + b" " + target + b" " + version + b"\r\n" + headers + b"\r\n" + body


@st.composite
def giant_line(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(100, 40_000))
    where = draw(st.sampled_from(["value", "name", "target", "chunk-ext", "trailer"]))
    fill = draw(st.sampled_from([b"a", b"\xff", b"\x00", b" "])) * n
    if where == "value":
        return b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + fill + b"\r\n\r\n"
    if where == "name":
        return b"GET / HTTP/1.1\r\nHost: a\r\n" + fill + b": b\r\n\r\n"
    if where == "target":
        return b"GET /" + fill + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    te = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    if where == "chunk-ext":
        return te + b"1;" + fill + b"\r\nx\r\n0\r\n\r\n"
    return te + b"0\r\nX-T: " + fill + b"\r\n\r\n"


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(max_size=30))
        size = draw(
            st.one_of(
                st.just(b"%x" % len(data)),
                st.sampled_from([b"zz", b"-1", b"f" * 20, b"0x1", b"", b" 1", b"1 ", b"%x" % 99]),
            )
        )
        ext = draw(st.sampled_from([b"", b";a=b", b";", b';a="\x00"']))
        end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"", b"XX"]))
        parts.append(size + ext + b"\r\n" + data + end)
    last = draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nT: x\r\n\r\n", b"0\n\n", b""]))
    framing = draw(
        st.sampled_from(
            [
                b"Transfer-Encoding: chunked\r\n",
                b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                b"Transfer-Encoding: chunked, identity\r\n",
                b"Transfer-Encoding:\r\n chunked\r\n",
            ]
        )
    )
    return b"POST /echo HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n" + b"".join(parts) + last


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b"\n", b"\r", b"\x00", b" ", b":"]))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


_one = st.one_of(
    st.sampled_from(VALID),
    st.sampled_from([data for _, data in NASTY]),
    st.sampled_from([data for _, data in EDGES]),
    generated_request(),
    chunked_body(),
    giant_line(),
    st.binary(max_size=300),
)
_stream = st.lists(_one, min_size=1, max_size=4).map(b"".join)
hostile = st.one_of(
    _stream,
    mutated(_stream),
    st.tuples(_stream, st.integers(0, 5000)).map(lambda t: t[0][: t[1]]),  # truncated
)


@st.composite
def feeding(draw: st.DrawFn) -> tuple[list[bytes], HttpLimits, bool, int | None, bool]:
    data = draw(hostile)
    if len(data) <= 200 and draw(st.booleans()):
        chunks = [data[i : i + 1] for i in range(len(data))]
    else:
        chunks = split(data, draw(st.lists(st.integers(0, len(data)), max_size=8)))
    limits = draw(st.sampled_from(LIMITS))
    eof = draw(st.booleans())
    stop_at = draw(st.one_of(st.none(), st.integers(0, len(chunks))))
    time_out = draw(st.booleans())
    return chunks, limits, eof, stop_at, time_out


@pytest.mark.parametrize("parser", PARSERS)
@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(feeding())
def test_hostile_bytes_in_random_chunks(
    parser: str, case: tuple[list[bytes], HttpLimits, bool, int | None, bool]
) -> None:
    chunks, limits, eof, stop_at, time_out = case
    verify(drive(chunks, limits, eof, stop_at, time_out, PARSERS[parser]))


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("name,data", NASTY + EDGES, ids=[n for n, _ in NASTY + EDGES])
@pytest.mark.parametrize("eof", [False, True], ids=["open", "eof"])
def test_corpus_every_chunking(parser: str, name: str, data: bytes, eof: bool) -> None:
    for limits in LIMITS:
        pieces = (1 if len(data) <= 4096 else 4096, 7)
        for way, chunks in chunkings(data, pieces, cuts=False, limit=20_000):
            try:
                verify(
                    drive(
                        [c for c in chunks if c], limits, eof=eof, connection_class=PARSERS[parser]
                    )
                )
            except AssertionError as exc:
                raise AssertionError(f"{name} fed {way} with {limits}: {exc}") from None


@pytest.mark.parametrize("parser", PARSERS)
def test_smuggling_shapes_never_reach_the_app(parser: str) -> None:
    """A request with both Content-Length and Transfer-Encoding is refused (llhttp's
    rule, on both parsers): the app never sees it, nor what was smuggled behind it."""
    for name in ("cl-and-te", "te-and-cl"):
        data = dict(NASTY)[name]
        out = drive([data], HttpLimits(), connection_class=PARSERS[parser])
        verify(out)
        assert out.app.methods == [], (name, out.app.methods)
        assert out.data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), name
        assert out.closed, f"{name}: connection kept open after a CL+TE request"


# -- the two parsers agree ----------------------------------------------------------


def _agree(chunks: list[bytes], limits: HttpLimits, *args: object) -> None:
    # One second for both runs: the Date header must not tick between them.
    clock = SimpleNamespace(time=lambda: 784111777.0)
    with (
        mock.patch.object(common, "time", clock),
        mock.patch.object(common.date_header, "second", -1),
    ):
        h11_side = drive(chunks, limits, *args, connection_class=PARSERS["h11"])  # type: ignore[arg-type]
        httptools_side = drive(chunks, limits, *args, connection_class=PARSERS["httptools"])  # type: ignore[arg-type]
    assert httptools_side.summary() == h11_side.summary()


@settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(feeding())
def test_both_parsers_answer_hostile_bytes_alike(
    case: tuple[list[bytes], HttpLimits, bool, int | None, bool],
) -> None:
    """Random, mutated, truncated and combined requests (the corpus among them), cut
    anywhere, with EOF, stop_keepalive and timeouts: the same bytes and states."""
    chunks, limits, eof, stop_at, time_out = case
    _agree(chunks, limits, eof, stop_at, time_out)


@pytest.mark.parametrize(
    "name,data",
    VALID_NAMED := [(f"valid-{i}", d) for i, d in enumerate(VALID)] + NASTY + EDGES,
    ids=[n for n, _ in VALID_NAMED],
)
def test_both_parsers_agree_on_the_corpus_every_chunking(name: str, data: bytes) -> None:
    """Every corpus entry, whole, bytewise (or in 4 KiB pieces), in halves and in
    7-byte pieces, with and without EOF, under each set of limits."""
    for limits in LIMITS:
        pieces = (1 if len(data) <= 4096 else 4096, 7)
        for way, chunks in chunkings(data, pieces, cuts=False, limit=20_000):
            for eof in (False, True):
                try:
                    _agree([c for c in chunks if c], limits, eof)
                except AssertionError as exc:
                    raise AssertionError(
                        f"{name} fed {way} with {limits}, eof={eof}: {exc}"
                    ) from None
