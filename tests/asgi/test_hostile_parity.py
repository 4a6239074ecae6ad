"""Hostile-input parity: the ASGI connection classes answer every input of the hostile
corpus (tests/reliability/corpus.py: the smuggling shapes, malformed heads, limits,
pipelines, valid requests) with the same bytes and the same close as the synchronous
classes of the same parser.

Over real sockets, on both backends and both parsers: the built-in app (served by
H11Connection / HttptoolsConnection) against `examples.asgi_hello`, its ASGI twin
(served by H11AsgiConnection / HttptoolsAsgiConnection, whose apps answer the same bytes).
Every input goes on its own connection, all at once, and is read until EOF or until
the server has been quiet for a while; the Date values are normalized.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time

import pytest

from tests.asgi.support import norm
from tests.reliability.corpus import EDGES, NASTY, VALID

# GET /stats: a route of the built-in app only (asgi_hello answers it 404).
CASES: list[tuple[str, bytes]] = (
    [(f"valid-{i}", d) for i, d in enumerate(VALID) if not d.startswith(b"GET /stats ")]
    + NASTY
    + EDGES
)
# Known, deliberate differences: a GET with a body that the app answers in its first
# step, before the body was framed.  The sync class reads the body, answers and keeps
# the connection; the ASGI class answers at once, says it closes, and closes (it cannot
# know the body will come, and never frames an unread body as requests).
ANSWERED_BEFORE_THE_BODY = {"upgrade-with-body"}
QUIET_S = 1.0  # silence after which a connection the server keeps is taken as kept
LIMITS = {
    "default-limits": {},
    "small-limits": {"max_header_bytes": 512, "max_body_bytes": 64},
}


def outcomes(address: tuple[str, int], cases: list[tuple[str, bytes]]) -> dict[str, object]:
    """name -> (normalized output, how it ended: "eof", "kept" or "reset")."""
    socks: dict[socket.socket, str] = {}
    got: dict[str, bytearray] = {}
    ended: dict[str, str] = {}
    try:
        for name, data in cases:
            s = socket.create_connection(address, timeout=5)
            socks[s] = name
            got[name] = bytearray()
            with contextlib.suppress(OSError):  # refused and closed while we sent
                s.sendall(data)
            s.setblocking(False)
        open_socks = set(socks)
        last = time.monotonic()
        deadline = last + 30
        while open_socks and time.monotonic() - last < QUIET_S:
            assert time.monotonic() < deadline, "the server kept talking for 30 s"
            readable, _, _ = select.select(list(open_socks), [], [], 0.05)
            for s in readable:
                name = socks[s]
                try:
                    chunk = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    ended[name] = "reset"
                    open_socks.discard(s)
                    continue
                last = time.monotonic()
                if chunk:
                    got[name] += chunk
                else:
                    ended[name] = "eof"
                    open_socks.discard(s)
        for s in open_socks:
            ended[socks[s]] = "kept"
    finally:
        for s in socks:
            s.close()
    return {name: (norm(bytes(got[name])), ended[name]) for name in got}


@pytest.mark.parametrize("limits", list(LIMITS), ids=list(LIMITS))
def test_the_asgi_classes_answer_the_hostile_corpus_as_the_sync_classes_do(
    make_server, limits: str
) -> None:
    overrides = LIMITS[limits]
    with make_server(app=None, **overrides) as srv:
        sync_side = outcomes(srv.address, CASES)
    with make_server(app="examples.asgi_hello:app", **overrides) as srv:
        asgi_side = outcomes(srv.address, CASES)
    differ = [
        name
        for name, _ in CASES
        if asgi_side[name] != sync_side[name] and name not in ANSWERED_BEFORE_THE_BODY
    ]
    assert not differ, (differ, {n: (sync_side[n], asgi_side[n]) for n in differ[:2]})
    for name in ANSWERED_BEFORE_THE_BODY:
        first = sync_side[name][0].split(b"HTTP/1.1 ")[1]  # type: ignore[index]
        expected = b"HTTP/1.1 " + first.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
        assert asgi_side[name] == (expected, "eof"), name
    # Not a vacuous comparison: the corpus brings errors, closes and kept connections.
    kinds = {end for _, end in sync_side.values()}  # type: ignore[misc]
    assert {"eof", "kept"} <= kinds, kinds
    statuses = {out[9:12] for out, _ in sync_side.values() if out}  # type: ignore[misc]
    assert {b"200", b"400"} <= statuses, statuses
