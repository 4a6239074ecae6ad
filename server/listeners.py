"""The listening socket: TCP, a Unix socket, an inherited fd, or systemd's.

`open_listener` picks one, in this order: the socket systemd passed
(``LISTEN_FDS``/``LISTEN_PID``, socket activation), ``--fd N``, ``--uds
PATH``, else TCP on ``--host``/``--port``.  Whatever it is, the backends see
a listening, non-blocking stream socket and nothing else, and with
``--workers`` every worker serves this one socket, inherited from the
parent (``server/workers.py`` says why).

Some facts that shape this module:

- Accepted sockets inherit ``TCP_NODELAY`` from a TCP listener (Linux
  copies the option on accept), so it is set once here; it does not exist
  for Unix sockets.
- A Unix socket's file outlives its socket: a server killed with SIGKILL
  leaves it behind, and bind() then fails with EADDRINUSE.  Connecting to it
  tells a stale file (ECONNREFUSED: nobody listens) from a live server, so
  a stale one is replaced and a live one refused.  The file is removed at
  exit by the process that created it, and only if it is still the same
  file (a newer server may have replaced it meanwhile).
- The mode (``--uds-mode``) is set with chmod() between bind() and listen():
  until listen() nobody can connect, whatever the umask made of the file.
- systemd passes sockets from fd 3 on and names the process they are for in
  ``LISTEN_PID``; like ``sd_listen_fds(unset_environment=1)`` the variables
  are removed once read, so no child process takes the sockets for its own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from typing import Any, Final

from server.config import Config

SD_LISTEN_FDS_START: Final = 3
SYSTEMD_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# A WSGI app behind a Unix socket still gets a SERVER_PORT (PEP 3333 wants
# one); gunicorn gives 80 too.
UDS_WSGI_PORT: Final = 80
_FAMILIES: Final = {  # as in "fd 5 is an IPv4 stream socket"
    socket.AF_INET: "an IPv4",
    socket.AF_INET6: "an IPv6",
    socket.AF_UNIX: "a Unix",
}


class ListenerError(Exception):
    """The socket cannot be opened or used; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket and what the listening line says about it.

    Attributes:
        sock: listening, non-blocking; the backend that serves it closes it.
        host, port: the TCP address (None for a Unix socket).
        path: the Unix socket's path (None for TCP; "@name" for an
            abstract one).
        fd: the fd number it was inherited as (--fd, systemd), else None.
        fd_name: its name in ``LISTEN_FDNAMES`` (systemd's FileDescriptorName=).
        systemd: it came from socket activation.
        owned: (path, st_dev, st_ino) of the socket file this process made
            and removes at exit; None if it made none or a child serves it.
    """

    sock: socket.socket
    host: str | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None
    fd_name: str | None = None
    systemd: bool = False
    owned: tuple[str, int, int] | None = None

    @classmethod
    def of(cls, sock: socket.socket, **facts: Any) -> Listener:
        """Describe `sock` by its own address (family and getsockname())."""
        address = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            if isinstance(address, bytes):  # abstract: a NUL, then the name
                address = "@" + address[1:].decode("utf-8", "backslashreplace")
            return cls(sock, path=address, **facts)
        return cls(sock, host=address[0], port=address[1], **facts)

    def facts(self) -> dict[str, Any]:
        """What the listening line says: host and port always (null for a Unix
        socket), then "uds", "fd", "fd_name" and "systemd" when they apply."""
        out: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.path is not None:
            out["uds"] = self.path
        if self.fd is not None:
            out["fd"] = self.fd
        if self.fd_name is not None:
            out["fd_name"] = self.fd_name
        if self.systemd:
            out["systemd"] = True
        return out

    def wsgi_address(self) -> tuple[str, int]:
        """SERVER_NAME and SERVER_PORT: the TCP address, or the socket path and 80."""
        if self.path is not None:
            return self.path, UDS_WSGI_PORT
        assert self.host is not None and self.port is not None
        return self.host, self.port

    def where(self, scheme: str | None) -> str:
        """Where it listens, for people: ``http://host:port``, ``unix:PATH``, plus the fd."""
        if self.path is not None:
            text = f"unix:{self.path}"
        else:
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            text = f"{scheme}://{host}:{self.port}" if scheme else f"{host}:{self.port}"
        if self.systemd:
            return f"{text} (fd {self.fd} from systemd)"
        return text if self.fd is None else f"{text} (fd {self.fd})"

    def for_child(self) -> Listener:
        """The same socket for a process that serves it but does not own its file."""
        return replace(self, owned=None)

    def remove_file(self) -> None:
        """Remove the socket file this process created, if it is still that file."""
        if self.owned is None:
            return
        path, dev, ino = self.owned
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)


