"""TLS options: flags, RINGSERVE_* variables, what is refused and how it is named;
bad certificate, key, password and CA files as start-up errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Config, parse_config
from server.protocols.tls import TlsSetupError, make_context
from tests.support.server import clean_env
from tests.support.tls import PASSWORD, Pki, make_pki

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_ringserve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RINGSERVE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_is_off_by_default() -> None:
    config = parse_config([])
    assert not config.tls
    assert (config.ssl_cert_reqs, config.ssl_ciphers, config.ssl_version) == (0, None, 17)
    assert config.timeout_handshake == 10.0


def test_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem", "--ssl-keyfile-password", "pw"]
    argv += ["--ssl-ca-certs", "ca.pem", "--ssl-cert-reqs", "2", "--ssl-ciphers", "ECDHE+AESGCM"]
    argv += ["--ssl-version", "5", "--timeout-handshake", "2.5"]
    config = parse_config(argv)
    assert config.tls
    assert (config.ssl_certfile, config.ssl_keyfile, config.ssl_keyfile_password) == (
        "c.pem",
        "k.pem",
        "pw",
    )
    assert (config.ssl_ca_certs, config.ssl_cert_reqs, config.ssl_ciphers) == (
        "ca.pem",
        2,
        "ECDHE+AESGCM",
    )
    assert (config.ssl_version, config.timeout_handshake) == (5, 2.5)
    for name, value in [
        ("SSL_CERTFILE", "env.pem"),
        ("SSL_KEYFILE_PASSWORD", "envpw"),
        ("SSL_CA_CERTS", "envca.pem"),
        ("SSL_CERT_REQS", "1"),
        ("TIMEOUT_HANDSHAKE", "4"),
    ]:
        monkeypatch.setenv("RINGSERVE_" + name, value)
    config = parse_config([])
    assert (config.ssl_certfile, config.ssl_keyfile_password, config.ssl_ca_certs) == (
        "env.pem",
        "envpw",
        "envca.pem",
    )
    assert (config.ssl_cert_reqs, config.timeout_handshake) == (1, 4.0)
    assert parse_config(["--ssl-cert-reqs", "2"]).ssl_cert_reqs == 2  # the flag wins


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--ssl-keyfile", "k"], {}, "--ssl-keyfile is for TLS: it needs --ssl-certfile"),
        ([], {"SSL_CA_CERTS": "ca"}, "--ssl-ca-certs is for TLS: it needs --ssl-certfile"),
        (["--timeout-handshake", "3"], {}, "--timeout-handshake is for TLS"),
        (
            ["--ssl-certfile", "c", "--ssl-cert-reqs", "3"],
            {},
            "argument --ssl-cert-reqs: 3 is not one of 0 (CERT_NONE)",
        ),
        (
            ["--ssl-certfile", "c"],
            {"SSL_CERT_REQS": "7"},
            "RINGSERVE_SSL_CERT_REQS: 7 is not one of 0 (CERT_NONE)",
        ),
        (
            ["--ssl-certfile", "c", "--ssl-cert-reqs", "2"],
            {},
            "--ssl-cert-reqs 2 checks client certificates against --ssl-ca-certs: give it",
        ),
        (
            ["--ssl-certfile", "c", "--ssl-ca-certs", "ca"],
            {},
            "--ssl-ca-certs is for client certificates: it needs --ssl-cert-reqs 1 or 2",
        ),
        (["--ssl-certfile", "c", "--ssl-ciphers", "NOPE"], {}, "no cipher matches 'NOPE'"),
        (["--ssl-certfile", "c", "--ssl-version", "3"], {}, "3 is TLS 1.0, which is not offered"),
        (
            ["--ssl-certfile", "c", "--ssl-version", "16"],
            {},
            "argument --ssl-version: 16 is not one of 17 (PROTOCOL_TLS_SERVER",
        ),
        (["--ssl-certfile", "c", "--timeout-handshake", "0"], {}, "--timeout-handshake"),
    ],
)
def test_refused_with_the_option_named(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv("RINGSERVE_" + name, value)
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# -- the files ---------------------------------------------------------------------


def test_context_from_good_files(pki: Pki) -> None:
    ctx = make_context(str(pki.server_cert), str(pki.server_key), alpn=["http/1.1"])
    assert ctx.verify_mode == 0
    ctx = make_context(
        str(pki.server_cert),
        str(pki.server_key_encrypted),
        password=PASSWORD,
        ca_certs=str(pki.ca),
        cert_reqs=2,
    )
    assert ctx.verify_mode == 2
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_bad_files_are_named_with_the_cause(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    both = tmp_path / "both.pem"  # certificate and key in one file
    both.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    cert, key = str(pki.server_cert), str(pki.server_key)
    cases: list[tuple[dict[str, object], str]] = [
        ({"certfile": "/nonexistent.pem"}, "--ssl-certfile /nonexistent.pem: cannot read it"),
        ({"certfile": cert, "keyfile": "/nope.key"}, "--ssl-keyfile /nope.key: cannot read it"),
        ({"certfile": str(junk), "keyfile": key}, f"--ssl-certfile {junk}: no PEM certificate"),
        ({"certfile": cert, "keyfile": str(junk)}, f"--ssl-keyfile {junk}: no PEM private key"),
        ({"certfile": cert}, f"--ssl-certfile {cert}: no PEM private key"),
        (
            {"certfile": cert, "keyfile": str(pki.client_key)},
            f"--ssl-keyfile {pki.client_key}: the private key does not match the certificate",
        ),
        (
            {"certfile": cert, "keyfile": str(pki.server_key_encrypted)},
            "the key is encrypted; give --ssl-keyfile-password",
        ),
        (
            {"certfile": cert, "keyfile": str(pki.server_key_encrypted), "password": "wrong"},
            "cannot decrypt the key: wrong --ssl-keyfile-password",
        ),
        (
            {"certfile": cert, "keyfile": key, "ca_certs": str(junk), "cert_reqs": 2},
            f"--ssl-ca-certs {junk}: no PEM CA certificate",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(TlsSetupError) as exc:
            make_context(**kwargs)  # type: ignore[arg-type]
        assert message in str(exc.value), (kwargs, str(exc.value))
    assert make_context(str(both)) is not None  # the key inside --ssl-certfile


def test_bad_key_exits_1_at_start_up(pki: Pki) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--backend", "epoll", "--port", "0",
         "--ssl-certfile", str(pki.server_cert), "--ssl-keyfile", str(pki.server_key_encrypted)],
        cwd=ROOT,
        env=clean_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith(
        f"ringserve: error: --ssl-keyfile {pki.server_key_encrypted}: the key is encrypted"
    ), proc.stderr
    assert '"event": "listening"' not in proc.stdout


def test_listening_line_says_tls(pki: Pki) -> None:
    assert Config().tls is False
    from tests.support.server import ServerProcess

    with ServerProcess(
        "--backend", "epoll", "--port", "0",
        "--ssl-certfile", str(pki.server_cert), "--ssl-keyfile", str(pki.server_key),
        env=clean_env(PYTHONPATH=str(ROOT)),
    ).start() as proc:  # fmt: skip
        assert proc.listening["tls"] is True
        assert "listening on https://127.0.0.1:" in proc.banner


def test_workers_check_the_files_once_in_the_parent(pki: Pki) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--backend", "epoll", "--port", "0", "--workers", "2",
         "--ssl-certfile", "/nonexistent.pem"],
        cwd=ROOT,
        env=clean_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc
    assert proc.stderr == (
        "ringserve: error: --ssl-certfile /nonexistent.pem: cannot read it "
        "(No such file or directory)\n"
    )


def test_workers_serve_tls(pki: Pki) -> None:
    import socket

    from tests.support.server import ServerProcess

    with ServerProcess(
        "--backend", "epoll", "--port", "0", "--workers", "2",
        "--ssl-certfile", str(pki.server_cert), "--ssl-keyfile", str(pki.server_key),
        env=clean_env(PYTHONPATH=str(ROOT)),
    ).start() as proc:  # fmt: skip
        port = proc.listening["port"]
        for _ in range(4):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                pki.client_context().wrap_socket(raw, server_hostname="localhost") as sock,
            ):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(
                    b"Hello from ringserve\n"
                ), data
