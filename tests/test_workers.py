"""``--workers``: supervision, SIGHUP reloads and ``--max-requests``, with real clients.

Each test runs ``python -m server`` as a child and drives it the way an
operator would (kill -9, SIGHUP, SIGTERM) while clients from
``tests.support.load`` count everything that goes wrong for them.  The
bounds are generous (a noisy 2-core machine): the tests assert what
happened, never how fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.backends.client import (
    HttpReader,
    connect,
    pattern,
    read_last_echo,
    refused,
    request,
    wait_for,
)
from tests.support import BACKENDS
from tests.support.load import Hammer, KeepAlive, Wrk, tcp
from tests.support.server import ServerProcess, clean_env

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
GET_STATS = request("GET", "/stats", headers=[("Connection", "close")])


def live_workers(srv: ServerProcess) -> set[int]:
    """The parent's child processes now (not the exited ones it has yet to reap)."""
    live = set()
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(srv.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.add(child.pid)
    return live


def listening_pids(srv: ServerProcess) -> list[int]:
    """The pids of the workers' listening lines, in order."""
    return [line["pid"] for line in srv.json_lines("listening")]


def exited_pids(srv: ServerProcess) -> set[int]:
    return {line["pid"] for line in srv.json_lines("exit")}


def start_workers(srv: ServerProcess, n: int) -> set[int]:
    srv.start()
    wait_for(lambda: len(srv.json_lines("listening")) >= n, timeout=20, what=f"{n} workers")
    pids = set(listening_pids(srv))
    assert len(pids) == n and srv.pid not in pids, pids
    return pids


def reload(srv: ServerProcess, old: set[int]) -> set[int]:
    """SIGHUP, then wait until a new worker replaced each of `old` and they exited."""
    before = len(srv.json_lines("listening"))
    srv.signal(signal.SIGHUP)
    wait_for(
        lambda: len(srv.json_lines("listening")) >= before + len(old),
        timeout=30,
        what=lambda: f"new workers after SIGHUP\n{srv.output()}",
    )
    new = set(listening_pids(srv)[before:])
    wait_for(
        lambda: old <= exited_pids(srv),
        timeout=30,
        what=lambda: f"the old workers {old} to exit\n{srv.output()}",
    )
    assert not new & old
    return new


# -- supervision ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(spawn, backend: str) -> None:
    srv = spawn("--backend", backend, "--port", "0", "--workers", "2")
    first = start_workers(srv, 2)
    victim, survivor = sorted(first)
    load = Hammer(tcp(srv.address), threads=4).start()
    try:
        wait_for(lambda: load.ok >= 50, timeout=20, what="load before the kill")
        os.kill(victim, signal.SIGKILL)
        srv.wait_line(rf"worker {victim} was killed by SIGKILL unexpectedly; restarting it")
        wait_for(lambda: len(srv.json_lines("listening")) == 3, timeout=20, what="a new worker")
        replacement = listening_pids(srv)[2]
        assert replacement not in first
        wait_for(lambda: live_workers(srv) == {survivor, replacement}, what="two live workers")
        served = load.ok
        wait_for(lambda: load.ok >= served + 50, timeout=20, what="load after the restart")
    finally:
        load.stop()
    # Only what the killed worker had accepted dies with it: one connection
    # per load thread at most; the queue it shared was served by the others.
    assert sum(load.errors().values()) <= 4, (load.errors(), load.first_errors)
    # The replacement takes connections from the same socket.
    answered = set()
    for _ in range(300):
        answered.add(json.loads(srv.fetch(GET_STATS).body)["pid"])
        if replacement in answered:
            break
    assert replacement in answered, answered
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


def run_server(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("how", "death"), [("raise", "exited with status 1"), ("kill", "was killed by SIGKILL")]
)
def test_workers_dying_at_start_up_make_the_parent_give_up(how: str, death: str) -> None:
    started = time.monotonic()
    done = run_server(
        "--backend", "epoll", "--port", "0", "--workers", "2",
        "--app", "tests.support.crashing_app:app",
        env=clean_env(CRASHING_APP=how),
    )  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last == (
        "ringserve: error: workers keep dying at start-up (5 in a row, each within 5 s of its "
        f"start; the last one {death}); giving up"
    ), done.stderr
    assert done.stdout == ""  # no worker ever listened
    # The slot that gave up started 5 workers, with a backoff between them
    # (0.1, 0.2, 0.4, 0.8 s), not a spin.
    starts = re.findall(r"worker \d+ started \(slot (\d)", done.stderr)
    assert sorted(starts.count(s) for s in "01")[1] == 5, starts
    slot = "0" if starts.count("0") == 5 else "1"
    delays = re.findall(rf"slot {slot}: next start in ([\d.]+) s", done.stderr)
    assert delays == ["0.1", "0.2", "0.4", "0.8"], done.stderr
    assert took >= 1.5, took


def test_a_reload_that_cannot_start_keeps_the_old_workers(spawn, tmp_path: Path) -> None:
    """New app code that fails to import: the workers that serve stay, until a good SIGHUP."""
    broken = tmp_path / "broken"
    env = clean_env(CRASHING_APP="raise", CRASHING_APP_IF=str(broken))
    srv = spawn(
        "--backend", "epoll", "--port", "0", "--workers", "2",
        "--app", "tests.support.crashing_app:app", env=env,
    )  # fmt: skip
    old = start_workers(srv, 2)
    broken.touch()
    srv.signal(signal.SIGHUP)
    for pid in old:
        srv.wait_line(
            rf"giving up replacing worker {pid}: 5 replacements in a row died", timeout=30
        )
    assert live_workers(srv) == old
    assert srv.fetch(request("GET", "/", headers=[("Connection", "close")])).body == b"mended\n"
    broken.unlink()
    new = reload(srv, old)
    wait_for(lambda: live_workers(srv) == new, what="only the new workers")
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_every_worker_gracefully(spawn, signum: int) -> None:
    srv = spawn(
        "--backend", "epoll", "--port", "0", "--workers", "2", "--timeout-graceful-shutdown", "15"
    )  # fmt: skip
    workers = start_workers(srv, 2)
    body = pattern(100_000, 3)
    with connect(srv.address) as s:
        s.sendall(request("POST", "/echo", headers=[("Content-Length", str(len(body)))]))
        s.sendall(body[:10_000])

        def received() -> bool:
            srv.signal(signal.SIGUSR1)
            time.sleep(0.2)
            return sum(line["bytes_in"] for line in srv.json_lines("stats")[-2:]) >= 10_000

        wait_for(received, timeout=20, what="the partial request in a worker")
        srv.signal(signum)
        name = signal.Signals(signum).name
        srv.wait_line(f"received {name}; stopping the workers")
        wait_for(lambda: refused(srv.address), what="new connections to be refused")
        assert srv.proc.poll() is None, "exited with a request in flight"
        s.sendall(body[10_000:])
        read_last_echo(s, body)
    assert srv.wait(30) == 0, srv.output()
    exits = srv.json_lines("exit")
    assert {line["pid"] for line in exits} == workers
    assert all(line["open_connections"] == 0 for line in exits), exits


def test_workers_stop_when_the_parent_is_killed(spawn) -> None:
    """They lead their own process groups, so only PR_SET_PDEATHSIG stops them then."""
    srv = spawn("--backend", "epoll", "--port", "0", "--workers", "2")
    workers = start_workers(srv, 2)
    procs = [psutil.Process(pid) for pid in workers]
    os.kill(srv.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(procs, timeout=20)
    for orphan in alive:  # out of the fixture's reach now that the parent is gone
        orphan.kill()
    assert alive == [], f"workers outlived their parent: {alive}"
    assert exited_pids(srv) == workers  # stopped as on SIGTERM: their exit lines


# -- reloads -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sighup_under_load_loses_no_request(spawn, backend: str) -> None:
    """Two SIGHUPs under three kinds of load: no client sees a refusal, a reset or an error.

    The Hammer's new connections test the shared accept queue (a worker
    that closed its own SO_REUSEPORT socket reset them); the keep-alive
    clients and wrk test the drain (closing idle keep-alive connections at
    once lost the requests already on their way).
    """
    srv = spawn("--backend", backend, "--port", "0", "--workers", "2")
    first = start_workers(srv, 2)
    url = f"http://{srv.address[0]}:{srv.address[1]}/"
    wrk = Wrk(url, seconds=6, connections=32) if shutil.which("wrk") else None
    wrk_end = time.monotonic() + 6
    hammer = Hammer(tcp(srv.address), threads=3).start()
    keep = KeepAlive(tcp(srv.address), threads=3).start()
    try:
        wait_for(lambda: hammer.ok >= 50 and keep.ok >= 50, timeout=20, what="load")
        second = reload(srv, first)
        third = reload(srv, second)
        reloaded = time.monotonic()
        served = hammer.ok, keep.ok
        wait_for(lambda: hammer.ok > served[0] + 50 and keep.ok > served[1] + 50, timeout=20)
    finally:
        hammer.stop()
        keep.stop()
    assert hammer.errors() == {}, hammer.first_errors
    assert keep.errors() == {}, keep.first_errors
    assert keep.counts["closes asked"] >= 1  # the drain answered with Connection: close
    if wrk is not None:
        summary, out = wrk.result()
        assert summary["errors"] == 0, out
        assert reloaded < wrk_end, "the reloads did not overlap wrk's run"
    wait_for(lambda: live_workers(srv) == third, what="only the newest workers")
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_retiring_worker_answers_the_next_request_then_closes(spawn, backend: str) -> None:
    """The drain: an idle keep-alive connection is not closed under its client's feet;
    its next request gets an answer with Connection: close, then the close."""
    srv = spawn("--backend", backend, "--port", "0", "--workers", "2")
    old = start_workers(srv, 2)
    with connect(srv.address) as s:
        reader = HttpReader(s)
        s.sendall(request("GET", "/stats"))
        owner = json.loads(reader.read_response().body)["pid"]
        srv.signal(signal.SIGHUP)
        srv.wait_line(rf"worker {owner} retiring: finishing 1 connections", timeout=30)
        time.sleep(0.3)  # idle: a stop would have closed it by now
        s.sendall(request("GET", "/stats"))
        resp = reader.read_response()
        assert resp.status == 200 and resp.header("connection") == b"close", resp
        assert json.loads(resp.body)["pid"] == owner
        reader.assert_eof()
    wait_for(lambda: old <= exited_pids(srv), timeout=30, what="the old workers to exit")
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


# -- --max-requests --------------------------------------------------------------


@pytest.mark.parametrize("app", [None, "tests.support.apps:asgi_whoami"], ids=["builtin", "asgi"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_max_requests_recycles_the_worker_without_a_client_error(
    spawn, backend: str, app: str | None
) -> None:
    srv = spawn(
        "--backend", backend, "--port", "0", "--max-requests", "150",
        "--max-requests-jitter", "50", *(["--app", app] if app else []),
    )  # fmt: skip
    start_workers(srv, 1)  # --max-requests alone: one supervised worker
    hammer = Hammer(tcp(srv.address), threads=2).start()
    keep = KeepAlive(tcp(srv.address), threads=2).start()
    try:
        wait_for(
            lambda: len(srv.json_lines("exit")) >= 4,
            timeout=60,
            what=lambda: f"four recycled workers\n{srv.output()}",
        )
    finally:
        hammer.stop()
        keep.stop()
    assert hammer.errors() == {}, hammer.first_errors
    assert keep.errors() == {}, keep.first_errors
    limits = {
        int(pid): int(n)
        for pid, n in re.findall(
            r"worker (\d+) started \(slot 0, replaced after (\d+) requests",
            "".join(srv.stderr_lines),
        )
    }
    exits = srv.json_lines("exit")
    for line in exits:
        limit = limits[line["pid"]]
        assert 150 <= limit <= 200
        # Its limit, plus at most one more request from each of the other
        # three clients (4 load threads, one connection each at a time).
        assert limit <= line["requests"] <= limit + 3, (limit, line)
    assert len(set(limits.values())) > 1, limits  # the jitter
    wait_for(lambda: len(live_workers(srv)) == 1, what="one worker")
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
