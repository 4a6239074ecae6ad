"""--metrics: the /stats counters in the Prometheus text format (0.0.4) on a
listener of their own, scraped with a real HTTP client and parsed strictly."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from server.config import Config
from server.lifecycle import Server, StartupError
from server.metrics import METRICS, exposition
from tests.backends.client import connect, exchange, request, wait_for
from tests.support import open_fds

ROOT = Path(__file__).resolve().parents[2]
_NAME = r"ringserve_[a-z_]+"
_SAMPLE = re.compile(
    rf'({_NAME})(\{{[a-z]+="[^"]*"(?:,[a-z]+="[^"]*")*\}})? (-?[0-9]+(?:\.[0-9]+)?)'
)


def parse(text: str) -> dict[str, tuple[str, str, float]]:
    """name -> (type, labels, value), checking the 0.0.4 grammar as it goes: each
    metric a HELP line, a TYPE line, one sample; counters end in _total; the
    text ends with a newline."""
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert len(lines) % 3 == 0, lines
    out: dict[str, tuple[str, str, float]] = {}
    for i in range(0, len(lines), 3):
        help_line, type_line, sample = lines[i : i + 3]
        m = re.fullmatch(rf"# HELP ({_NAME}) \S.*", help_line)
        assert m, help_line
        name = m[1]
        assert type_line in (f"# TYPE {name} counter", f"# TYPE {name} gauge"), type_line
        kind = type_line.rsplit(" ", 1)[1]
        assert name.endswith("_total") == (kind == "counter"), name
        s = _SAMPLE.fullmatch(sample)
        assert s and s[1] == name, sample
        assert name not in out
        out[name] = (kind, s[2] or "", float(s[3]))
    return out


def scrape(address: tuple[str, int], path: str = "/metrics") -> tuple[int, str, str]:
    """(status, content type, body) of a GET with urllib."""
    url = f"http://{address[0]}:{address[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["content-type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:  # its socket, else closed whenever it is collected (a later test's fd count)
            return exc.code, exc.headers["content-type"], exc.read().decode()


def test_exposition_has_every_stats_field() -> None:
    stats = {"backend": "epoll", "pid": 7, "uptime_s": 1.5, **{k: 3 for k in METRICS}}
    stats["uptime_s"] = 1.5
    metrics = parse(exposition(stats).decode())
    assert metrics["ringserve_info"] == ("gauge", '{backend="epoll",pid="7"}', 1)
    assert metrics["ringserve_uptime_seconds"] == ("gauge", "", 1.5)
    assert metrics["ringserve_open_connections"] == ("gauge", "", 3)
    assert metrics["ringserve_requests_total"] == ("counter", "", 3)
    assert len(metrics) == len(METRICS) + 1


STABLE = {  # fields a scrape does not change
    "open_connections": "ringserve_open_connections",
    "accepted": "ringserve_accepted_total",
    "bytes_in": "ringserve_received_bytes_total",
    "bytes_out": "ringserve_sent_bytes_total",
    "requests": "ringserve_requests_total",
    "client_errors": "ringserve_client_errors_total",
    "app_errors": "ringserve_app_errors_total",
    "timeouts": "ringserve_timeouts_total",
    "internal_errors": "ringserve_internal_errors_total",
    "accept_errors": "ringserve_accept_errors_total",
    "paused_reads": "ringserve_paused_reads_total",
}


def _check_against_stats(srv: Any, requests: int, client_errors: int) -> None:
    assert srv.server.metrics_address is not None
    wait_for(lambda: srv.stats()["open_connections"] == 0)  # the clients' closes are seen
    before = srv.stats()
    status, ctype, body = scrape(srv.server.metrics_address)
    after = srv.stats()
    assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
    metrics = parse(body)
    assert set(metrics) == {"ringserve_info"} | {f"ringserve_{n}" for n, _, _ in METRICS.values()}
    assert metrics["ringserve_info"] == (
        "gauge",
        f'{{backend="{srv.config.backend}",pid="{os.getpid()}"}}',
        1,
    )
    for field, name in STABLE.items():
        assert metrics[name][2] == before[field] == after[field], name
    assert metrics["ringserve_requests_total"][2] == requests
    assert metrics["ringserve_client_errors_total"][2] == client_errors
    for field, name in (
        ("wait_calls", "ringserve_wait_calls_total"),
        ("syscalls", "ringserve_syscalls_total"),
    ):
        assert before[field] <= metrics[name][2] <= after[field]
    # uring: the scrape's own connection is watched by a poll op while it lasts.
    assert before["ops_in_flight"] <= metrics["ringserve_ops_in_flight"][2]
    assert metrics["ringserve_ops_in_flight"][2] <= before["ops_in_flight"] + 1
    assert before["uptime_s"] <= metrics["ringserve_uptime_seconds"][2] <= after["uptime_s"]


def test_metrics_match_stats_after_known_traffic(make_http_server: Any) -> None:
    with make_http_server(metrics="127.0.0.1:0") as srv:
        with connect(srv.address) as sock:
            responses = exchange(sock, request("GET", "/") + request("POST", "/echo", b"x" * 10), 2)
            assert [r.status for r in responses] == [200, 200]
        with connect(srv.address) as sock:
            sock.sendall(b"\x01\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        with connect(srv.address) as sock:  # /stats says the same, less its own request
            stats = json.loads(exchange(sock, request("GET", "/stats"), 1)[0].body)
            assert stats["requests"] == 2 and stats["client_errors"] == 1
        _check_against_stats(srv, requests=3, client_errors=1)


def test_metrics_whatever_the_app_serves(make_http_server: Any) -> None:
    app = {"app": "tests.backends.observe_apps:asgi_who", "lifespan": "off"}
    with make_http_server(metrics="127.0.0.1:0", **app) as srv:
        with connect(srv.address) as sock:
            exchange(sock, request("GET", "/metrics") + request("GET", "/stats"), 2)
        _check_against_stats(srv, requests=2, client_errors=0)


def test_other_paths_methods_and_bad_requests(make_server: Any) -> None:
    with make_server(metrics="127.0.0.1:0") as srv:
        address = srv.server.metrics_address
        assert scrape(address, "/metrics?x=1")[0] == 200
        assert scrape(address, "/")[:2] == (404, "text/plain")
        assert scrape(address, "/metricsx")[0] == 404
        conn = http.client.HTTPConnection(*address, timeout=5)
        conn.request("POST", "/metrics", body=b"")
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("allow"), resp.read()) == (
            405,
            "GET, HEAD",
            b"405 Method Not Allowed\n",
        )
        conn.close()
        conn = http.client.HTTPConnection(*address, timeout=5)
        conn.request("HEAD", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.getheader("content-length")) > 0
        assert resp.read() == b""
        conn.close()
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(b"hello\r\n\r\n")
            assert sock.recv(1000).startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert sock.recv(1000) == b""


def test_a_busy_metrics_port_fails_startup(backend_name: str) -> None:
    fds = open_fds()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = Config(backend=backend_name, port=0, metrics=f"127.0.0.1:{port}")  # type: ignore[arg-type]
        server = Server(config)
        with pytest.raises(StartupError) as exc:
            server.startup()
        server.shutdown()
        assert (
            str(exc.value) == f"cannot listen on --metrics 127.0.0.1:{port}: Address already in use"
        )
    assert open_fds() == fds


def _free_ports(n: int) -> int:
    """A port P with P..P+n-1 free now (bound and released)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port range")


