"""The listening socket: ``--uds``, ``--fd`` and systemd socket activation, with real clients.

Each test runs ``python -m server`` as a child; a Unix socket is spoken to
with curl (``--unix-socket``) and with the test's own client, an inherited
socket is handed over the way a supervisor or systemd does it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.servers import ServerStartError
from tests.backends.client import HELLO, request, wait_for
from tests.support import BACKENDS
from tests.support.server import ServerProcess, clean_env, unix_fetch

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
GET_CLOSE = request("GET", "/", headers=[("Connection", "close")])
WHOAMI = ("--app", "tests.support.apps:whoami")


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ringserve.sock")


def run_server(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m server *args`` to its end, with a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=30, check=False,
        **kwargs,
    )  # fmt: skip


def curl_unix(path: str, url: str = "http://localhost/") -> str:
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--unix-socket", path, url],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# -- --uds -------------------------------------------------------------------


@needs_curl
@pytest.mark.parametrize("backend", BACKENDS)
def test_uds_serves_curl_and_removes_its_file_at_exit(
    spawn_bare, backend: str, sock_path: str
) -> None:
    srv = spawn_bare("--backend", backend, "--uds", sock_path).start()
    info = srv.listening
    assert (info["uds"], info["host"], info["port"]) == (sock_path, None, None), info
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o666  # the default --uds-mode
    assert curl_unix(sock_path) == HELLO.decode()
    assert f"listening on unix:{sock_path}" in srv.banner
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    assert not os.path.exists(sock_path), "the socket file outlived the server"


@pytest.mark.parametrize("mode", ["600", "0o660"])
def test_uds_mode_is_applied(spawn_bare, sock_path: str, mode: str) -> None:
    srv = spawn_bare("--backend", "epoll", "--uds", sock_path, "--uds-mode", mode).start()
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == int(mode, 8)
    assert srv.fetch(GET_CLOSE).body == HELLO
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


def test_uds_mode_comes_from_the_environment_too(spawn_bare, sock_path: str) -> None:
    env = clean_env(RINGSERVE_UDS=sock_path, RINGSERVE_UDS_MODE="640")
    srv = spawn_bare("--backend", "epoll", env=env).start()
    assert srv.listening["uds"] == sock_path
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o640
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stale_socket_file_is_replaced(spawn_bare, backend: str, sock_path: str) -> None:
    """What a server killed with SIGKILL leaves: a socket file nobody listens on."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.listen(1)
    dead.close()  # the file stays
    with pytest.raises(ConnectionRefusedError):
        unix_fetch(sock_path, GET_CLOSE)
    srv = spawn_bare("--backend", backend, "--uds", sock_path).start()
    assert srv.fetch(GET_CLOSE).body == HELLO
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()


def test_a_live_socket_is_refused_and_left_alone(spawn_bare, sock_path: str) -> None:
    first = spawn_bare("--backend", "epoll", "--uds", sock_path).start()
    done = run_server("--backend", "epoll", "--uds", sock_path)
    assert done.returncode == 1
    assert (
        done.stderr == f"ringserve: error: --uds {sock_path}: another server is listening on it\n"
    )
    assert first.fetch(GET_CLOSE).body == HELLO  # still its file, still served
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.output()


def test_a_file_that_is_not_a_socket_is_refused(sock_path: str) -> None:
    Path(sock_path).write_text("precious")
    done = run_server("--backend", "epoll", "--uds", sock_path)
    assert done.returncode == 1
    assert done.stderr == (
        f"ringserve: error: --uds {sock_path} exists and is not a socket; not replacing it\n"
    )
    assert Path(sock_path).read_text() == "precious"


