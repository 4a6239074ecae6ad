"""Tuning options: parsed from flags and environment, and applied where they act."""

from __future__ import annotations

import socket

import pytest

from server import config as config_module
from server.config import Config, parse_config
from server.listeners import tcp_listener
from tests.support import URING_SKIP


@pytest.fixture(autouse=True)
def _no_ringserve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RINGSERVE_TCP_NODELAY",
        "RINGSERVE_CQ_FACTOR",
        "RINGSERVE_RING_ENTRIES",
        "RINGSERVE_TIMEOUT_HEADER",
        "RINGSERVE_SQPOLL",
        "RINGSERVE_UDS",
        "RINGSERVE_UDS_MODE",
        "RINGSERVE_FD",
        "RINGSERVE_HOST",
        "RINGSERVE_PORT",
        "RINGSERVE_PROTOCOL",
        "RINGSERVE_WORKERS",
        "RINGSERVE_MAX_REQUESTS",
        "RINGSERVE_MAX_REQUESTS_JITTER",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, True),
        (["--no-tcp-nodelay"], {}, False),
        (["--tcp-nodelay"], {"RINGSERVE_TCP_NODELAY": "0"}, True),
        ([], {"RINGSERVE_TCP_NODELAY": "off"}, False),
        ([], {"RINGSERVE_TCP_NODELAY": "Yes"}, True),
    ],
)
def test_tcp_nodelay_from_flag_then_environment(
    argv: list[str], env: dict[str, str], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert parse_config(argv).tcp_nodelay is expected


@pytest.mark.parametrize("name", ["RINGSERVE_TCP_NODELAY", "RINGSERVE_SQPOLL"])
def test_boolean_environment_must_be_a_boolean(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RINGSERVE_SQPOLL used to read anything but a true-ish word as off, silently."""
    monkeypatch.setenv(name, "maybe")
    with pytest.raises(SystemExit) as exc:
        parse_config([])
    assert exc.value.code == 2
    assert f"{name}: 'maybe' is not a boolean" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], None, False),
        ([], "1", True),
        ([], "Off", False),
        (["--sqpoll"], "0", True),  # the command line wins
    ],
)
def test_sqpoll_from_flag_then_environment(
    argv: list[str], env: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is not None:
        monkeypatch.setenv("RINGSERVE_SQPOLL", env)
    assert parse_config(argv).sqpoll is expected


def test_cq_factor_is_bounded_by_the_kernel_cq_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_config(["--ring-entries", "4096", "--cq-factor", "16"]).cq_factor == 16
    with pytest.raises(SystemExit) as exc:
        parse_config(["--ring-entries", "8192", "--cq-factor", "16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ring-entries 8192 x --cq-factor 16 is over the kernel's 65536 CQ entries" in err


@pytest.mark.parametrize("nodelay", [True, False])
def test_accepted_sockets_inherit_tcp_nodelay_from_the_listener(nodelay: bool) -> None:
    """Both backends rely on Linux copying TCP_NODELAY on accept (no per-connection syscall)."""
    listener = tcp_listener(Config(port=0, tcp_nodelay=nodelay))
    with listener, socket.create_connection(listener.getsockname()[:2], timeout=5):
        listener.setblocking(True)
        accepted, _ = listener.accept()
        with accepted:
            assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == int(nodelay)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == int(nodelay)


@pytest.mark.skipif(URING_SKIP is not None, reason=str(URING_SKIP))
def test_cq_factor_sizes_the_completion_queue() -> None:
    from server.backends.uring import UringBackend
    from uring_backend import ring

    # config.py keeps its own copy of the limit so that epoll never imports the extension.
    assert config_module.MAX_CQ_ENTRIES == ring.MAX_CQ_ENTRIES
    backend = UringBackend(Config(ring_entries=64, cq_factor=16).backend_options())
    try:
        assert backend.describe()["sq_entries"] == 64
        assert backend.describe()["cq_entries"] == 1024
    finally:
        backend.shutdown()


def test_header_timeout_from_flag_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config().timeout_header == 20.0
    monkeypatch.setenv("RINGSERVE_TIMEOUT_HEADER", "7.5")
    assert parse_config([]).timeout_header == 7.5
    assert parse_config(["--timeout-header", "2"]).timeout_header == 2.0


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_header_timeout_must_be_a_positive_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(["--timeout-header", value])
    assert exc.value.code == 2
    assert "--timeout-header" in capsys.readouterr().err


DEPRECATED = [
    ("--keepalive-timeout", "--timeout-keep-alive", "timeout_keep_alive"),
    ("--idle-timeout", "--timeout-read", "timeout_read"),
    ("--header-timeout", "--timeout-header", "timeout_header"),
    ("--grace-period", "--timeout-graceful-shutdown", "timeout_graceful_shutdown"),
]


@pytest.mark.parametrize(("old", "new", "field"), DEPRECATED)
def test_a_deprecated_timeout_flag_sets_the_new_option_and_warns(
    old: str, new: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert getattr(parse_config([old, "7"]), field) == 7.0
    assert capsys.readouterr().err == f"ringserve: warning: {old} is deprecated; use {new}\n"
    assert getattr(parse_config([new, "8"]), field) == 8.0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("old", "new", "field"), DEPRECATED)
def test_a_deprecated_timeout_variable_still_works_and_the_new_one_wins(
    old: str, new: str, field: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    old_env = "RINGSERVE_" + old[2:].replace("-", "_").upper()
    new_env = "RINGSERVE_" + new[2:].replace("-", "_").upper()
    monkeypatch.delenv(new_env, raising=False)
    monkeypatch.setenv(old_env, "3")
    assert getattr(parse_config([]), field) == 3.0
    assert (
        capsys.readouterr().err == f"ringserve: warning: {old_env} is deprecated; use {new_env}\n"
    )
    monkeypatch.setenv(new_env, "4")
    assert getattr(parse_config([]), field) == 4.0
    assert capsys.readouterr().err == ""


def test_http_parser_choice(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("RINGSERVE_HTTP", raising=False)
    assert Config().http == "h11"
    assert parse_config(["--http", "httptools"]).http == "httptools"
    monkeypatch.setenv("RINGSERVE_HTTP", "httptools")
    assert parse_config([]).http == "httptools"
    monkeypatch.setenv("RINGSERVE_HTTP", "picohttp")
    with pytest.raises(SystemExit):
        parse_config([])
    assert "RINGSERVE_HTTP: invalid choice 'picohttp' (choose from h11, httptools)" in (
        capsys.readouterr().err
    )


# -- the listening socket and the workers ---------------------------------------------


def test_socket_and_worker_options_from_flags_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse_config([])
    assert (config.uds, config.uds_mode, config.fd) == (None, 0o666, None)
    assert (config.max_requests, config.max_requests_jitter) == (0, 0)
    config = parse_config(["--uds", "/run/r.sock", "--uds-mode", "660"])
    assert (config.uds, config.uds_mode) == ("/run/r.sock", 0o660)
    assert parse_config(["--fd", "3"]).fd == 3
    config = parse_config(["--max-requests", "1000", "--max-requests-jitter", "50"])
    assert (config.max_requests, config.max_requests_jitter) == (1000, 50)
    monkeypatch.setenv("RINGSERVE_UDS", "/run/env.sock")
    monkeypatch.setenv("RINGSERVE_UDS_MODE", "0o600")
    monkeypatch.setenv("RINGSERVE_MAX_REQUESTS", "7")
    monkeypatch.setenv("RINGSERVE_MAX_REQUESTS_JITTER", "3")
    config = parse_config([])
    assert (config.uds, config.uds_mode, config.max_requests) == ("/run/env.sock", 0o600, 7)
    assert config.max_requests_jitter == 3
    assert parse_config(["--uds", "/run/cli.sock"]).uds == "/run/cli.sock"  # the command line wins


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--uds-mode", "9"], {}, "argument --uds-mode: '9' is not an octal mode (e.g. 660)"),
        (["--uds-mode", "1777"], {}, "argument --uds-mode: 1777 is not a mode between 000 and 777"),
        ([], {"RINGSERVE_UDS_MODE": "rw"}, "RINGSERVE_UDS_MODE: 'rw' is not an octal mode"),
        (["--uds", ""], {}, "argument --uds: the path is empty"),
        (["--uds", "/" + "x" * 107], {}, "the path is 108 bytes; a Unix socket path has at most"),
        (["--fd", "-1"], {}, "argument --fd: -1 must be 0 or more"),
        ([], {"RINGSERVE_FD": "three"}, "RINGSERVE_FD: invalid literal for int()"),
        (["--max-requests", "-5"], {}, "argument --max-requests: -5 must be 0 or more"),
        ([], {"RINGSERVE_MAX_REQUESTS_JITTER": "-1"}, "RINGSERVE_MAX_REQUESTS_JITTER: -1 must be"),
        (["--uds", "/r.sock", "--fd", "3"], {}, "--uds and --fd both name the socket to serve"),
        (["--uds", "/r.sock", "--port", "80"], {}, "--port is for TCP; it cannot be "
                                                   "combined with --uds"),
        (["--fd", "3"], {"RINGSERVE_HOST": "::1"}, "--host is for TCP; it cannot be "
                                                   "combined with --fd"),
        (["--uds-mode", "600"], {}, "--uds-mode needs --uds"),
        (["--max-requests-jitter", "5"], {}, "--max-requests-jitter needs --max-requests"),
        (
            ["--max-requests", "5", "--protocol", "echo"],
            {},
            "--max-requests counts HTTP requests; it cannot be used with --protocol echo",
        ),
    ],
)  # fmt: skip
def test_socket_and_worker_options_are_validated(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
