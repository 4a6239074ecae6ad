"""Proxy headers: the client and scheme a trusted proxy says a request came with.

``--proxy-headers`` trusts the peers ``--forwarded-allow-ips`` names, and
for their requests reads ``Forwarded`` (RFC 7239) or ``X-Forwarded-For`` /
``X-Forwarded-Proto``; any other peer's headers change nothing.  No I/O and
no parser imports: `server.config` validates the option with `ProxyHeaders`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class ProxyHeaders:
    """Which peers are trusted proxies, and what their headers say.

    Args:
        allow: ``--forwarded-allow-ips``: comma-separated addresses and CIDR
            networks (``10.0.0.0/8``, ``::1``), or ``*`` for every peer.

    Raises:
        ValueError: an entry is neither an address nor a network.
    """

    def __init__(self, allow: str) -> None:
        self.all = False
        self.networks: list[IpNetwork] = []
        for raw in allow.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                self.all = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None

    def trusts(self, host: str) -> bool:
        """Whether `host` (an address as text) is a trusted proxy."""
        if self.all:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # "unknown", an obfuscated node, a name
        return any(address in network for network in self.networks)

    def resolve(
        self, headers: Any, peer: tuple[str, int] | None
    ) -> tuple[tuple[str, int] | None, str | None]:
        """The client and scheme of a request a trusted proxy sent (scheme None:
        no header says, the listener's holds).

        ``Forwarded`` wins over ``X-Forwarded-*`` when it names a client.
        The client is the right-most address in the chain that is not a
        trusted proxy (the left-most if all are: that client is a proxy of
        ours too), as uvicorn does for X-Forwarded-For; the scheme is that
        hop's ``proto=`` (Forwarded), or the right-most X-Forwarded-Proto
        (what our proxy saw).  Unusable values change nothing.
        """
        forwarded: list[bytes] = []
        xff: list[bytes] = []
        xfp = b""
        for name, value in headers:
            if name == b"forwarded":
                forwarded.append(value)
            elif name == b"x-forwarded-for":
                xff.append(value)
            elif name == b"x-forwarded-proto":
                xfp = value
        client: tuple[str, int] | None = peer
        scheme: str | None = None  # the listener's, unless a header says
        if forwarded:
            nodes = _forwarded_elements(b",".join(forwarded).decode("latin-1"))
            hop = self._pick([n for n in nodes if "for" in n], lambda n: n["for"][0])
            if hop is not None:
                client = hop["for"]
                proto = hop.get("proto")
                if proto is not None:
                    scheme = SCHEMES.get(proto[0].lower(), scheme)
                return client, scheme
        if xff:
            hosts = [h.strip() for h in b",".join(xff).decode("latin-1").split(",")]
            host = self._pick([h for h in hosts if h], lambda h: h)
            if host is not None:
                client = (_strip_brackets(host), 0)
        if xfp:
            proto = xfp.decode("latin-1").rsplit(",", 1)[-1].strip().lower()
            scheme = SCHEMES.get(proto, scheme)
        return client, scheme

    def _pick(self, chain: list[Any], host_of: Any) -> Any:
        if not chain:
            return None
        if not self.all:
            for item in reversed(chain):
                if not self.trusts(host_of(item)):
                    return item
        return chain[0]


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host


def _node(value: str) -> tuple[str, int]:
    """An RFC 7239 node (``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]:80``,
    ``unknown``, ``_hidden``) as (host, port); port 0 when none is given."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""  # IPv4, a bare IPv6 (not RFC 7239, but seen), or a name
    return host, int(port) if port.isdigit() else 0


def _forwarded_elements(text: str) -> list[dict[str, Any]]:
    """RFC 7239's ``Forwarded`` value: elements (comma-separated) of pairs
    (semicolon-separated), values a token or a quoted-string; ``for`` parsed
    as a node.  A malformed element is skipped."""
    elements: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    i, n = 0, len(text)
    ok = True
    while i <= n:
        if i == n or text[i] == ",":
            if ok and current:
                elements.append(current)
            current, ok = {}, True
            i += 1
            continue
        if text[i] in " \t;":
            i += 1
            continue
        eq = text.find("=", i)
        if eq < 0:
            ok = False
            i = n
            continue
        key = text[i:eq].strip().lower()
        i = eq + 1
        if i < n and text[i] == '"':
            j = i + 1
            chars = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(text[j])
                j += 1
            if j >= n:
                ok = False
            value = "".join(chars)
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ";,":
                j += 1
            value = text[i:j].strip()
            i = j
        if key == "for":
            current["for"] = _node(value)
        elif key == "proto":
            current["proto"] = (value,)
        elif key:
            current[key] = value
    return elements
