"""ProxyHeaders: which peers are trusted, and what their headers resolve to."""

from __future__ import annotations

import pytest

from server.protocols.http.proxy import ProxyHeaders

PEER = ("127.0.0.1", 5555)


def resolve(allow: str, *headers: tuple[bytes, bytes]) -> tuple[object, str]:
    return ProxyHeaders(allow).resolve(list(headers), PEER)


@pytest.mark.parametrize(
    ("allow", "host", "trusted"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("10.0.0.0/8, 192.168.1.1", "10.200.3.4", True),
        ("10.0.0.0/8, 192.168.1.1", "192.168.1.1", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("::1", "::1", True),
        ("2001:db8::/32", "2001:db8:1::5", True),
        ("2001:db8::/32", "10.0.0.1", False),
        ("*", "203.0.113.9", True),
        ("*", "unknown", True),
        ("127.0.0.1", "unknown", False),
        ("127.0.0.1", "_hidden", False),
        ("", "127.0.0.1", False),
    ],
)
def test_trusts(allow: str, host: str, trusted: bool) -> None:
    assert ProxyHeaders(allow).trusts(host) is trusted


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "1.2.3", "127.0.0.1, nope"])
def test_a_bad_entry_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an IP address or network"):
        ProxyHeaders(bad)


def test_x_forwarded_for_takes_the_right_most_untrusted_address() -> None:
    xff = (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2 ,10.0.0.1")
    assert resolve("127.0.0.1,10.0.0.0/8", xff) == (("2.2.2.2", 0), None)
    # Two header lines are one list, in order.
    assert resolve(
        "127.0.0.1,10.0.0.0/8",
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"10.0.0.2"),
    ) == (("1.1.1.1", 0), None)
    assert resolve("*", xff) == (("1.1.1.1", 0), None)
    assert resolve("127.0.0.1", (b"x-forwarded-for", b"[2001:db8::1]")) == (
        ("2001:db8::1", 0),
        None,
    )
    assert resolve("127.0.0.1", (b"x-forwarded-for", b" , ")) == (PEER, None)


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        (b"https", "https"),
        (b"HTTPS", "https"),
        (b"wss", "https"),
        (b"ws", "http"),
        (b"http, https", "https"),
        (b"ftp", None),
        (b"", None),
    ],
)
def test_x_forwarded_proto(value: bytes, scheme: str | None) -> None:
    assert resolve("127.0.0.1", (b"x-forwarded-proto", value)) == (PEER, scheme)


@pytest.mark.parametrize(
    ("value", "client", "scheme"),
    [
        (b"for=192.0.2.60;proto=http;by=203.0.113.43", ("192.0.2.60", 0), "http"),
        (b'for="[2001:db8:cafe::17]:4711"', ("2001:db8:cafe::17", 4711), None),
        (b'For="192.0.2.43:47011";Proto=HTTPS', ("192.0.2.43", 47011), "https"),
        (b"for=192.0.2.43, for=198.51.100.17;proto=https", ("198.51.100.17", 0), "https"),
        (b"for=192.0.2.43;proto=https, for=127.0.0.1", ("192.0.2.43", 0), "https"),
        (b"for=unknown", ("unknown", 0), None),
        (b'for="_gazonk"', ("_gazonk", 0), None),
        (b'for="\\"quoted\\""', ('"quoted"', 0), None),
        (b"proto=https", PEER, None),  # no for=: X-Forwarded-* (none here) and the peer
        (b'for="192.0.2.1', PEER, None),  # an unterminated quote: the element is dropped
        (b"garbage", PEER, None),
    ],
)
def test_forwarded(value: bytes, client: object, scheme: str | None) -> None:
    assert resolve("127.0.0.1", (b"forwarded", value)) == (client, scheme)
