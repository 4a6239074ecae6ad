"""Real HTTP clients against both backends: curl, http.client, wrk and ab.

A test is skipped only when its tool is not installed.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.backends.client import HELLO, pattern, sha256

pytestmark = pytest.mark.timeout(40)


@pytest.fixture
def make_server(make_http_server: Any) -> Any:
    """Every test here is HTTP: it runs with each parser as well as on each backend."""
    return make_http_server


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def run(args: list[str], timeout: float = 15.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=timeout, check=False)


def url(srv, path: str = "/") -> str:
    host, port = srv.address
    return f"http://{host}:{port}{path}"


# -- curl ---------------------------------------------------------------------


def test_curl_reuses_keepalive_connection(make_server) -> None:
    curl = tool("curl")
    with make_server() as srv:
        u = url(srv)
        proc = run(
            [curl, "-sS", "-v", "--max-time", "10", u, u, "--write-out", "[%{num_connects}]"]
        )
        assert proc.returncode == 0, proc.stderr.decode()
        # The second transfer made no new connection.
        assert proc.stdout == HELLO + b"[1]" + HELLO + b"[0]"
        assert b"Re-using existing connection" in proc.stderr
        assert srv.stats()["accepted"] == 1
        assert srv.stats()["requests"] == 2


def test_curl_http10(make_server) -> None:
    curl = tool("curl")
    with make_server() as srv:
        u = url(srv)
        proc = run([curl, "-sS", "-0", "-v", "--max-time", "10", u, u])
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout == HELLO * 2
        assert b"> GET / HTTP/1.0" in proc.stderr
        # HTTP/1.0 without keep-alive: a close after each response, so two connections.
        assert srv.stats()["accepted"] == 2


def test_curl_chunked_upload(make_server, tmp_path: Path) -> None:
    curl = tool("curl")
    data = pattern(300_000, 30)
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    with make_server() as srv:
        proc = run(
            [
                curl,
                "-sS",
                "-v",
                "--max-time",
                "10",
                "-H",
                "Transfer-Encoding: chunked",
                "-H",
                "Content-Type: application/x-test",
                "--data-binary",
                f"@{src}",
                url(srv, "/echo"),
            ]
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Transfer-Encoding: chunked" in proc.stderr
    assert b"< HTTP/1.1 200 OK" in proc.stderr
    assert b"< content-type: application/x-test" in proc.stderr
    assert len(proc.stdout) == len(data)
    assert sha256(proc.stdout) == sha256(data)


def test_curl_post_large_body_with_expect_continue(make_server, tmp_path: Path) -> None:
    curl = tool("curl")
    data = pattern(2_000_000, 31)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with make_server(max_body_bytes=4 << 20) as srv:
        # curl sends "Expect: 100-continue" for a body this large.
        proc = run(
            [curl, "-sS", "-v", "--max-time", "10", "--data-binary", f"@{src}", url(srv, "/echo")]
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Expect: 100-continue" in proc.stderr
    assert b"< HTTP/1.1 100 Continue" in proc.stderr
    assert sha256(proc.stdout) == sha256(data)


def test_curl_gets_413_for_oversize_body(make_server, tmp_path: Path) -> None:
    curl = tool("curl")
    src = tmp_path / "big.bin"
    src.write_bytes(pattern(2_000_000, 32))
    with make_server(max_body_bytes=1 << 20) as srv:
        proc = run(
            [
                curl,
                "-sS",
                "--max-time",
                "10",
                "--data-binary",
                f"@{src}",
                "--write-out",
                "[%{http_code}]",
                url(srv, "/echo"),
            ]
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"413 Request Entity Too Large\n[413]"


# -- http.client --------------------------------------------------------------


def test_http_client_keepalive(make_server, backend_name) -> None:
    with make_server() as srv:
        host, port = srv.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, HELLO)
            sock = conn.sock
            assert sock is not None

            body = pattern(100_000, 40)
            conn.request("POST", "/echo", body=body, headers={"Content-Type": "x/y"})
            resp = conn.getresponse()
            assert resp.getheader("Content-Type") == "x/y"
            assert sha256(resp.read()) == sha256(body)

            conn.request("HEAD", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.read(), resp.getheader("Content-Length")) == (200, b"", "21")

            conn.request("GET", "/missing")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (404, b"404 Not Found\n")

            conn.request("GET", "/stats")
            resp = conn.getresponse()
            stats = json.loads(resp.read())
            assert conn.sock is sock  # every request on the one connection
        finally:
            conn.close()
    assert stats["backend"] == backend_name
    assert stats["accepted"] == 1
    assert stats["requests"] == 4


# -- load tools ----------------------------------------------------------------


def test_wrk(make_server) -> None:
    wrk = tool("wrk")
    with make_server() as srv:
        proc = run([wrk, "-t1", "-c10", "-d1s", "--timeout", "5s", url(srv)], timeout=20)
        stats = srv.stats()
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    m = re.search(r"(\d+) requests in ", out)
    assert m, out
    assert int(m[1]) > 0
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out
    assert stats["requests"] >= int(m[1])
    assert (stats["client_errors"], stats["app_errors"]) == (0, 0)


def test_wrk_post_echo(make_server, tmp_path: Path) -> None:
    wrk = tool("wrk")
    script = tmp_path / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.body = string.rep("abcdefgh", 2048)\n'
        'wrk.headers["Content-Type"] = "text/plain"\n'
        "response = function(status, headers, body)\n"
        '  if status ~= 200 or #body ~= 16384 then error("bad echo") end\n'
        "end\n"
    )
    with make_server() as srv:
        proc = run(
            [wrk, "-t1", "-c10", "-d1s", "--timeout", "5s", "-s", str(script), url(srv, "/echo")],
            timeout=20,
        )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    m = re.search(r"(\d+) requests in ", out)
    assert m and int(m[1]) > 0, out
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "close"])
def test_ab(make_server, keepalive: bool) -> None:
    ab = tool("ab")
    with make_server() as srv:
        args = [ab, "-n", "2000", "-c", "10", "-s", "10"]
        if keepalive:
            args.append("-k")
        proc = run([*args, url(srv)], timeout=30)
        stats = srv.stats()
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert re.search(r"^Complete requests:\s+2000$", out, re.M), out
    assert re.search(r"^Failed requests:\s+0$", out, re.M), out
    assert "Non-2xx" not in out, out
    assert re.search(r"^Document Length:\s+21 bytes$", out, re.M), out
    assert stats["requests"] == 2000


def test_http_client_sending_oversize_body_in_full_gets_413(make_server) -> None:
    """http.client sends the whole body without waiting: the 413 must still be readable."""
    with make_server(max_body_bytes=1 << 20) as srv:
        conn = http.client.HTTPConnection(*srv.address, timeout=10)
        try:
            conn.request("POST", "/echo", body=b"x" * (4 << 20))
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (413, b"413 Request Entity Too Large\n")
            assert resp.getheader("Connection") == "close"
        finally:
            conn.close()
