"""--proxy-headers: a trusted peer's Forwarded / X-Forwarded-* set the client and
scheme WSGI and ASGI apps see; an untrusted peer's change nothing.  Real sockets,
both backends, both parsers, WSGI inline, WSGI in threads, and ASGI."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backends.client import connect, exchange, request

WHO = "tests.backends.observe_apps:"
APPS: dict[str, dict[str, Any]] = {
    "wsgi": {"app": WHO + "wsgi_who"},
    "wsgi-threads": {"app": WHO + "wsgi_who", "wsgi_threads": 2},
    "asgi": {"app": WHO + "asgi_who", "lifespan": "off"},
}

# (headers, what a trusted peer's request is answered with)
SPOOFS: list[tuple[list[tuple[str, str]], str]] = [
    # the right-most untrusted address: 10.0.0.5 is one of our proxies
    (
        [
            ("X-Forwarded-For", "198.51.100.9, 203.0.113.7, 10.0.0.5"),
            ("X-Forwarded-Proto", "https"),
        ],
        "203.0.113.7 0 https",
    ),
    ([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "wss")], "203.0.113.7 0 https"),
    ([("X-Forwarded-Proto", "https")], "127.0.0.1 {port} https"),
    ([("X-Forwarded-Proto", "gopher")], "127.0.0.1 {port} http"),
    (
        [("Forwarded", 'for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.5')],
        "2001:db8:cafe::17 4711 https",
    ),
    ([("Forwarded", "for=192.0.2.60:8443;proto=http;by=203.0.113.43")], "192.0.2.60 8443 http"),
    # Forwarded wins over X-Forwarded-For
    ([("Forwarded", "for=192.0.2.61"), ("X-Forwarded-For", "203.0.113.7")], "192.0.2.61 0 http"),
    # all trusted: the left-most
    ([("X-Forwarded-For", "10.1.1.1, 10.0.0.5")], "10.1.1.1 0 http"),
    ([], "127.0.0.1 {port} http"),
]


def _answers(address: tuple[str, int]) -> list[str]:
    """Each SPOOFS request on one keep-alive connection: the bodies, with the
    client's own port put in for {port}."""
    with connect(address) as sock:
        port = sock.getsockname()[1]
        data = b"".join(request("GET", "/who", headers=h) for h, _ in SPOOFS)
        responses = exchange(sock, data, len(SPOOFS))
    assert [r.status for r in responses] == [200] * len(SPOOFS)
    return [r.body.decode().replace(str(port), "{port}") for r in responses]


@pytest.mark.parametrize("kind", list(APPS))
def test_a_trusted_proxy_sets_client_and_scheme(make_http_server: Any, kind: str) -> None:
    with make_http_server(
        proxy_headers=True, forwarded_allow_ips="127.0.0.1, 10.0.0.0/8", **APPS[kind]
    ) as srv:
        assert _answers(srv.address) == [expected for _, expected in SPOOFS]


@pytest.mark.parametrize("kind", list(APPS))
@pytest.mark.parametrize("trust", ["untrusted", "off"])
def test_an_untrusted_peer_changes_nothing(make_http_server: Any, kind: str, trust: str) -> None:
    options = (
        {"proxy_headers": True, "forwarded_allow_ips": "10.0.0.0/8, ::1"}
        if trust == "untrusted"
        else {"proxy_headers": False, "forwarded_allow_ips": "*"}
    )
    with make_http_server(**options, **APPS[kind]) as srv:
        assert _answers(srv.address) == ["127.0.0.1 {port} http"] * len(SPOOFS)


@pytest.mark.parametrize("kind", list(APPS))
def test_star_trusts_every_peer(make_http_server: Any, kind: str) -> None:
    with make_http_server(proxy_headers=True, forwarded_allow_ips="*", **APPS[kind]) as srv:
        answers = _answers(srv.address)
    # With every address trusted the chain's left-most is the client.
    assert answers[0] == "198.51.100.9 0 https"
    assert answers[7] == "10.1.1.1 0 http"
