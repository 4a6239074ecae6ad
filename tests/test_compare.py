"""`python -m loadtest.compare` end to end: real servers, real Locust, real wrk.

Short runs (a couple of seconds per point) that prove the whole path works and
writes its files; they assert figures exist and are non-zero, never a speed.
Each run's processes carry a unique environment tag, so the tests can check
that nothing the comparison started is still running afterwards (peer servers
and the compiled C echo server included).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from examples import asgi_hello
from loadtest import compare as compare_module
from loadtest import h11_ceiling
from loadtest.peers import wsgi_app
from loadtest.results import Metadata, ceiling_lines, records, result_from_run, tables
from loadtest.servers import RunError, ServerProcess, ServerSnapshot, server_argv
from loadtest.tools import ToolResult, locust_percentile, parse_wrk
from server.apps.asgi import AsgiApp
from server.apps.builtin import BuiltinApp
from server.apps.wsgi import WsgiAdapter, load_app
from server.protocols.http.common import Request
from tests.support import URING_SKIP, open_fds

ROOT = Path(__file__).resolve().parent.parent
TAG_VAR = "LOADTEST_COMPARE_TEST_TAG"
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="cc is not installed")
needs_granian = pytest.mark.skipif(
    importlib.util.find_spec("granian") is None,
    reason="granian is not installed (pip install -e '.[loadtest]')",
)
OURS = ("uring", "epoll")


def tagged_processes(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG_VAR) == tag:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def compare(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the comparison; assert afterwards that it left no process behind."""
    tag = uuid.uuid4().hex
    full_env = {**os.environ, TAG_VAR: tag, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.compare", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    left = tagged_processes(tag)
    assert not left, f"left running: {[p.cmdline() for p in left]}"
    return done


def check_outputs(out: Path, tools: set[str], connections: set[int], stdout: str) -> None:
    records: list[dict[str, Any]] = json.loads((out / "results.json").read_text())
    keys = {(r["tool"], r["backend"], r["connections"]) for r in records}
    assert keys == {(t, b, c) for t in tools for b in ("uring", "epoll") for c in connections}
    for r in records:
        where = f"{r['tool']} {r['backend']} c={r['connections']}"
        assert r["requests_per_s"] > 0, where
        assert r["requests"] > 0 and r["server_requests"] > 0, where
        assert r["errors"] == 0, where
        assert r["syscalls_per_request"] > 0 and r["wait_calls_per_request"] > 0, where
        assert r["cpu_s"] > 0 and r["peak_rss_kib"] > 0, where
        split = r["user_us_per_request"] + r["system_us_per_request"]
        assert split == pytest.approx(r["cpu_us_per_request"], rel=1e-4), where
        assert r["p99_ms"] >= r["p50_ms"] >= 0 and r["avg_ms"] > 0, where
        assert r["server_exit_status"] == 0, where
        for key in ("kernel", "cpu_model", "cpu_count", "python", "liburing", "h11", "locust"):
            assert r[key], (where, key)
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(records)
    for tool in tools:
        png = next(out.glob(f"*_{tool}.png"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "u/e" in stdout and "syscalls/req" in stdout


@needs_wrk
def test_http_both_tools_both_backends(tmp_path: Path) -> None:
    out = tmp_path / "http"
    done = compare(
        "--protocol", "http", "--backends", "uring,epoll", "--tools", "locust,saturation",
        "--connections", "1,4", "--duration", "2", "--warmup", "0.5", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    check_outputs(out, {"locust", "wrk"}, {1, 4}, done.stdout)
    assert "pinning:" in done.stdout
    assert "c=4: uring reaches" in done.stdout and "of the h11 ceiling" in done.stdout


def test_echo_both_tools_both_backends(tmp_path: Path) -> None:
    out = tmp_path / "echo"
    done = compare(
        "--protocol", "echo", "--tools", "locust,saturation",
        "--connections", "2", "--duration", "1", "--warmup", "0.5", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    check_outputs(out, {"locust", "echo-client"}, {2}, done.stdout)


def check_peer_outputs(out: Path, tool: str, peers: tuple[str, ...], stdout: str) -> list[Any]:
    """Every server has a record with non-zero figures; peers have no counter figures."""
    records: list[dict[str, Any]] = json.loads((out / "results.json").read_text())
    assert {(r["tool"], r["backend"]) for r in records} == {(tool, s) for s in (*OURS, *peers)}
    for r in records:
        where = r["backend"]
        assert r["requests_per_s"] > 0 and r["requests"] > 0, where
        assert r["errors"] == 0, where
        assert r["cpu_s"] > 0 and r["cpu_us_per_request"] > 0 and r["peak_rss_kib"] > 0, where
        split = r["user_us_per_request"] + r["system_us_per_request"]
        assert split == pytest.approx(r["cpu_us_per_request"], rel=1e-4), where
        assert r["server_exit_status"] == 0, where
        if r["backend"] in OURS:
            assert r["server_requests"] > 0 and r["syscalls_per_request"] > 0, where
        else:
            assert r["server_requests"] is None, where
            assert r["syscalls_per_request"] is None and r["wait_calls_per_request"] is None
        assert all(f"{p}: " in r["peers"] for p in peers)
    png = next(out.glob(f"*_{tool}.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for logged in (*OURS, *peers):
        assert list((out / "logs").glob(f"*-{logged}-r1.server.log")), logged
    assert "u/e" in stdout and "ratio columns" in stdout
    return records


@needs_wrk
@needs_granian
def test_http_peers(tmp_path: Path) -> None:
    out = tmp_path / "http-peers"
    done = compare(
        "--protocol", "http", "--peers", "--tools", "saturation",
        "--connections", "4", "--duration", "1", "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    peers = ("uvloop-h11", "uvicorn", "uvicorn-httptools", "uvicorn-ringloop", "granian-asgi",
             "granian-wsgi")  # fmt: skip
    records = check_peer_outputs(out, "wrk", peers, done.stdout)
    for ratio in ("u/uv-h11", "u/uvicorn", "u/uvi-ht", "u/uvi-ring", "u/gr-asgi", "u/gr-wsgi"):
        assert ratio in done.stdout
    assert "c=4: uring reaches" in done.stdout and "uvicorn" in done.stdout.split("reaches")[1]
    assert all(r["h11_ceiling_rps"] > 0 and r["h11_ceiling_end_rps"] > 0 for r in records)
    assert "req/s in memory before the runs" in done.stdout


@needs_cc
def test_echo_peers(tmp_path: Path) -> None:
    out = tmp_path / "echo-peers"
    done = compare(
        "--protocol", "echo", "--peers", "--tools", "saturation",
        "--connections", "2", "--duration", "1", "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = check_peer_outputs(out, "echo-client", ("uvloop-echo", "c-uring-echo"), done.stdout)
    assert "u/uv-echo" in done.stdout and "u/c-echo" in done.stdout
    assert (out / "uring_echo").exists()
    assert all(r["h11_ceiling_rps"] is None and r["h11_ceiling_end_rps"] is None for r in records)
    assert "h11 ceiling" not in done.stdout


def test_echo_peers_without_liburing_headers(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    cc = fake / "cc"
    cc.write_text(
        "#!/bin/sh\necho 'uring_echo.c:19:10: fatal error: liburing.h: No such file' >&2\nexit 1\n"
    )
    cc.chmod(0o755)
    done = compare(
        "--protocol", "echo", "--peers", "--tools", "saturation", "--out", str(tmp_path / "o"),
        "--echo-client", "python",  # the native client would fail first, on the same fake cc
        env={"PATH": f"{fake}:{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "the liburing headers are missing" in done.stderr


def test_native_echo_client_that_cannot_build(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    cc = fake / "cc"
    cc.write_text("#!/bin/sh\necho 'echo_bench.c: internal compiler error' >&2\nexit 1\n")
    cc.chmod(0o755)
    done = compare(
        "--protocol", "echo", "--tools", "saturation", "--out", str(tmp_path / "o"),
        env={"PATH": f"{fake}:{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot build the native echo client" in done.stderr
    assert "internal compiler error" in done.stderr


def test_h11_ceiling() -> None:
    got = h11_ceiling.measure(0.5, connections=100, warmup=0.1)
    assert got.requests > 0 and got.requests % 100 == 0
    assert got.requests_per_s > 0
    assert got.us_per_request == pytest.approx(1e6 / got.requests_per_s)
    assert 0.4 < got.seconds < 2


@needs_wrk
@pytest.mark.parametrize("path", ["/", "/items/42?q=hello"])
def test_h11_ceiling_sends_what_wrk_sends(path: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        port = listener.getsockname()[1]
        wrk = subprocess.Popen(
            ["wrk", "-t1", "-c1", "-d1s", f"http://127.0.0.1:{port}{path}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            data = b""
            for _ in range(3):  # wrk first connects once to check the address
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(10)
                    data = conn.recv(4096)
                if data:
                    break
        finally:
            wrk.kill()
            wrk.wait()
    assert data == h11_ceiling.wrk_request(port=port, path=path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "uring,kqueue"], "unknown kqueue"),
        (["--connections", "1,ten"], "not a list of integers"),
        (["--connections", "0"], "at least 1"),
        (["--duration", "1.5"], "invalid positive_int value: '1.5'"),
        (["--tools", "ab"], "unknown ab"),
        (["--protocol", "ftp"], "invalid choice"),
        (["--protocol", "echo", "--peers", "uvicorn"], "unknown uvicorn"),
        (["--protocol", "echo", "--peers", "--host", "0.0.0.0"], "127.0.0.1 only"),
        (["--server-args=--port 9"], "--server-args: --port is set by the compare command"),
        (["--server-args=--backend=epoll"], "--backend=epoll is set by the compare command"),
        (["--server-args=--http httptools"], "--http is set by the compare command"),
        (["--server-args=--app=m:f"], "--app=m:f is set by the compare command"),
        (["--http", "h2"], "unknown h2 (choose from h11, httptools)"),
        (["--http", "h11,h11"], "repeats an item"),
        (["--app", "django"], "invalid choice: 'django'"),
        (["--protocol", "echo", "--http", "httptools"], "--http and --app are for --protocol http"),
        (["--protocol", "echo", "--app", "wsgi"], "--http and --app are for --protocol http"),
        (["--baseline", "/nonexistent"], "not a ringserve checkout"),
    ],
)
def test_bad_arguments(args: list[str], message: str) -> None:
    done = compare(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_server_args_reach_both_backends_and_the_record(tmp_path: Path) -> None:
    opts = compare_module.parse_args(
        ["--server-args", "--no-tcp-nodelay --cq-factor 32", "--out", str(tmp_path)]
    )
    assert opts.server_args == ["--no-tcp-nodelay", "--cq-factor", "32"]
    for backend in ("uring", "epoll"):
        argv = compare_module.our_argv(opts.lineup[backend], opts, ("taskset", "-c", "0"))
        assert argv[:6] == ["taskset", "-c", "0", sys.executable, "-m", "server"]
        assert argv[-3:] == ["--no-tcp-nodelay", "--cq-factor", "32"]
        assert argv[argv.index("--backend") + 1] == backend


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = compare("--port", str(port), "--tools", "locust", "--out", str(tmp_path))
    assert done.returncode == 1
    assert f"cannot use port {port}" in done.stderr


def test_server_that_fails_to_start(tmp_path: Path) -> None:
    done = compare(
        "--tools", "locust", "--connections", "1", "--duration", "1", "--out", str(tmp_path),
        env={"RINGSERVE_BACKLOG": "-5"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "the server exited with status 2" in done.stderr
    assert "RINGSERVE_BACKLOG: -5 must be at least 1" in done.stderr


def test_missing_wrk(tmp_path: Path) -> None:
    done = compare("--tools", "saturation", "--out", str(tmp_path), env={"PATH": "/nonexistent"})
    assert done.returncode == 1
    assert "wrk, which is not installed" in done.stderr


WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   366.01us  493.03us   6.86ms   96.61%
    Req/Sec    13.48k     2.16k   16.19k    72.73%
  Latency Distribution
     50%  261.00us
     75%  297.00us
     90%    1.50ms
     99%    1.02s
  14721 requests in 2.10s, 2.20MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   7009.99
Transfer/sec:      2.00MB
"""


def test_parse_wrk() -> None:
    got = parse_wrk(WRK_OUTPUT)
    assert got["requests"] == 14721
    assert got["requests_per_s"] == pytest.approx(7009.99)
    assert got["avg_ms"] == pytest.approx(0.36601)
    assert got["p50_ms"] == pytest.approx(0.261)
    assert got["p90_ms"] == pytest.approx(1.5)
    assert got["p99_ms"] == pytest.approx(1020.0)
    assert got["errors"] == 1 + 2 + 3 + 4
    assert got["window_s"] == pytest.approx(2.1)


@pytest.mark.parametrize("how", ["stop", "context manager"])
def test_a_finished_server_process_leaves_no_fd_open(how: str) -> None:
    """Its pipes close when it ends, not when the garbage collector gets to them
    (which would change another test's fd count in the middle of that test)."""
    before = open_fds()
    server = ServerProcess(server_argv("epoll", "echo"))
    if how == "stop":
        server.start()
        assert server.stop() == 0
        assert server.exit_stats is not None and server.exit_stats["event"] == "exit"
    else:
        with server:
            assert server.address[1] > 0
    assert open_fds() == before


MEASURED = ToolResult(
    requests=2_000, requests_per_s=1_000.0, avg_ms=1.0, p50_ms=0.9, p90_ms=1.5,
    p99_ms=2.0, errors=0, client_cpu_util=0.5, window_s=2.0,
)  # fmt: skip


def test_result_splits_server_cpu_per_request_by_the_servers_count() -> None:
    before = ServerSnapshot({"requests": 100, "syscalls": 10, "wait_calls": 5}, 1.0, 2.0)
    after = ServerSnapshot({"requests": 1_100, "syscalls": 60, "wait_calls": 15}, 1.25, 2.5)
    r = result_from_run("http", "wrk", "uring", 100, MEASURED, before, after, 4096, 0)
    assert r.server_requests == 1_000
    assert r.cpu_s == pytest.approx(0.75)
    assert r.cpu_us_per_request == pytest.approx(750.0)
    assert r.user_us_per_request == pytest.approx(250.0)
    assert r.system_us_per_request == pytest.approx(500.0)
    assert r.syscalls_per_request == pytest.approx(0.05)
    assert r.wait_calls_per_request == pytest.approx(0.01)


def test_result_of_a_peer_divides_by_the_generators_count() -> None:
    before = ServerSnapshot(None, 1.0, 2.0)
    after = ServerSnapshot(None, 1.5, 2.5)
    r = result_from_run("echo", "echo-client", "uvloop-echo", 10, MEASURED, before, after, 1, 0)
    assert r.server_requests is None and r.syscalls_per_request is None
    assert r.cpu_us_per_request == pytest.approx(500.0)
    assert r.user_us_per_request == pytest.approx(250.0)
    assert r.system_us_per_request == pytest.approx(250.0)


def _wrk_result(backend: str, rps: float) -> Any:
    return result_from_run(
        "http", "wrk", backend, 100, dataclasses.replace(MEASURED, requests_per_s=rps),
        ServerSnapshot(None, 0.0, 0.0), ServerSnapshot(None, 1.0, 1.0), 1, 0,
    )  # fmt: skip


def test_ceiling_share_is_a_range_over_the_two_ceiling_measurements() -> None:
    results = [_wrk_result("uring", 8_000.0), _wrk_result("epoll", 6_000.0)]
    assert ceiling_lines(results, ["uring", "epoll"], 10_000.0) == [
        "c=100: uring reaches 80% of the h11 ceiling (10,000 req/s in memory); epoll 60%"
    ]
    assert ceiling_lines(results, ["uring", "epoll"], 10_000.0, 12_500.0) == [
        "c=100: uring reaches 64-80% of the h11 ceiling "
        "(10,000 req/s in memory before the runs, 12,500 after); epoll 48-60%"
    ]
    assert ceiling_lines(results, ["uring"], 10_000.0, 10_010.0) == [
        "c=100: uring reaches 80% of the h11 ceiling "
        "(10,000 req/s in memory before the runs, 10,010 after)"
    ]


def test_locust_percentile() -> None:
    histogram = {0.0: 90, 1.0: 9, 14.0: 1}
    assert locust_percentile(histogram, 0.5) == 0.0
    assert locust_percentile(histogram, 0.99) == 1.0
    assert locust_percentile(histogram, 1.0) == 14.0
    assert locust_percentile({}, 0.5) == 0.0


# -- the --http, --app, --peers and --baseline axes ----------------------------------

WSGI_HELLO, ASGI_HELLO = "loadtest.peers.wsgi_app:app", "examples.asgi_hello:app"
FASTAPI_APP = "examples.fastapi_app:app"
needs_fastapi = pytest.mark.skipif(
    importlib.util.find_spec("fastapi") is None,
    reason="FastAPI is not installed (pip install -e '.[fastapi]')",
)


def copy_checkout(dest: Path, built: bool = True) -> Path:
    """This checkout's server/ and uring_backend/ in `dest`, with its built extension or not."""
    skip = shutil.ignore_patterns("__pycache__", "*.o", *(() if built else ("*.so",)))
    for package in ("server", "uring_backend"):
        shutil.copytree(ROOT / package, dest / package, ignore=skip)
    return dest


@pytest.mark.parametrize(
    ("args", "names", "parsers"),
    [
        ([], ["uring", "epoll"], ["h11", "h11"]),
        (["--http", "httptools"], ["uring", "epoll"], ["httptools", "httptools"]),
        (["--http", "h11,httptools", "--backends", "epoll"], ["epoll-h11", "epoll-httptools"],
         ["h11", "httptools"]),
        (["--http", "httptools,h11"],
         ["uring-httptools", "epoll-httptools", "uring-h11", "epoll-h11"],
         ["httptools", "httptools", "h11", "h11"]),
        (["--protocol", "echo"], ["uring", "epoll"], [None, None]),
    ],
)  # fmt: skip
def test_our_servers_are_named_by_parser_only_when_two_are_asked(
    args: list[str], names: list[str], parsers: list[str | None], tmp_path: Path
) -> None:
    opts = compare_module.parse_args([*args, "--out", str(tmp_path)])
    assert list(opts.servers) == names
    assert [opts.lineup[n].http for n in names] == parsers
    for name, parser in zip(names, parsers, strict=True):
        argv = compare_module.our_argv(opts.lineup[name], opts)
        assert ("--http" in argv) == (parser is not None)
        if parser is not None:
            assert argv[argv.index("--http") + 1] == parser


class _Tool:
    name = "wrk"


def test_baseline_servers_run_beside_ours_with_ratios(tmp_path: Path) -> None:
    base = copy_checkout(tmp_path / "base")
    opts = compare_module.parse_args([
        "--http", "h11,httptools", "--baseline", str(base), "--peers",
        "uvicorn-httptools,granian-asgi", "--repeat", "2", "--connections", "4,8",
        "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert opts.servers == (
        "uring-h11", "uring-h11@base", "epoll-h11", "epoll-h11@base", "uring-httptools",
        "uring-httptools@base", "epoll-httptools", "epoll-httptools@base", "uvicorn-httptools",
        "granian-asgi",
    )  # fmt: skip
    assert compare_module.ratio_pairs(opts.lineup) == [
        ("uring-h11", "epoll-h11"), ("uring-httptools", "epoll-httptools"),
        ("uring-h11", "uring-h11@base"), ("epoll-h11", "epoll-h11@base"),
        ("uring-httptools", "uring-httptools@base"), ("epoll-httptools", "epoll-httptools@base"),
        ("uring-httptools", "uvicorn-httptools"), ("uring-h11", "granian-asgi"),
    ]  # fmt: skip
    # h11 is every checkout's default, so a baseline older than --http is not told it.
    assert "--http" not in compare_module.our_argv(opts.lineup["uring-h11@base"], opts)
    argv = compare_module.our_argv(opts.lineup["epoll-httptools@base"], opts)
    assert argv[argv.index("--http") + 1] == "httptools"
    # Its own packages first; ours after, for a workload app (examples/) it may lack.
    assert compare_module.baseline_env(base)["PYTHONPATH"] == f"{base}{os.pathsep}{ROOT}"
    jobs = compare_module.plan_jobs(opts, [_Tool()])  # type: ignore[list-item]
    assert len(jobs) == 2 * 2 * len(opts.servers)
    for point in (4, 8):
        order = {run: [j.backend for j in jobs if (j.connections, j.run) == (point, run)]
                 for run in (1, 2)}  # fmt: skip
        assert order[1] == list(opts.servers) and order[2] == order[1][::-1]
        for name in order[1]:  # each baseline server runs next to its current twin
            if name.endswith("@base"):
                at = order[1].index(name)
                assert order[1][at - 1] == name.removesuffix("@base")


def test_ratio_base_without_uring(tmp_path: Path) -> None:
    opts = compare_module.parse_args(
        ["--backends", "epoll", "--peers", "uvicorn,granian-wsgi", "--out", str(tmp_path)]
    )
    assert compare_module.ratio_pairs(opts.lineup) == [
        ("epoll", "uvicorn"), ("epoll", "granian-wsgi")
    ]  # fmt: skip


def test_baseline_must_be_a_checkout_with_its_own_extension(tmp_path: Path) -> None:
    assert "not a ringserve checkout" in str(compare_module.baseline_problem(tmp_path))
    unbuilt = copy_checkout(tmp_path / "unbuilt", built=False)
    # Without its own build it would import the installed checkout's extension.
    assert "its extension is not built there" in str(compare_module.baseline_problem(unbuilt))
    assert compare_module.baseline_problem(copy_checkout(tmp_path / "built")) is None
    done = compare("--baseline", str(unbuilt), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert f"cd {unbuilt} && " in done.stderr and "setup.py build_ext --inplace" in done.stderr


def test_peer_commands(tmp_path: Path) -> None:
    opts = compare_module.parse_args(["--peers", "--out", str(tmp_path)])
    argv = {n: compare_module.peer_argv(n, opts, 8000, ("taskset", "-c", "0")) for n in opts.peers}
    like_ours = (
        f"--workers 1 --runtime-threads 1 --blocking-threads 1 --http 1 --backlog "
        f"{compare_module.Config().backlog} --no-access-log --host 127.0.0.1 --port 8000"
    )
    for name, interface, app in (("granian-asgi", "asgi", ASGI_HELLO),
                                 ("granian-wsgi", "wsgi", WSGI_HELLO)):  # fmt: skip
        assert argv[name][:6] == ["taskset", "-c", "0", sys.executable, "-m", "granian"]
        assert argv[name][argv[name].index("--interface") + 1] == interface
        assert like_ours in " ".join(argv[name]) and argv[name][-1] == app
    assert "--loop uvloop --no-ws" in " ".join(argv["granian-asgi"])
    assert argv["uvicorn-httptools"][3:] == [
        sys.executable, "-m", "uvicorn", "--http", "httptools", "--loop", "uvloop",
        "--no-access-log", "--host", "127.0.0.1", "--port", "8000", ASGI_HELLO,
    ]  # fmt: skip
    assert argv["uvicorn-ringloop"][3:] == [
        sys.executable, "-m", "uvicorn", "--http", "httptools", "--loop",
        "server.aio:new_event_loop", "--no-access-log", "--host", "127.0.0.1", "--port", "8000",
        ASGI_HELLO,
    ]  # fmt: skip
    assert compare_module.PEER_ENV == {"uvicorn-ringloop": {"RINGSERVE_BACKEND": "uring"}}
    assert argv["uvloop-h11"][-4:] == ["--host", "127.0.0.1", "--port", "8000"]
    # The WSGI workload: ours and the peers that run WSGI serve the WSGI hello.
    wsgi = compare_module.parse_args(["--peers", "--app", "wsgi", "--out", str(tmp_path)])
    assert wsgi.peers == ("uvloop-h11", "granian-wsgi")
    assert wsgi.skipped == ("uvicorn", "uvicorn-httptools", "uvicorn-ringloop", "granian-asgi")
    assert wsgi.servers == ("uring", "epoll", "uvloop-h11", "granian-wsgi")
    assert compare_module.peer_argv("uvloop-h11", wsgi, 8000, ())[-2:] == ["--app", WSGI_HELLO]
    assert compare_module.peer_argv("granian-wsgi", wsgi, 8000, ())[-1] == WSGI_HELLO
    assert compare_module.our_argv(wsgi.lineup["uring"], wsgi)[-2:] == ["--app", WSGI_HELLO]


def _asgi(method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(asgi_hello.app(scope, receive, send))
    start, end = sent
    return start["status"], list(start["headers"]), end["body"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/", b""), ("HEAD", "/", b""), ("POST", "/echo", b"abc"), ("GET", "/echo", b""),
     ("GET", "/nowhere", b"")],
)  # fmt: skip
def test_peer_apps_answer_as_the_builtin_app(method: str, path: str, body: bytes) -> None:
    """The ASGI and WSGI hellos the peers serve: same status, headers and body as ours."""
    headers = [(b"content-type", b"application/octet-stream")] if body else []
    request = Request(method.encode(), path.encode(), headers, b"1.1", body)
    want = BuiltinApp(dict)(request)
    wsgi = WsgiAdapter(wsgi_app.app, "127.0.0.1", 8080)(request)
    assert (wsgi.status, wsgi.headers, wsgi.body) == (want.status, want.headers, want.body)
    assert _asgi(method, path, body, headers) == (want.status, want.headers, want.body)


CALLS = [0]


def _counting_hello(environ: dict[str, Any], start_response: Any) -> Any:
    CALLS[0] += 1
    return wsgi_app.app(environ, start_response)


def test_h11_ceiling_serves_the_app_asked(capsys: pytest.CaptureFixture[str]) -> None:
    before, cpus = CALLS[0], os.sched_getaffinity(0)
    app = "tests.test_compare:_counting_hello"
    try:
        argv = ["--app", app, "--http", "httptools", "--duration", "0.2", "--warmup", "0"]
        assert h11_ceiling.main([*argv, "--json"]) == 0
    finally:
        os.sched_setaffinity(0, cpus)  # it pins the process it runs in
    got = json.loads(capsys.readouterr().out)
    assert got["requests"] > 0 and CALLS[0] - before > got["requests"]  # + the first check
    assert (got["app"], got["http"]) == (app, "httptools")


META = Metadata(**{
    f.name: f.default if f.default is not dataclasses.MISSING else "" for f in
    dataclasses.fields(Metadata)
} | {"protocol": "http", "duration_s": 1, "warmup_s": 0.0, "repeat": 1})  # fmt: skip


def test_client_bound_points_are_marked() -> None:
    bound = dataclasses.replace(_wrk_result("uring", 150_000.0), client_cpu_util=0.95)
    free = dataclasses.replace(_wrk_result("epoll", 90_000.0), client_cpu_util=0.9)
    text = tables([bound, free], ["uring", "epoll"], META, [("uring", "epoll")])
    assert "150,000*" in text and "90,000*" not in text and "90,000" in text
    assert "* client-bound: the load generator used more than 90% of its CPU" in text
    assert [r["client_bound"] for r in records([bound, free], META)] == [True, False]
    assert "client-bound" not in tables([free], ["epoll"], META)


def test_each_server_shares_its_own_parsers_ceiling() -> None:
    rs = [
        dataclasses.replace(_wrk_result(name, rps), http=parser, baseline=name.endswith("@base"))
        for name, rps, parser in [
            ("epoll-h11", 6_000.0, "h11"), ("uring-h11", 8_000.0, "h11"),
            ("uring-h11@base", 7_000.0, "h11"), ("uring-httptools", 40_000.0, "httptools"),
            ("epoll-httptools", 30_000.0, "httptools"), ("granian-asgi", 50_000.0, "hyper"),
        ]
    ]  # fmt: skip
    meta = dataclasses.replace(META, h11_ceiling_rps=10_000.0, httptools_ceiling_rps=50_000.0)
    text = tables(rs, [r.backend for r in rs], meta)
    assert [line for line in text.splitlines() if line.startswith("c=")] == [
        "c=100: uring-h11 reaches 80% of the h11 ceiling (10,000 req/s in memory); epoll-h11 60%",
        "c=100: uring-httptools reaches 80% of the httptools ceiling "
        "(50,000 req/s in memory); epoll-httptools 60%",
    ]


@needs_wrk
def test_http_both_parsers_beside_a_baseline_that_prints_only_its_banner(tmp_path: Path) -> None:
    """A baseline checkout as old as the servers without the JSON listening line, marked so
    its logs tell it ran its own code."""
    base = copy_checkout(tmp_path / "base")
    lifecycle = base / "server" / "lifecycle.py"
    code = lifecycle.read_text()
    for old, new in [("_print_line(json.dumps(self.listening()))", "pass"),
                     ("listening on {url}", "(baseline copy) listening on {url}")]:  # fmt: skip
        assert old in code
        code = code.replace(old, new)
    lifecycle.write_text(code)
    out = tmp_path / "out"
    done = compare(
        "--http", "h11,httptools", "--baseline", str(base), "--tools", "saturation",
        "--connections", "2", "--duration", "1", "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records: list[dict[str, Any]] = json.loads((out / "results.json").read_text())
    names = {f"{b}-{p}{at}" for b in OURS for p in ("h11", "httptools") for at in ("", "@base")}
    assert {r["backend"] for r in records} == names
    for r in records:
        name = r["backend"]
        assert r["http"] == name.split("-")[1].removesuffix("@base"), name
        assert r["baseline"] == name.endswith("@base"), name
        assert r["requests"] > 0 and r["server_requests"] > 0 and r["errors"] == 0, name
        assert r["parsers"] == "h11,httptools" and r["baseline_checkout"].startswith(f"{base} at ")
        assert r["h11_ceiling_rps"] > 0 and r["httptools_ceiling_end_rps"] > 0
        (log,) = (out / "logs").glob(f"*-{name}-r1.server.log")
        assert ("(baseline copy) listening on" in log.read_text()) == r["baseline"], name
    for ratio in ("u-h11/e-h11", "u-ht/e-ht", "u-h11/u-h11@base", "e-ht/e-ht@base"):
        assert ratio in done.stdout
    shares = [line for line in done.stdout.splitlines() if line.startswith("c=2:")]
    reaching = [line.split(" reaches")[0] for line in shares]
    assert reaching == ["c=2: uring-h11", "c=2: uring-httptools"]
    assert "@base" not in "".join(shares) and "of the httptools ceiling" in shares[1]


@needs_wrk
@needs_granian
def test_http_wsgi_workload(tmp_path: Path) -> None:
    out = tmp_path / "wsgi"
    done = compare(
        "--app", "wsgi", "--peers", "--backends", "epoll", "--tools", "saturation",
        "--connections", "2", "--duration", "1", "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    skipped = "uvicorn, uvicorn-httptools, uvicorn-ringloop, granian-asgi skipped"
    assert f"({skipped}: they cannot serve --app wsgi)" in done.stdout
    records: list[dict[str, Any]] = json.loads((out / "results.json").read_text())
    assert {r["backend"] for r in records} == {"epoll", "uvloop-h11", "granian-wsgi"}
    for r in records:
        assert r["app"] == "wsgi" and r["requests"] > 0 and r["errors"] == 0, r["backend"]
        assert f"--app {WSGI_HELLO}" in r["server_command"]
        uvloop, granian = r["peers"].split("; granian-wsgi: ")
        assert uvloop.startswith("uvloop-h11: ") and uvloop.endswith(f"--app {WSGI_HELLO}")
        assert "--interface wsgi" in granian and granian.endswith(WSGI_HELLO)
    for log in ("h11_ceiling.log", "h11_ceiling_end.log"):
        assert f'"app": "{WSGI_HELLO}"' in (out / "logs" / log).read_text()


# -- the ASGI and FastAPI workloads -----------------------------------------------------

ASGI_PEERS = ("uvicorn", "uvicorn-httptools", "uvicorn-ringloop", "granian-asgi")


@pytest.mark.parametrize(
    ("workload", "app", "path", "body", "user"),
    [("asgi", ASGI_HELLO, "/", b"Hello from ringserve\n", "HttpAppUser"),
     ("fastapi", FASTAPI_APP, "/items/42?q=hello", b'{"item_id":42,"q":"hello"}', "FastApiUser")],
)  # fmt: skip
def test_asgi_workload_commands(
    workload: str, app: str, path: str, body: bytes, user: str, tmp_path: Path
) -> None:
    """Ours (each backend, each parser) run the app with --app; the ASGI peers serve it;
    uvloop-h11 and granian-wsgi cannot, and are skipped."""
    opts = compare_module.parse_args(
        ["--peers", "--app", workload, "--http", "h11,httptools", "--out", str(tmp_path)]
    )
    assert (opts.peers, opts.skipped) == (ASGI_PEERS, ("uvloop-h11", "granian-wsgi"))
    ours = ("uring-h11", "epoll-h11", "uring-httptools", "epoll-httptools")
    assert opts.servers == (*ours, *ASGI_PEERS)
    for name in ours:
        argv = compare_module.our_argv(opts.lineup[name], opts)
        backend, parser = name.split("-")
        assert argv[argv.index("--backend") + 1] == backend, name
        assert argv[argv.index("--http") + 1] == parser, name
        assert argv[-2:] == ["--app", app], name
    argv = {n: compare_module.peer_argv(n, opts, 8000, ()) for n in opts.peers}
    at = ["--no-access-log", "--host", "127.0.0.1", "--port", "8000", app]
    assert argv["uvicorn"] == [sys.executable, "-m", "uvicorn", "--http", "h11", "--loop",
                               "uvloop", *at]  # fmt: skip
    assert argv["uvicorn-httptools"] == [sys.executable, "-m", "uvicorn", "--http", "httptools",
                                         "--loop", "uvloop", *at]  # fmt: skip
    assert argv["uvicorn-ringloop"] == [sys.executable, "-m", "uvicorn", "--http", "httptools",
                                        "--loop", "server.aio:new_event_loop", *at]  # fmt: skip
    granian = " ".join(argv["granian-asgi"])
    assert "-m granian --interface asgi --loop uvloop --no-ws --workers 1 --runtime-threads 1 " in (
        granian
    ) and granian.endswith(f"--port 8000 {app}")
    # Each peer against our uring of its parser; uvicorn-ringloop's is httptools.
    assert compare_module.ratio_pairs(opts.lineup)[2:] == [
        ("uring-h11", "uvicorn"), ("uring-httptools", "uvicorn-httptools"),
        ("uring-httptools", "uvicorn-ringloop"), ("uring-h11", "granian-asgi"),
    ]  # fmt: skip
    w = compare_module.WORKLOADS[workload]
    assert (w.path, w.body, w.locust_user) == (path, body, user)
    meta = compare_module.collect_metadata(opts, compare_module.plan_pinning([0], None), None)
    assert "; uvicorn-ringloop: RINGSERVE_BACKEND=uring python -m uvicorn --http httptools " in (
        meta.peers
    )
    assert meta.server_command.endswith(f"--app {app}") and meta.app == workload


@pytest.mark.skipif(URING_SKIP is not None, reason=str(URING_SKIP))
def test_uvicorn_ringloop_runs_on_our_ring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its environment asks for the uring backend (whatever ours says), and it has a ring."""
    monkeypatch.setenv("RINGSERVE_BACKEND", "epoll")
    opts = compare_module.parse_args(
        ["--app", "asgi", "--peers", "uvicorn-ringloop", "--out", str(tmp_path)]
    )
    job = compare_module.Job(compare_module.LOCUST, "uvicorn-ringloop", 1, 1)
    pinning = compare_module.plan_pinning([0], None)
    with compare_module.start_server(job, opts, pinning, tmp_path / "peer.log") as peer:
        assert psutil.Process(peer.pid).environ()["RINGSERVE_BACKEND"] == "uring"
        fds = []
        for fd in Path(f"/proc/{peer.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                fds.append(os.readlink(fd))
        assert "anon_inode:[io_uring]" in fds
        compare_module.check_answer(peer.address, "/", b"Hello from ringserve\n")
        assert peer.stop() == 0


@needs_fastapi
def test_check_answer_refuses_a_wrong_answer() -> None:
    fastapi = compare_module.WORKLOADS["fastapi"]
    with ServerProcess(server_argv("epoll", args=["--app", FASTAPI_APP])) as server:
        compare_module.check_answer(server.address, fastapi.path, fastapi.body)
        wrong = b'{"item_id":43,"q":"hello"}'
        with pytest.raises(RunError) as caught:
            compare_module.check_answer(server.address, fastapi.path, wrong)
        assert str(caught.value) == (
            f"GET /items/42?q=hello before the load answered 200 {fastapi.body!r}, expected 200 "
            f"{wrong!r}: a broken app would benchmark as fast"
        )
        with pytest.raises(RunError, match="answered 404"):
            compare_module.check_answer(server.address, "/nowhere", fastapi.body)
    with pytest.raises(RunError, match="before the load failed: ConnectionRefusedError"):
        compare_module.check_answer(server.address, "/", b"")


@needs_fastapi
def test_compare_stops_at_a_wrong_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server whose app answers otherwise is not measured: the comparison fails."""
    wrong = dataclasses.replace(compare_module.WORKLOADS["fastapi"], body=b'{"item_id":42}')
    monkeypatch.setitem(compare_module.WORKLOADS, "fastapi", wrong)
    status = compare_module.main([
        "--app", "fastapi", "--backends", "epoll", "--tools", "locust", "--connections", "1",
        "--duration", "1", "--out", str(tmp_path),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1
    assert "GET /items/42?q=hello before the load answered 200" in err
    assert not (tmp_path / "results.json").exists()


@needs_fastapi
@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_ceiling_drives_an_asgi_app_on_the_loop(http: str) -> None:
    app = AsgiApp(load_app(FASTAPI_APP), "", ("127.0.0.1", 8080))
    got = h11_ceiling.measure(0.3, 10, 0.0, http, app, "/items/42?q=hello")  # type: ignore[arg-type]
    assert got.requests > 0 and got.us_per_request > 0
    with pytest.raises(RuntimeError, match=re.escape("unexpected response: b'HTTP/1.1 404 ")):
        h11_ceiling.measure(0.1, 10, 0.0, http, app, "/nowhere")  # type: ignore[arg-type]


async def _late_hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The hello, answered a loop iteration after the request (its first step suspends)."""
    if scope["type"] == "http":
        CALLS[0] += 1
        await asyncio.sleep(0)
    await asgi_hello.app(scope, receive, send)


def test_ceiling_waits_for_an_asgi_app_that_suspends(capsys: pytest.CaptureFixture[str]) -> None:
    before, cpus = CALLS[0], os.sched_getaffinity(0)
    try:
        argv = ["--app", "tests.test_compare:_late_hello", "--connections", "4", "--json"]
        assert h11_ceiling.main([*argv, "--duration", "0.2", "--warmup", "0"]) == 0
    finally:
        os.sched_setaffinity(0, cpus)
    got = json.loads(capsys.readouterr().out)
    assert got["requests"] > 0 and CALLS[0] - before == got["requests"] + 1  # + the first check
    assert got["path"] == "/"


@needs_wrk
@needs_fastapi
def test_http_fastapi_workload(tmp_path: Path) -> None:
    """Ours and uvicorn on our loop, serving the FastAPI example to Locust's FastApiUser and
    to wrk on /items/42?q=hello, beside its in-memory ceiling."""
    out = tmp_path / "fastapi"
    done = compare(
        "--app", "fastapi", "--http", "httptools", "--backends", "uring", "--peers",
        "uvicorn-ringloop,granian-wsgi", "--tools", "locust,saturation", "--connections", "2",
        "--duration", "1", "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(granian-wsgi skipped: they cannot serve --app fastapi)" in done.stdout
    assert f"fastapi {importlib.metadata.version('fastapi')}; starlette " in done.stdout
    records: list[dict[str, Any]] = json.loads((out / "results.json").read_text())
    servers = ("uring", "uvicorn-ringloop")
    assert {(r["tool"], r["backend"]) for r in records} == {
        (t, s) for t in ("locust", "wrk") for s in servers
    }
    for r in records:
        where = f"{r['tool']} {r['backend']}"
        assert r["app"] == "fastapi" and r["requests"] > 0 and r["errors"] == 0, where
        assert r["server_exit_status"] == 0 and r["httptools_ceiling_rps"] > 0, where
        assert r["server_command"].endswith(f"--http httptools --app {FASTAPI_APP}")
        assert r["peers"].startswith("uvicorn-ringloop: RINGSERVE_BACKEND=uring ")
        assert r["peers"].endswith(f"--loop server.aio:new_event_loop --no-access-log --host "
                                   f"127.0.0.1 --port '{{port}}' {FASTAPI_APP}")  # fmt: skip
    logs = out / "logs"
    for server in servers:
        wrk_log = (logs / f"http-wrk-c2-{server}-r1.wrk.log").read_text()
        assert "/items/42?q=hello" in wrk_log, server
        entries = json.loads((logs / f"http-locust-c2-{server}-r1.locust.json").read_text())
        names = {e["name"] for e in entries}
        assert names == {"GET /items/{id}?q=", "POST /items"}, server
    for log in ("httptools_ceiling.log", "httptools_ceiling_end.log"):
        ceiling = json.loads((logs / log).read_text().splitlines()[-1])
        assert (ceiling["app"], ceiling["path"]) == (FASTAPI_APP, "/items/42?q=hello")
    (share,) = [line for line in done.stdout.splitlines() if line.startswith("c=2:")]
    assert "uring reaches" in share and "of the httptools ceiling" in share
    assert "uvicorn-ringloop" in share