def test_each_worker_serves_its_own_counters_across_a_reload(spawn: Any) -> None:
    base = _free_ports(3)  # the server's port, then one per worker
    srv = spawn(
        "--backend", "epoll", "--port", str(base), "--workers", "2",
        env={"RINGSERVE_METRICS": f"127.0.0.1:{base + 1}"},
    )  # fmt: skip
    srv.start()
    ports = (base + 1, base + 2)

    def served_pids(first: int) -> dict[int, int]:
        """Each metrics port -> the pid its scrape names, once the workers from the
        `first`-th listening line on are all up."""
        wait_for(lambda: len(srv.json_lines("listening")) >= first + 2, timeout=30)
        events = srv.json_lines("listening")[first:]
        by_port = {int(e["metrics"].rpartition(":")[2]): e["pid"] for e in events}
        assert set(by_port) == set(ports), events
        for port in ports:
            status, _, body = scrape(("127.0.0.1", port))
            assert status == 200
            assert f'pid="{by_port[port]}"' in parse(body)["ringserve_info"][1]
        return by_port

    old = served_pids(0)
    # SIGHUP: each slot's new worker binds its port while the old one drains
    # (SO_REUSEPORT); once the old ones are gone, every scrape names a new one.
    srv.signal(signal.SIGHUP)
    wait_for(
        lambda: set(old.values()) <= {e["pid"] for e in srv.json_lines("exit")},
        timeout=30,
        what=lambda: f"the old workers to exit\n{srv.output()}",
    )
    new = served_pids(2)
    assert not set(new.values()) & set(old.values())
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
