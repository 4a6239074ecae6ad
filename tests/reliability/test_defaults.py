"""Secure defaults: loopback only, and every limit on."""

from __future__ import annotations

import os

import psutil
import pytest

from server.config import Config, parse_config
from server.protocols.http.common import HttpLimits
from tests.support.server import local_server


def _check(config: Config) -> None:
    assert config.host == "127.0.0.1"
    assert 1024 <= config.max_header_bytes <= 64 * 1024
    assert 0 < config.max_body_bytes <= 16 * 1024 * 1024
    assert 0 < config.max_connections <= 100_000
    assert 0 < config.backlog <= 65535
    assert 0 < config.timeout_keep_alive <= 120
    assert 0 < config.timeout_read <= 300
    assert 0 < config.timeout_graceful_shutdown <= 120
    assert config.workers == 1
    assert config.app is None
    assert not config.sqpoll


def test_default_config_is_loopback_with_every_limit_on() -> None:
    _check(Config())


def test_the_cli_defaults_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RINGSERVE_"):
            monkeypatch.delenv(name)
    config = parse_config([])
    _check(config)
    assert config == Config()


def test_protocol_limits_default_to_the_config_limits() -> None:
    assert HttpLimits().max_header_bytes == Config().max_header_bytes
    assert HttpLimits().max_body_bytes == Config().max_body_bytes


def test_a_server_started_without_host_listens_on_loopback_only(backend_name: str) -> None:
    with local_server(backend_name, "http", host=None) as server:
        assert server.address[0] == "127.0.0.1"
        listening = [
            c
            for c in psutil.Process(server.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]
        assert server.stop() == 0
