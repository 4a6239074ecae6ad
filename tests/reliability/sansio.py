"""The sans-IO model: an HTTP connection + the built-in app, driven the way the loop drives it.

`drive` takes the connection class (H11Connection by default); `PARSERS` are
both, for the tests that run on each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.apps.builtin import BuiltinApp
from server.protocols.http.common import Counters, HttpLimits, Request, Response
from server.protocols.http.framing import FramedConnection
from server.protocols.http.h11_impl import H11Connection
from server.protocols.http.httptools_impl import HttptoolsConnection
from tests.support import chunkings

from .support import Malformed, check_response_sequence, parse_all

PARSERS: dict[str, type[FramedConnection]] = {
    "h11": H11Connection,
    "httptools": HttptoolsConnection,
}
LIMITS = [HttpLimits(), HttpLimits(max_header_bytes=512, max_body_bytes=64), HttpLimits(2048, 4096)]


class RecordingApp:
    """The built-in app, remembering the method of each request it answers."""

    def __init__(self) -> None:
        self.app = BuiltinApp(lambda: {"requests": 1, "note": "fuzz"})
        self.methods: list[bytes] = []
        self.seen: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bytes]] = []

    def __call__(self, request: Request) -> Response:
        self.methods.append(request.method)
        self.seen.append(
            (
                request.method,
                request.target,
                [(bytes(n), bytes(v)) for n, v in request.headers],
                request.http_version,
                request.body,
            )
        )
        return self.app(request)


@dataclass
class Outcome:
    outputs: list[bytes]
    app: RecordingApp
    conn: FramedConnection
    counters: Counters
    closed: bool = False
    timeout_words: bytes = b""
    notes: list[str] = field(default_factory=list)
    # after each receive_data: (should_close, busy, pending_head())
    states: list[tuple[bool, bool, int]] = field(default_factory=list)

    def summary(self) -> tuple[object, ...]:
        """Everything two parsers must agree on: bytes, states, counters, what the app saw."""
        c = self.counters
        return (
            self.outputs,
            self.timeout_words,
            self.states,
            self.closed,
            (c.requests, c.client_errors, c.app_errors),
            self.app.seen,
        )

    @property
    def data(self) -> bytes:
        return b"".join(self.outputs) + self.timeout_words


def drive(
    chunks: list[bytes],
    limits: HttpLimits,
    eof: bool = False,
    stop_at: int | None = None,
    time_out: bool = False,
    connection_class: type[FramedConnection] = H11Connection,
) -> Outcome:
    """Feed `chunks` the way the loop does; `stop_at`: stop_keepalive() before that chunk."""
    app = RecordingApp()
    counters = Counters()
    conn = connection_class(app, limits, counters)
    out = Outcome([], app, conn, counters)
    feeds = [*chunks, b""] if eof else chunks
    for i, chunk in enumerate(feeds):
        if i == stop_at:
            conn.stop_keepalive()
        if conn.should_close:  # the loop would have closed the connection
            out.notes.append(f"closed before chunk {i}")
            assert conn.receive_data(chunk) == b"", "output after should_close"
            continue
        data = conn.receive_data(chunk)
        assert isinstance(data, bytes)
        assert isinstance(conn.should_close, bool) and isinstance(conn.busy, bool)
        assert not (conn.should_close and conn.busy), "busy after should_close"
        out.outputs.append(data)
        out.states.append((conn.should_close, conn.busy, conn.pending_head()))
    if time_out and not conn.should_close:
        out.timeout_words = conn.timed_out()
        assert conn.should_close, "timed_out() must close"
    out.closed = conn.should_close
    return out


def verify(outcome: Outcome) -> None:
    data = outcome.data
    heads = [m == b"HEAD" for m in outcome.app.methods]
    try:
        responses = parse_all(data, heads)
        check_response_sequence(responses, outcome.closed)
    except Malformed:
        raise
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noutput: {data[:600]!r}") from None
    finals = [r for r in responses if r.status >= 200]
    # Every request the app answered has its response, in order, and nothing else is
    # answered but one final error (or a 500 replacing a response h11 refused).
    assert len(finals) in (len(heads), len(heads) + 1), (len(finals), outcome.app.methods)
    if len(finals) == len(heads) + 1:
        assert finals[-1].status >= 400 and finals[-1].closes, finals[-1]
    if outcome.timeout_words:
        (last,) = parse_all(outcome.timeout_words)
        assert last.status == 408 and last.closes


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in [*points, len(data)]:
        if p > prev:
            chunks.append(data[prev:p])
            prev = p
    return chunks or [data]


def expected_statuses(data: bytes, eof: bool, time_out: bool = False) -> list[int] | None:
    """The final statuses the protocol answers `data` with, if no chunking changes them.

    Fed whole, in halves, in 1 KiB and in 7-byte pieces, then EOF (`eof`) or a
    timeout (`time_out`); None when the ways disagree (e.g. a giant head that
    is 431 when it arrives in pieces but 400 when a later line is malformed
    and it arrives whole): a socket test then checks only the form.
    """
    seen = set()
    for _, chunks in chunkings(data, (1024, 7), cuts=False):
        out = drive([c for c in chunks if c], HttpLimits(), eof=eof, time_out=time_out)
        statuses = [r.status for r in parse_all(out.data, [m == b"HEAD" for m in out.app.methods])]
        seen.add(tuple(s for s in statuses if s >= 200))
    return list(seen.pop()) if len(seen) == 1 else None


def head_flags(data: bytes) -> list[bool]:
    """Which app responses answer a HEAD, for parsing the server's output."""
    out = drive([data], HttpLimits(), eof=True)
    return [m == b"HEAD" for m in out.app.methods]