def test_a_uds_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "no" / "such" / "dir" / "s.sock")
    done = run_server("--backend", "epoll", "--uds", path)
    assert done.returncode == 1
    assert (
        done.stderr
        == f"ringserve: error: cannot listen on --uds {path}: No such file or directory\n"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_share_the_uds_and_the_parent_removes_it(
    spawn_bare, backend: str, sock_path: str
) -> None:
    srv = spawn_bare("--backend", backend, "--uds", sock_path, "--workers", "2", *WHOAMI).start()
    wait_for(lambda: len(srv.json_lines("listening")) == 2, timeout=20, what="both workers")
    workers = {line["pid"] for line in srv.json_lines("listening")}
    assert {line["uds"] for line in srv.json_lines("listening")} == {sock_path}
    info = json.loads(unix_fetch(sock_path, GET_CLOSE).body)
    assert info["pid"] in workers
    # PEP 3333 wants a SERVER_PORT; behind a Unix socket it is the path and 80 (as gunicorn).
    assert (info["SERVER_NAME"], info["SERVER_PORT"]) == (sock_path, "80")
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.output()
    assert not os.path.exists(sock_path)


# -- --fd --------------------------------------------------------------------


@contextlib.contextmanager
def passing(sock: socket.socket) -> Iterator[None]:
    """Children started meanwhile inherit `sock` at its fd number (subprocess's pass_fds).

    What a supervisor does before it execs the server; ``loadtest.servers``
    spawns with close_fds, so the fd has to be named.
    """
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), sock.fileno())
        return real(*args, **kwargs)

    subprocess.Popen = popen  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        subprocess.Popen = real  # type: ignore[misc]


def listening_tcp() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def listening_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    return sock


@pytest.mark.parametrize("backend", BACKENDS)
def test_fd_serves_an_inherited_tcp_socket(spawn_bare, backend: str) -> None:
    with listening_tcp() as listener:
        fd = listener.fileno()
        srv = spawn_bare("--backend", backend, "--fd", str(fd))
        with passing(listener):
            srv.start()
        info = srv.listening
        assert (info["fd"], info["host"], info["port"]) == (fd, *listener.getsockname()), info
        assert srv.fetch(GET_CLOSE).body == HELLO
        assert f"(fd {fd})" in srv.banner
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0, srv.output()


def test_fd_serves_an_inherited_unix_socket_with_workers(spawn_bare, sock_path: str) -> None:
    with listening_unix(sock_path) as listener:
        fd = listener.fileno()
        srv = spawn_bare("--backend", "epoll", "--fd", str(fd), "--workers", "2")
        with passing(listener):
            srv.start()
        wait_for(lambda: len(srv.json_lines("listening")) == 2, timeout=20, what="both workers")
        for line in srv.json_lines("listening"):
            assert (line["fd"], line["uds"], line["host"]) == (fd, sock_path, None), line
        assert unix_fetch(sock_path, GET_CLOSE).body == HELLO
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0, srv.output()
        assert os.path.exists(sock_path), "the server removed a socket file it did not create"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (socket.socket, "is an IPv4 stream socket that is not listening"),
        (
            lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
            "is an IPv4 socket of type SOCK_DGRAM, not a stream socket",
        ),
        (lambda: open(os.devnull, "rb"), "is not a socket (Socket operation on non-socket)"),  # noqa: SIM115
    ],
    ids=["not-listening", "udp", "not-a-socket"],
)
def test_fd_that_is_not_a_listening_stream_socket_is_refused(make, says: str) -> None:
    with make() as thing:
        fd = thing.fileno()
        done = run_server("--backend", "epoll", "--fd", str(fd), pass_fds=(fd,))
    assert done.returncode == 1
    assert done.stderr.startswith(f"ringserve: error: --fd {fd} {says}"), done.stderr


def test_fd_that_is_not_open_is_refused() -> None:
    done = run_server("--backend", "epoll", "--fd", "97")
    assert done.returncode == 1
    assert done.stderr == (
        "ringserve: error: --fd 97 is not an open file descriptor (Bad file descriptor)\n"
    )


# -- systemd socket activation ---------------------------------------------------


