"""Certificates for the TLS tests, made at test time with the ``openssl`` command.

`make_pki` writes a CA, a server certificate it signed (localhost,
127.0.0.1), a client certificate it signed, a second CA with a client
certificate of its own (not trusted by the server), and the server key
encrypted with `PASSWORD`.
"""

from __future__ import annotations

import select
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "s3cret"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    server_key_encrypted: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path

    def client_context(self, cert: bool = False, stranger: bool = False) -> ssl.SSLContext:
        """A client context that trusts our CA (and presents a client certificate)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.set_alpn_protocols(["http/1.1"])
        if cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        elif stranger:
            ctx.load_cert_chain(str(self.stranger_cert), str(self.stranger_key))
        return ctx


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    _run(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text(ext)
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


def make_pki(d: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(
        d,
        "server",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n",
    )
    client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    _leaf(d, "client", "ca", client_ext)
    _leaf(d, "stranger", "other-ca", client_ext)
    _run(
        "pkey", "-in", "server.key", "-aes256", "-passout", f"pass:{PASSWORD}",
        "-out", "server-encrypted.key",
        cwd=d,
    )  # fmt: skip
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        server_key_encrypted=d / "server-encrypted.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        stranger_cert=d / "stranger.pem",
        stranger_key=d / "stranger.key",
    )


def poll_plaintext(sock: ssl.SSLSocket, timeout: float) -> bytes | None:
    """Application data that arrives within `timeout`, b"" for the server's close, None if
    neither came; it does not block past `timeout`.

    The socket being readable is not enough: TLS 1.3 session tickets arrive after the
    handshake and carry no data.
    """
    if not select.select([sock], [], [], timeout)[0]:
        return None
    old = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return None
    finally:
        sock.settimeout(old)