def open_listener(config: Config, environ: MutableMapping[str, str] | None = None) -> Listener:
    """The socket to serve, as the module docstring says.

    Raises:
        ListenerError: it cannot be opened, or what was inherited is not a
            listening stream socket.
    """
    return open_listeners(config, 1, environ)[0]


def open_listeners(
    config: Config, count: int, environ: MutableMapping[str, str] | None = None
) -> list[Listener]:
    """The sockets for `count` workers: `count` TCP sockets in one ``SO_REUSEPORT``
    group when the server opens its own TCP port, else the one socket
    (systemd's, --fd's, --uds's) that all of them share.

    Raises:
        ListenerError: as `open_listener`.
    """
    given = _given_listener(config, os.environ if environ is None else environ)
    return [given] if given is not None else tcp_group(config, count)


def _given_listener(config: Config, env: MutableMapping[str, str]) -> Listener | None:
    """systemd's socket, --fd's or --uds's; None when the server is to open a TCP port."""
    passed = systemd_fds(env)
    if passed is not None:
        if config.fd is not None or config.uds is not None:
            given = f"--fd {config.fd}" if config.fd is not None else f"--uds {config.uds}"
            raise ListenerError(
                f"systemd passed a socket (LISTEN_FDS) and {given} was given: use one or the other"
            )
        fd, name = passed
        sock = inherited_socket(fd, f"fd {fd} from systemd (LISTEN_FDS)", config.tcp_nodelay)
        return Listener.of(sock, fd=fd, fd_name=name, systemd=True)
    if config.fd is not None:
        sock = inherited_socket(config.fd, f"--fd {config.fd}", config.tcp_nodelay)
        return Listener.of(sock, fd=config.fd)
    if config.uds is not None:
        return unix_listener(config.uds, config.uds_mode, config.backlog)
    return None


def tcp_group(config: Config, count: int) -> list[Listener]:
    """`count` TCP sockets on --host/--port in one ``SO_REUSEPORT`` group (one: a plain socket).

    The kernel spreads new connections over the group by a hash of their
    addresses.  With --port 0 the first socket picks the port and the others
    join it.
    """
    first = tcp_listener(config, reuse_port=count > 1)
    group = [Listener.of(first)]
    try:
        for _ in range(count - 1):
            port = group[0].port
            assert port is not None
            group.append(Listener.of(tcp_listener(config, port, reuse_port=True)))
    except ListenerError:
        for listener in group:
            listener.sock.close()
        raise
    return group