# systemd's part of socket activation, as a small exec wrapper: the socket
# becomes fd 3, and LISTEN_PID is the pid of what runs after exec (its own).
SYSTEMD = """
import os, sys
fd, pid, fds, names = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid()) if pid == "self" else pid
os.environ["LISTEN_FDS"] = fds
if names:
    os.environ["LISTEN_FDNAMES"] = names
os.execv(sys.executable, [sys.executable, "-m", "server", *sys.argv[5:]])
"""


def activated(
    spawn_bare,
    sock: socket.socket,
    *args: str,
    fds: str = "1",
    names: str = "web",
    pid: str = "self",
) -> ServerProcess:
    """The server started the way systemd starts a socket-activated service (not started)."""
    wrapper = [sys.executable, "-c", SYSTEMD, str(sock.fileno()), pid, fds, names]
    return spawn_bare(argv=[*wrapper, *args])


@pytest.mark.parametrize("backend", BACKENDS)
def test_socket_activation_serves_the_socket_systemd_passed(spawn_bare, backend: str) -> None:
    with listening_tcp() as listener:
        srv = activated(spawn_bare, listener, "--backend", backend, *WHOAMI)
        with passing(listener):
            srv.start()
        info = srv.listening
        assert (info["fd"], info["fd_name"], info["systemd"]) == (3, "web", True), info
        assert (info["host"], info["port"]) == listener.getsockname()
        assert "(fd 3 from systemd)" in srv.banner
        env = json.loads(srv.fetch(GET_CLOSE).body)["environ"]
        # Read and removed, as sd_listen_fds(1) does: no child takes them for its own.
        assert env == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0, srv.output()


@pytest.mark.parametrize("backend", BACKENDS)
def test_socket_activation_with_workers(spawn_bare, backend: str, sock_path: str) -> None:
    with listening_unix(sock_path) as listener:
        srv = activated(spawn_bare, listener, "--backend", backend, "--workers", "2", *WHOAMI)
        with passing(listener):
            srv.start()
        wait_for(lambda: len(srv.json_lines("listening")) == 2, timeout=20, what="both workers")
        workers = {line["pid"] for line in srv.json_lines("listening")}
        assert all(line["systemd"] for line in srv.json_lines("listening"))
        answer = json.loads(unix_fetch(sock_path, GET_CLOSE).body)
        assert answer["pid"] in workers
        assert set(answer["environ"].values()) == {None}
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0, srv.output()


def test_socket_activation_for_another_process_is_not_used(spawn_bare) -> None:
    """LISTEN_PID names someone else (an inherited environment): the server opens its own port."""
    with listening_tcp() as listener:
        args = ("--backend", "epoll", "--host", "127.0.0.1", "--port", "0", *WHOAMI)
        srv = activated(spawn_bare, listener, *args, pid="1")
        with passing(listener):
            srv.start()
        info = srv.listening
        assert "systemd" not in info and "fd" not in info, info
        assert info["port"] != listener.getsockname()[1]
        env = json.loads(srv.fetch(GET_CLOSE).body)["environ"]
        assert env["LISTEN_PID"] == "1"  # not its business: left as it was
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0, srv.output()


@pytest.mark.parametrize(
    ("args", "fds", "says"),
    [
        ((), "2", "systemd passed 2 sockets (LISTEN_FDS=2); ringserve serves one: give its "
                  ".socket unit a single ListenStream="),
        ((), "many", "LISTEN_FDS='many' is not a number"),
        (("--fd", "3"), "1", "systemd passed a socket (LISTEN_FDS) and --fd 3 was given: use "
                             "one or the other"),
    ],
    ids=["two-sockets", "not-a-number", "and-fd"],
)  # fmt: skip
def test_socket_activation_errors_are_clear(spawn_bare, args, fds: str, says: str) -> None:
    with listening_tcp() as listener:
        srv = activated(spawn_bare, listener, "--backend", "epoll", *args, fds=fds)
        with passing(listener), pytest.raises(ServerStartError, match="exited with status 1"):
            srv.start()
        assert f"ringserve: error: {says}\n" in srv.stderr_lines, srv.output()
