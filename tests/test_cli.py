"""`python -m server` as a subprocess: startup, signals, exit codes, errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.backends.client import (
    HELLO,
    HttpReader,
    connect,
    exchange,
    pattern,
    read_last_echo,
    recv_exact,
    refused,
    request,
    sha256,
    wait_for,
)
from tests.support import BACKENDS, URING_SKIP
from tests.support.server import clean_env

pytestmark = pytest.mark.timeout(40)

ROOT = Path(__file__).resolve().parent.parent
GET = request("GET", "/")
GET_CLOSE = request("GET", "/", headers=[("Connection", "close")])
GET_STATS = request("GET", "/stats", headers=[("Connection", "close")])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


# -- startup and serving -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_starts_serves_and_stops_cleanly(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0").start()
    info = srv.listening
    assert (info["backend"], info["protocol"], info["http"], info["app"]) == (
        backend,
        "http",
        "h11",
        None,
    )
    assert (info["host"], info["port"], info["pid"]) == (*srv.address, srv.proc.pid)
    assert info["kernel"] == os.uname().release
    if backend == "uring":
        assert (info["sq_entries"], info["cq_entries"]) == (256, 2048)
        assert info["taskrun"] in ("defer", "coop", "none")
    assert f"ringserve http (h11) on {backend}" in srv.banner
    assert f"pid {srv.proc.pid}," in srv.banner
    with connect(srv.address) as s:
        (resp,) = exchange(s, GET)
        assert resp.body == HELLO
        body = pattern(100_000, 1)
        (resp,) = exchange(s, request("POST", "/echo", body))
        assert sha256(resp.body) == sha256(body)
    stats = json.loads(srv.fetch(GET_STATS).body)
    assert stats["backend"] == backend
    assert stats["pid"] == srv.proc.pid
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    (final,) = srv.json_lines("exit")
    assert srv.stdout_lines[-1].startswith("{"), "the exit line is the last line"
    assert final["backend"] == backend
    assert final["open_connections"] == 0
    assert final["ops_in_flight"] == 0
    assert final["requests"] == 3  # GET, POST, /stats
    assert final["pid"] == srv.proc.pid


def test_echo_protocol(spawn) -> None:
    srv = spawn("--backend", "epoll", "--protocol", "echo", "--port", "0").start()
    assert "ringserve echo on epoll" in srv.banner
    assert (srv.listening["protocol"], srv.listening["http"]) == ("echo", None)
    with connect(srv.address) as s:
        s.sendall(b"echo me")
        assert recv_exact(s, 7) == b"echo me"
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    assert srv.json_lines("exit")[0]["accepted"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_wsgi_app_from_command_line(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0", "--app", "tests.backends.wsgi_apps:app")
    srv.start()
    resp = srv.fetch(GET_CLOSE)
    assert resp.body == b"Hello from a plain WSGI app\n"
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


def test_environment_variable_selects_backend(spawn) -> None:
    srv = spawn("--port", "0", env=clean_env(RINGSERVE_BACKEND="epoll")).start()
    assert srv.listening["backend"] == "epoll"
    assert json.loads(srv.fetch(GET_STATS).body)["backend"] == "epoll"
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


@pytest.mark.skipif(URING_SKIP is not None, reason=str(URING_SKIP))
def test_command_line_wins_over_environment(spawn) -> None:
    env = clean_env(RINGSERVE_BACKEND="epoll", RINGSERVE_PROTOCOL="echo")
    srv = spawn("--port", "0", "--backend", "uring", "--protocol", "http", env=env).start()
    assert (srv.listening["backend"], srv.listening["protocol"]) == ("uring", "http")
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


def test_environment_sets_other_options(spawn) -> None:
    env = clean_env(RINGSERVE_BACKEND="epoll", RINGSERVE_PORT="0", RINGSERVE_MAX_BODY_BYTES="10")
    srv = spawn(env=env).start()
    resp = srv.fetch(request("POST", "/echo", b"x" * 11))
    assert resp.status == 413
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


# -- signals -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_lets_request_in_flight_finish(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0", "--timeout-graceful-shutdown", "15").start()
    body = pattern(200_000, 2)
    with connect(srv.address) as s:
        s.sendall(request("POST", "/echo", headers=[("Content-Length", str(len(body)))]))
        s.sendall(body[:50_000])
        # The server has the head and part of the body: the request is in flight.
        wait_for(lambda: srv.stats()["bytes_in"] >= 50_000, what="the partial request")
        srv.signal(signal.SIGTERM)
        srv.wait_line("received SIGTERM; finishing in-flight requests")
        # New connections are refused while the request in flight is finished.
        wait_for(lambda: refused(srv.address), what="new connections to be refused")
        assert srv.proc.poll() is None, "exited with a request in flight"
        s.sendall(body[50_000:])
        read_last_echo(s, body)
    assert srv.wait() == 0, srv.output()
    (final,) = srv.json_lines("exit")
    assert final["backend"] == backend
    assert final["open_connections"] == 0
    assert final["ops_in_flight"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_refuses_new_connections(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0", "--timeout-graceful-shutdown", "15").start()
    with connect(srv.address) as busy:
        head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345"
        busy.sendall(head)
        # Its bytes received, not only the connection accepted: until then it is
        # idle, and a stop closes an idle connection at once.
        wait_for(lambda: srv.stats()["bytes_in"] >= len(head), what="the busy connection")
        srv.signal(signal.SIGTERM)
        wait_for(lambda: refused(srv.address), what="new connections to be refused")
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                connect(srv.address, timeout=2.0)
        assert srv.proc.poll() is None
        busy.sendall(b"67890")
        resp = HttpReader(busy).read_response()
        assert (resp.status, resp.body) == (200, b"1234567890")
    assert srv.wait() == 0, srv.output()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigint_exits_0(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0").start()
    srv.signal(signal.SIGINT)
    assert srv.wait() == 0, srv.output()
    assert "received SIGINT" in srv.output()
    (final,) = srv.json_lines("exit")
    assert final["backend"] == backend
    assert final["open_connections"] == 0
    assert "Traceback" not in srv.output()


@pytest.mark.parametrize("backend", BACKENDS)
def test_idle_keepalive_client_does_not_delay_sigterm(spawn, backend: str) -> None:
    """An idle keep-alive connection is closed at once on SIGTERM; the exit follows.

    The client behaves like a real one: it sees the server's EOF and closes.
    """
    srv = spawn("--backend", backend, "--port", "0", "--timeout-graceful-shutdown", "20").start()
    with connect(srv.address, timeout=5.0) as s:
        (resp,) = exchange(s, GET)
        assert resp.body == HELLO
        srv.signal(signal.SIGTERM)
        try:
            assert s.recv(100) == b""  # well within the 20 s grace period
        except TimeoutError:
            pytest.fail("SIGTERM did not close an idle keep-alive connection")
    try:
        code = srv.proc.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM waited for the grace period after every connection closed")
    assert code == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_signal_stops_without_waiting(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0", "--timeout-graceful-shutdown", "30").start()
    with connect(srv.address) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
        wait_for(lambda: srv.stats()["open_connections"] == 1, what="the busy connection")
        srv.signal(signal.SIGTERM)
        srv.wait_line("received SIGTERM")
        # The handler records the stop before it logs the line, so a second signal
        # sent as soon as the line shows must stop the server at once.
        srv.signal(signal.SIGTERM)
        assert srv.wait(10) == 0, srv.output()
        assert "stopping now" in srv.output()
        assert s.recv(100) == b""  # closed without a response
    assert srv.json_lines("exit")[0]["open_connections"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigusr1_prints_stats_line(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0").start()
    srv.fetch(GET_CLOSE)
    srv.signal(signal.SIGUSR1)
    m = srv.wait_line(r'^\{.*"event": "stats"', "stdout")
    stats = json.loads(m.string)
    assert stats["backend"] == backend
    assert stats["requests"] == 1
    assert stats["accepted"] == 1
    assert stats["pid"] == srv.proc.pid
    assert srv.fetch(GET_CLOSE).body == HELLO  # still serving
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    assert len(srv.json_lines("stats")) == 1
    assert len(srv.json_lines("exit")) == 1


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--ring-entries", "3"], {}, "argument --ring-entries: 3 is not a power of two"),
        (["--backend", "nope"], {}, "argument --backend: invalid choice: 'nope'"),
        (["--protocol", "gopher"], {}, "argument --protocol: invalid choice: 'gopher'"),
        (["--port", "70000"], {}, "argument --port: 70000 is not a TCP port"),
        (["--port", "eighty"], {}, "argument --port: invalid port_number value: 'eighty'"),
        (["--timeout-read", "0"], {}, "argument --timeout-read: 0.0 must be positive"),
        (["--recv-buffers", "1000"], {}, "argument --recv-buffers: 1000 is not a power of two"),
        (["--no-such-option"], {}, "unrecognized arguments: --no-such-option"),
        ([], {"RINGSERVE_BACKEND": "nope"}, "RINGSERVE_BACKEND: invalid choice 'nope'"),
        ([], {"RINGSERVE_RING_ENTRIES": "3"}, "3 is not a power of two"),
    ],
    ids=[
        "ring-entries",
        "backend",
        "protocol",
        "port-range",
        "port-text",
        "timeout-read",
        "recv-buffers",
        "unknown",
        "env-backend",
        "env-ring-entries",
    ],
)
def test_bad_arguments_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    proc = run_cli("--port", "0", *args, env=clean_env(**env))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: python -m server"), proc.stderr
    assert "python -m server: error: " in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RINGSERVE_RING_ENTRIES", "3", "3 is not a power of two"),
        ("RINGSERVE_PORT", "70000", "70000 is not a TCP port"),
        ("RINGSERVE_BACKEND", "nope", "invalid choice 'nope'"),
    ],
)
def test_bad_environment_value_is_named_in_the_error(name: str, value: str, message: str) -> None:
    """The user set no flag: the message must name the variable, not the flag."""
    proc = run_cli(env=clean_env(**{name: value}))
    assert proc.returncode == 2, proc.stderr
    assert f"error: {name}: {message}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_port_in_use_exits_1(backend: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = run_cli("--backend", backend, "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (
        f"ringserve: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            "no_such_module_ringserve:app",
            "cannot load --app no_such_module_ringserve:app: No module named "
            "'no_such_module_ringserve'",
        ),
        (
            "tests.backends.wsgi_apps:missing",
            "cannot load --app tests.backends.wsgi_apps:missing: "
            "'tests.backends.wsgi_apps' has no attribute 'missing'",
        ),
        (
            "tests.backends.wsgi_apps",
            "cannot load --app tests.backends.wsgi_apps: "
            "--app must look like 'module:callable', got 'tests.backends.wsgi_apps'",
        ),
        (
            "tests.backends.wsgi_apps:ENVIRON_KEYS",
            "cannot load --app tests.backends.wsgi_apps:ENVIRON_KEYS: "
            "'tests.backends.wsgi_apps:ENVIRON_KEYS' is not callable",
        ),
    ],
    ids=["missing-module", "missing-attribute", "no-colon", "not-callable"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_app_exits_1(backend: str, app: str, message: str) -> None:
    proc = run_cli("--backend", backend, "--port", "0", "--app", app)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"ringserve: error: {message}\n"
    assert proc.stdout == ""


def test_workers_take_port_0_too(spawn) -> None:
    """The parent binds the port, so --port 0 gives every worker the same one."""
    srv = spawn("--backend", "epoll", "--port", "0", "--workers", "2").start()
    wait_for(lambda: len(srv.json_lines("listening")) == 2, what="both workers listening")
    ports = {line["port"] for line in srv.json_lines("listening")}
    assert ports == {srv.address[1]} and srv.address[1] != 0, ports
    assert srv.fetch(GET_CLOSE).body == HELLO
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


# -- options in a running server ---------------------------------------------------


def free_port() -> int:
    """A port nobody listens on now (for options that need a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_backlog_is_the_listen_backlog(spawn, backend: str) -> None:
    """--backlog reaches listen(): a listening socket's Send-Q in ``ss -ltn`` is its backlog."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    srv = spawn("--backend", backend, "--port", "0", "--backlog", "7").start()
    port = srv.address[1]
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    (line,) = out.splitlines()
    state, _recv_q, send_q, local, *_ = line.split()
    assert (state, send_q, local) == ("LISTEN", "7", f"127.0.0.1:{port}"), out


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_level_debug_logs_each_closed_connection(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0", "--log-level", "debug").start()
    assert srv.fetch(GET_CLOSE).body == HELLO
    line = srv.wait_line(r"DEBUG server\.loop: connection \d+ closed").string
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    assert "listening on" in srv.banner, line


def test_log_level_warning_hides_the_banner_and_info_lines(spawn) -> None:
    srv = spawn("--backend", "epoll", "--port", "0", "--log-level", "warning").start()
    assert srv.fetch(GET_CLOSE).body == HELLO  # the listening line on stdout is still there
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    assert srv.stderr_lines == [], srv.output()  # no banner, no "received SIGTERM"
    assert len(srv.json_lines("exit")) == 1


@pytest.mark.skipif(URING_SKIP is not None, reason=str(URING_SKIP))
def test_sqpoll_serves_from_a_kernel_polling_thread(spawn) -> None:
    """--sqpoll: the ring has a kernel SQ polling thread, and DEFER_TASKRUN is off with it."""
    srv = spawn("--backend", "uring", "--port", "0", "--sqpoll").start()
    assert srv.listening["taskrun"] != "defer", srv.listening
    assert srv.fetch(GET_CLOSE).body == HELLO
    threads = [p.read_text().strip() for p in Path(f"/proc/{srv.pid}/task").glob("*/comm")]
    assert f"iou-sqp-{srv.pid}" in threads, threads
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


# Runs as PID 1 of a new PID namespace, where docker/healthcheck.py, which
# probes the lowest-numbered `python -m server` process, can only see ours.
HEALTHCHECK_DRIVER = """
import json, subprocess, sys
from tests.support.server import ServerProcess

def check():
    done = subprocess.run([sys.executable, "docker/healthcheck.py"], capture_output=True,
                          text=True, timeout=30)
    return [done.returncode, done.stdout + done.stderr]

port = int(sys.argv[1])
results = {}
for protocol in ("http", "echo"):
    args = ["--backend", "epoll", "--protocol", protocol, "--port", str(port)]
    with ServerProcess(*args, env={"RINGSERVE_HOST": "127.0.0.1"}) as server:
        results[protocol] = check()
# A `python -m server --port P` process that does not listen: a dead port.
idle = ["-c", "import time; time.sleep(60)", "-m", "server", "--port", str(port)]
with subprocess.Popen([sys.executable, *idle]) as fake:
    results["dead"] = check()
    fake.kill()
print(json.dumps(results))
"""


def test_docker_healthcheck(tmp_path: Path) -> None:
    """docker/healthcheck.py: 0 for a live server on either protocol, non-zero for a dead port."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c"]
    argv += [HEALTHCHECK_DRIVER, str(free_port())]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and done.stderr.startswith("unshare:"):
        pytest.skip(f"no new PID namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results["http"][0] == 0 and "healthy: http on 127.0.0.1:" in results["http"][1]
    assert results["echo"][0] == 0 and "healthy: echo on 127.0.0.1:" in results["echo"][1]
    assert results["dead"][0] != 0 and "unhealthy" in results["dead"][1], results["dead"]


def test_two_workers_serve_forward_sigusr1_and_stop_on_sigterm(spawn) -> None:
    srv = spawn("--backend", "epoll", "--port", str(free_port()), "--workers", "2").start()
    wait_for(lambda: len(srv.json_lines("listening")) == 2, what="both workers listening")
    workers = {line["pid"] for line in srv.json_lines("listening")}
    assert len(workers) == 2 and srv.pid not in workers, workers
    served: set[int] = set()
    for _ in range(200):  # SO_REUSEPORT spreads connections by their source ports
        served.add(json.loads(srv.fetch(GET_STATS).body)["pid"])
        if served == workers:
            break
    assert served == workers, f"only {served} of {workers} answered"
    srv.signal(signal.SIGUSR1)  # the parent forwards it: each worker prints its line
    wait_for(lambda: len(srv.json_lines("stats")) == 2, what="a stats line from each worker")
    assert {line["pid"] for line in srv.json_lines("stats")} == workers
    assert srv.proc.poll() is None, "SIGUSR1 killed the parent"
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    exits = srv.json_lines("exit")
    assert {line["pid"] for line in exits} == workers
    assert all(line["open_connections"] == 0 for line in exits), exits


@pytest.mark.parametrize("backend", BACKENDS)
def test_grace_period_running_out_closes_the_request_in_flight(spawn, backend: str) -> None:
    """A request that never completes: after --timeout-graceful-shutdown the server gives up
    on it with a warning, closes its connection and still exits 0."""
    grace = 1.0
    srv = spawn("--backend", backend, "--port", "0", "--timeout-graceful-shutdown", str(grace))
    srv.start()
    with connect(srv.address) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
        wait_for(lambda: srv.stats()["bytes_in"] > 0, what="the partial request")
        started = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.wait(grace + 15) == 0, srv.output()
        took = time.monotonic() - started
        srv.wait_line("grace period over; closing 1 connections")
        with contextlib.suppress(ConnectionResetError):  # unread input: a reset is a close
            assert s.recv(100) == b"", "bytes instead of a close"
    assert took >= grace * 0.9, f"exited after {took:.2f} s, before the grace period ran out"
    (final,) = srv.json_lines("exit")
    assert final["open_connections"] == 0 and final["ops_in_flight"] == 0, final