def tcp_listener(
    config: Config, port: int | None = None, reuse_port: bool = False
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket on --host and `port` (default --port).

    TCP_NODELAY as --tcp-nodelay says; ``SO_REUSEPORT`` if `reuse_port`.
    """
    port = config.port if port is None else port
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(config.tcp_nodelay))
        sock.bind((config.host, port))
        sock.listen(config.backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on {config.host}:{port}: {exc.strerror}") from exc
    return sock


def unix_listener(path: str, mode: int, backlog: int) -> Listener:
    """A listening Unix socket at `path` with permissions `mode`, owned by this process.

    A stale socket file (nobody accepts on it) is replaced; a live one, or
    a file that is not a socket, is refused.
    """
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:  # created between our check and bind()
            raise ListenerError(f"--uds {path}: another process just bound it") from exc
        raise ListenerError(f"cannot listen on --uds {path}: {exc.strerror}") from exc
    st = os.lstat(path)
    owned = (path, st.st_dev, st.st_ino)
    try:
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        Listener(sock, owned=owned).remove_file()
        raise ListenerError(f"cannot listen on --uds {path}: {exc.strerror}") from exc
    return Listener(sock, path=path, owned=owned)


def _clear_stale_socket(path: str) -> None:
    """Remove `path` if it is a socket file nobody listens on; refuse anything else there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenerError(f"--uds {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"--uds {path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a live server with a full backlog answers EAGAIN, not a wait
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: its server is gone
        return
    except FileNotFoundError:
        return  # removed meanwhile
    except BlockingIOError:
        pass  # a live server, too busy to take us now
    except OSError as exc:
        why = exc.strerror
        raise ListenerError(f"--uds {path}: cannot tell whether it is in use: {why}") from exc
    finally:
        probe.close()
    raise ListenerError(f"--uds {path}: another server is listening on it")


def inherited_socket(fd: int, what: str, tcp_nodelay: bool) -> socket.socket:
    """The listening stream socket at `fd` (inherited), made non-blocking.

    Raises:
        ListenerError: `fd` is not open, not a socket, not a stream socket,
            not listening, or of a family the server does not speak.
    """
    try:
        os.fstat(fd)
    except OSError as exc:
        raise ListenerError(f"{what} is not an open file descriptor ({exc.strerror})") from exc
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenerError(f"{what} is not a socket ({exc.strerror})") from exc
    try:
        family = _FAMILIES.get(sock.family)
        if family is None:
            raise ListenerError(
                f"{what} is a socket of family {_name(sock.family)}; "
                "an IPv4, IPv6 or Unix stream socket is needed"
            )
        if sock.type != socket.SOCK_STREAM:
            raise ListenerError(
                f"{what} is {family} socket of type {_name(sock.type)}, not a stream socket"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ListenerError(
                f"{what} is {family} stream socket that is not listening "
                "(a connected socket? with systemd, use Accept=no)"
            )
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(tcp_nodelay))
        sock.set_inheritable(False)
        sock.setblocking(False)
    except ListenerError:
        sock.detach()  # not ours to close: it is reported, and the fd left as it was
        raise
    return sock


def _name(value: int) -> str:
    """An AF_* or SOCK_* constant by its name, else its number."""
    return getattr(value, "name", str(value))


def systemd_fds(environ: MutableMapping[str, str]) -> tuple[int, str | None] | None:
    """The fd systemd passed to this process and its name, or None if it passed none.

    Like ``sd_listen_fds(1)``: only when ``LISTEN_PID`` is this process, and
    the variables are removed from `environ` once read.

    Raises:
        ListenerError: the variables are malformed, or name more than the
            one socket the server serves.
    """
    pid_text = environ.get("LISTEN_PID")
    if pid_text is None or "LISTEN_FDS" not in environ:
        return None
    fds_text = environ["LISTEN_FDS"]
    names = environ.get("LISTEN_FDNAMES")
    try:
        pid = int(pid_text)
    except ValueError:
        raise ListenerError(f"LISTEN_PID={pid_text!r} is not a process id") from None
    if pid != os.getpid():
        return None  # meant for another process (one that exec'd us, say)
    for name in SYSTEMD_VARIABLES:
        environ.pop(name, None)
    try:
        count = int(fds_text)
    except ValueError:
        raise ListenerError(f"LISTEN_FDS={fds_text!r} is not a number") from None
    if count == 0:
        return None
    if count < 0:
        raise ListenerError(f"LISTEN_FDS={fds_text!r} is not a number of sockets")
    if count != 1:
        raise ListenerError(
            f"systemd passed {count} sockets (LISTEN_FDS={fds_text}); ringserve serves one: "
            "give its .socket unit a single ListenStream="
        )
    return SD_LISTEN_FDS_START, names.split(":")[0] if names else None
