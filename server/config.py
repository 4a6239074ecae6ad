"""Configuration: the CLI, its environment variables, and the backend registry."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from server.backends.base import BackendName, BackendOptions, BackendUnavailable
from server.protocols.http import HttpName

if TYPE_CHECKING:
    from server.backends.base import Backend

ProtocolName = Literal["http", "echo"]
InterfaceName = Literal["auto", "asgi", "wsgi"]
LifespanMode = Literal["auto", "on", "off"]

# Imported lazily, so `--backend epoll` runs where the extension is missing.
BACKENDS: dict[BackendName, str] = {
    "epoll": "server.backends.epoll:EpollBackend",
    "uring": "server.backends.uring:UringBackend",
}

ENV_PREFIX = "RINGSERVE_"
MAX_RING_ENTRIES = 8192
MAX_CQ_ENTRIES = 65536  # IORING_MAX_CQ_ENTRIES; uring_backend.ring has it too (not imported: epoll)
MAX_RECV_BUFFERS = 32768
MAX_UDS_PATH_BYTES = 107  # sockaddr_un.sun_path is 108 bytes, NUL included
# ssl.PROTOCOL_TLS_SERVER, uvicorn's --ssl-version default (ssl is imported
# only when TLS is used); see server.protocols.tls.SSL_VERSIONS.
SSL_PROTOCOL_TLS_SERVER = 17
SSL_CERT_REQS = {0: "CERT_NONE", 1: "CERT_OPTIONAL", 2: "CERT_REQUIRED"}
SSL_VERSION_NAMES = {
    17: "PROTOCOL_TLS_SERVER: TLS 1.2 or 1.3",
    2: "PROTOCOL_TLS: the same",
    5: "PROTOCOL_TLSv1_2: TLS 1.2 only",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# Old flag -> the option it is now.  Still accepted, with a warning.
DEPRECATED_FLAGS: dict[str, str] = {
    "--keepalive-timeout": "--timeout-keep-alive",
    "--idle-timeout": "--timeout-read",
    "--header-timeout": "--timeout-header",
    "--grace-period": "--timeout-graceful-shutdown",
}


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a server run is built from; defaults are the safe ones.

    The four timeouts, in seconds:
        timeout_keep_alive: an HTTP connection with no request in progress
            is closed after this much silence.
        timeout_read: a request whose bytes stop arriving for this long
            gets 408; an echo connection (always reading) that receives
            nothing for this long is closed.
        timeout_header: a request head still incomplete after this long
            gets 408, however steadily it trickles in (HTTP).
        timeout_graceful_shutdown: on SIGTERM/SIGINT, how long requests
            in flight may take to finish.
    And with TLS, timeout_handshake: how long a TLS handshake may take in all.

    TLS is on when ``ssl_certfile`` is set (uvicorn's ``--ssl-*`` options;
    ``server/protocols/tls.py``).
    """

    backend: BackendName = "uring"
    protocol: ProtocolName = "http"
    http: HttpName = "h11"
    host: str = "127.0.0.1"
    port: int = 8080
    backlog: int = 4096  # the kernel caps it at net.core.somaxconn (4096 by default)
    max_connections: int = 10_000
    ring_entries: int = 256
    cq_factor: int = 8
    recv_buffer_size: int = 4096
    recv_buffers: int = 2048
    sqpoll: bool = False
    tcp_nodelay: bool = True
    timeout_keep_alive: float = 5.0
    timeout_read: float = 30.0
    timeout_header: float = 20.0
    timeout_graceful_shutdown: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    app: str | None = None
    interface: InterfaceName = "auto"
    factory: bool = False
    lifespan: LifespanMode = "auto"
    root_path: str = ""
    wsgi_threads: int = 0  # 0: a WSGI app runs inline, in the loop
    log_level: str = "info"
    workers: int = 1
    max_requests: int = 0  # 0: workers are never recycled
    max_requests_jitter: int = 0
    uds: str | None = None
    uds_mode: int = 0o666
    fd: int | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: int = 0  # ssl.CERT_NONE
    ssl_ciphers: str | None = None  # the ssl module's default list
    ssl_version: int = SSL_PROTOCOL_TLS_SERVER
    timeout_handshake: float = 10.0
    access_log: bool = False
    proxy_headers: bool = False
    forwarded_allow_ips: str = "127.0.0.1"
    metrics: str | None = None  # HOST:PORT

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    def backend_options(self) -> BackendOptions:
        return BackendOptions(
            max_connections=self.max_connections,
            ring_entries=self.ring_entries,
            cq_factor=self.cq_factor,
            recv_buffer_size=self.recv_buffer_size,
            recv_buffers=self.recv_buffers,
            sqpoll=self.sqpoll,
        )


def load_backend(name: BackendName, options: BackendOptions) -> Backend:
    """Import and construct backend `name`.

    Raises:
        BackendUnavailable: the mechanism cannot be used here (no ring can
            be created, or the uring extension is not built).
    """
    module_name, _, cls_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("uring_backend"):
            raise
        raise BackendUnavailable(
            f"the uring backend is not built ({exc}); run `make setup`, or use --backend epoll"
        ) from exc
    backend: Backend = getattr(module, cls_name)(options)
    return backend


def _power_of_two_up_to(limit: int, why: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        value = int(text)
        if value < 1 or value & (value - 1):
            raise argparse.ArgumentTypeError(f"{value} is not a power of two")
        if value > limit:
            raise argparse.ArgumentTypeError(f"{value} is over {limit} ({why})")
        return value

    return convert


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def file_mode(text: str) -> int:
    """Permission bits in octal: 660, 0660 or 0o660."""
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode (e.g. 660)") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text} is not a mode between 000 and 777")
    return value


def socket_path(text: str) -> str:
    """A Unix socket path: not empty, and short enough for sockaddr_un."""
    size = len(os.fsencode(text))
    if size == 0:
        raise argparse.ArgumentTypeError("the path is empty")
    if size > MAX_UDS_PATH_BYTES:
        raise argparse.ArgumentTypeError(
            f"the path is {size} bytes; a Unix socket path has at most {MAX_UDS_PATH_BYTES}"
        )
    return text


def cert_reqs(text: str) -> int:
    """--ssl-cert-reqs: 0, 1 or 2 (ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)."""
    value = int(text)
    if value not in SSL_CERT_REQS:
        choices = ", ".join(f"{k} ({v})" for k, v in SSL_CERT_REQS.items())
        raise argparse.ArgumentTypeError(f"{value} is not one of {choices}")
    return value


def ssl_version(text: str) -> int:
    """--ssl-version: one of the ssl module's PROTOCOL_* numbers a server can use."""
    value = int(text)
    if value in (3, 4):
        raise argparse.ArgumentTypeError(
            f"{value} is TLS {'1.0' if value == 3 else '1.1'}, which is not offered "
            "(the ssl module refuses versions below 1.2 by default)"
        )
    if value not in SSL_VERSION_NAMES:
        choices = ", ".join(f"{k} ({v})" for k, v in SSL_VERSION_NAMES.items())
        raise argparse.ArgumentTypeError(f"{value} is not one of {choices}")
    return value


def cipher_list(text: str) -> str:
    """--ssl-ciphers: an OpenSSL cipher string that selects at least one cipher."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
    except ssl.SSLError:
        raise argparse.ArgumentTypeError(f"no cipher matches {text!r}") from None
    return text


def _checked_by(check: Callable[[str], object], text: str) -> str:
    """`text`, if `check` accepts it; its ValueError becomes the usage error."""
    try:
        check(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def allow_ips(text: str) -> str:
    """A --forwarded-allow-ips value, checked (addresses, CIDR networks, or *)."""
    from server.protocols.http.proxy import ProxyHeaders

    return _checked_by(ProxyHeaders, text)


def host_port(text: str) -> str:
    """A --metrics value, checked: HOST:PORT, [IPv6]:PORT."""
    from server.metrics import parse_address

    return _checked_by(parse_address, text)


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


class _DeprecatedAlias(argparse.Action):
    """An old flag: sets the new option's value and warns once, on stderr."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        assert option_string is not None
        new = DEPRECATED_FLAGS[option_string]
        print(f"ringserve: warning: {option_string} is deprecated; use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m server",
        description="A single-threaded HTTP and TCP server with io_uring and epoll backends. "
        f"Every option can also be set as an environment variable {ENV_PREFIX}<OPTION> "
        f"(e.g. {ENV_PREFIX}BACKEND=epoll); the command line wins.",
    )

    def add(
        flag: str,
        kind: Callable[[str], Any],
        help_text: str,
        choices: list[str] | None = None,
        shown_default: str | None = None,
        metavar: str | None = None,
    ) -> None:
        # default=None marks "not on the command line": parse_config then
        # takes the environment variable, else the Config default.
        name = flag.lstrip("-").replace("-", "_")
        shown = getattr(d, name) if shown_default is None else shown_default
        help_text += f" (default: {shown}; env {ENV_PREFIX}{name.upper()})"
        p.add_argument(
            flag, type=kind, default=None, help=help_text, choices=choices, metavar=metavar
        )

    add("--backend", str, "I/O mechanism", choices=list(get_args(BackendName)))
    add("--protocol", str, "what to speak on each connection", choices=list(get_args(ProtocolName)))
    add("--http", str, "HTTP parser (--protocol http)", choices=list(get_args(HttpName)))
    add("--host", str, "address to bind")
    add("--port", port_number, "TCP port to bind (0 picks a free one)")
    add("--backlog", positive_int, "listen() backlog")
    add("--max-connections", positive_int, "connections served at once; more wait in the backlog")
    add(
        "--ring-entries",
        _power_of_two_up_to(MAX_RING_ENTRIES, "the CQ, 8x the SQ by default, is capped at 65536"),
        "io_uring SQ entries",
    )
    add(
        "--cq-factor",
        positive_int,
        f"io_uring CQ size as a multiple of the SQ (entries x factor <= {MAX_CQ_ENTRIES})",
    )
    add("--recv-buffer-size", positive_int, "bytes per provided receive buffer (uring)")
    add(
        "--recv-buffers",
        _power_of_two_up_to(MAX_RECV_BUFFERS, "the kernel's limit for a buffer ring"),
        "provided receive buffers (uring)",
    )
    add(
        "--timeout-keep-alive",
        positive_float,
        "seconds a connection with no request in progress may stay silent",
    )
    add(
        "--timeout-read",
        positive_float,
        "seconds a request may go without receiving a byte, then 408 "
        "(echo: a connection, then it is closed)",
    )
    add(
        "--timeout-header",
        positive_float,
        "seconds a request head may take in all, however steadily it trickles in; then 408 (HTTP)",
    )
    add(
        "--timeout-graceful-shutdown",
        positive_float,
        "seconds to finish in-flight requests on SIGTERM/SIGINT",
    )
    for old, new in DEPRECATED_FLAGS.items():
        p.add_argument(
            old,
            dest=new.lstrip("-").replace("-", "_"),
            type=positive_float,
            action=_DeprecatedAlias,
            help=f"deprecated: use {new}",
        )
    add("--max-header-bytes", positive_int, "largest request head; larger gets 431")
    add("--max-body-bytes", positive_int, "largest request body; larger gets 413")
    add(
        "--app",
        str,
        "serve an ASGI or WSGI application 'module:attribute' instead of the built-in app",
    )
    add(
        "--interface",
        str,
        "how to call --app: asgi, wsgi, or auto (ASGI if it is a coroutine function)",
        choices=list(get_args(InterfaceName)),
    )
    add(
        "--lifespan",
        str,
        "ASGI lifespan: on, off, or auto (on unless the app raises before taking part)",
        choices=list(get_args(LifespanMode)),
    )
    add("--root-path", str, "the ASGI root_path (the mount point in front of the app)")
    add(
        "--wsgi-threads",
        non_negative_int,
        "run a WSGI app in a pool of this many threads, so one that blocks stalls only its "
        "own requests (0: inline, in the loop)",
    )
    add("--log-level", str, "logging level", choices=["debug", "info", "warning", "error"])
    add(
        "--workers",
        positive_int,
        "worker processes; above 1 (or with --max-requests) a parent supervises them: it "
        "restarts one that dies, and replaces them on SIGHUP, each new one ready before the "
        "old one finishes its requests",
    )
    add(
        "--max-requests",
        non_negative_int,
        "a worker that has served this many HTTP requests (plus --max-requests-jitter) "
        "finishes them and is replaced; a supervising parent runs even with --workers 1",
        shown_default="0, never",
        metavar="N",
    )
    add(
        "--max-requests-jitter",
        non_negative_int,
        "add a random 0..J to each worker's --max-requests, so they are not replaced together",
        metavar="J",
    )
    add(
        "--uds",
        socket_path,
        "listen on a Unix socket at this path instead of TCP (a stale socket file is "
        "replaced, a live one refused; removed at exit)",
        shown_default="TCP",
        metavar="PATH",
    )
    add(
        "--uds-mode",
        file_mode,
        "permissions of the --uds socket file, in octal, set before it listens",
        shown_default="666",
        metavar="MODE",
    )
    add(
        "--fd",
        non_negative_int,
        "serve the listening socket (TCP or Unix) inherited as this file descriptor; systemd "
        "socket activation (LISTEN_FDS, LISTEN_PID) needs no option",
        shown_default="none",
        metavar="N",
    )
    add(
        "--ssl-certfile",
        str,
        "serve TLS with this PEM certificate chain (the key too, unless --ssl-keyfile)",
        shown_default="none, no TLS",
        metavar="PATH",
    )
    add(
        "--ssl-keyfile",
        str,
        "PEM private key of --ssl-certfile",
        shown_default="none",
        metavar="PATH",
    )
    add(
        "--ssl-keyfile-password",
        str,
        "password of an encrypted --ssl-keyfile (the environment variable keeps it out of ps)",
        shown_default="none",
        metavar="PASSWORD",
    )
    add(
        "--ssl-ca-certs",
        str,
        "PEM CA certificates that client certificates are checked against (--ssl-cert-reqs)",
        shown_default="none",
        metavar="PATH",
    )
    add(
        "--ssl-cert-reqs",
        cert_reqs,
        "client certificates: 0 not asked for, 1 checked if given, 2 required "
        "(ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)",
        metavar="0|1|2",
    )
    add(
        "--ssl-ciphers",
        cipher_list,
        "OpenSSL cipher string for TLS 1.2 (TLS 1.3's suites are OpenSSL's)",
        shown_default="the ssl module's",
        metavar="CIPHERS",
    )
    add(
        "--ssl-version",
        ssl_version,
        "the ssl module's PROTOCOL_* number: 17 or 2 negotiate TLS 1.2 or 1.3, 5 is TLS 1.2 only",
        metavar="N",
    )
    add(
        "--timeout-handshake",
        positive_float,
        "seconds a TLS handshake may take in all, then the connection is closed "
        "(ringserve's own; uvicorn has none)",
    )
    add(
        "--forwarded-allow-ips",
        allow_ips,
        "with --proxy-headers: the proxies trusted, comma-separated addresses and CIDR "
        "networks, or * for all",
    )
    add(
        "--metrics",
        host_port,
        "serve the counters for Prometheus at http://HOST:PORT/metrics "
        "(--workers N: worker i on PORT+i)",
    )
    p.add_argument(
        "--factory",
        action="store_true",
        default=False,
        help=f"--app names a factory to call (no arguments) for the app (env {ENV_PREFIX}FACTORY)",
    )
    p.add_argument(
        "--sqpoll",
        action="store_true",
        default=False,
        help="io_uring kernel SQ polling thread (burns a CPU; uring only)",
    )
    p.add_argument(
        "--tcp-nodelay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TCP_NODELAY on accepted connections: replies leave at once instead of "
        f"waiting for Nagle's algorithm (default: on; env {ENV_PREFIX}TCP_NODELAY=0 turns it off)",
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one line per response on stdout (client, request line, status, body bytes, "
        f"duration) (default: off; env {ENV_PREFIX}ACCESS_LOG=1)",
    )
    p.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="take the client address and scheme from Forwarded / X-Forwarded-For / "
        "X-Forwarded-Proto when the peer is in --forwarded-allow-ips "
        f"(default: off; env {ENV_PREFIX}PROXY_HEADERS=1)",
    )
    return p


_BOOLEAN_OPTIONS = ("tcp_nodelay", "access_log", "proxy_headers")


def _env_boolean(parser: argparse.ArgumentParser, name: str) -> bool | None:
    """The boolean environment variable `name` (None if unset); exits 2 if it is not one."""
    if name not in os.environ:
        return None
    env = os.environ[name].lower()
    if env not in _TRUE + _FALSE:
        parser.error(f"{name}: {env!r} is not a boolean (1/0, true/false, yes/no, on/off)")
    return env in _TRUE


def _env_name(parser: argparse.ArgumentParser, option: str) -> str:
    """The variable that sets `option`: the current name, else a deprecated one (warned)."""
    name = ENV_PREFIX + option.upper()
    if name in os.environ:
        return name
    for old, new in DEPRECATED_FLAGS.items():
        if new.lstrip("-").replace("-", "_") == option:
            old_name = ENV_PREFIX + old.lstrip("-").replace("-", "_").upper()
            if old_name in os.environ:
                print(f"ringserve: warning: {old_name} is deprecated; use {name}", file=sys.stderr)
                return old_name
    return name


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Build a Config from argv, then the environment, then the defaults.

    Exits 2 with a message naming the flag or the variable on bad input.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    defaults = Config()
    values: dict[str, Any] = {}
    for action in parser._actions:
        name = action.dest
        if not hasattr(defaults, name) or isinstance(action, _DeprecatedAlias):
            continue
        value = getattr(ns, name)
        env_name = ENV_PREFIX + name.upper()
        if name in ("sqpoll", "factory"):
            # A store_true flag: present means on; otherwise the environment.
            value = True if value else _env_boolean(parser, env_name)
        elif name in _BOOLEAN_OPTIONS and value is None:
            value = _env_boolean(parser, env_name)
        elif value is None and (env_name := _env_name(parser, name)) in os.environ:
            value = os.environ[env_name]
            convert = action.type
            if callable(convert):
                try:
                    value = convert(value)
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    parser.error(f"{env_name}: {exc}")
            if action.choices and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                parser.error(f"{env_name}: invalid choice {value!r} (choose from {choices})")
        if value is not None:
            values[name] = value
    config = Config(**values)
    if config.metrics is not None and config.workers > 1:
        _, port = config.metrics.rsplit(":", 1)
        if int(port) == 0 or int(port) + config.workers - 1 > 65535:
            parser.error(
                f"--metrics {config.metrics} with --workers {config.workers}: worker i serves "
                "on PORT+i, so PORT must be fixed and PORT+N-1 a TCP port"
            )
    if config.ring_entries * config.cq_factor > MAX_CQ_ENTRIES:
        parser.error(
            f"--ring-entries {config.ring_entries} x --cq-factor {config.cq_factor} "
            f"is over the kernel's {MAX_CQ_ENTRIES} CQ entries"
        )
    _check_combinations(parser, config, values)
    return config


def _check_combinations(
    parser: argparse.ArgumentParser, config: Config, given: dict[str, Any]
) -> None:
    """Options that mean nothing together: exit 2 rather than ignore one of them.

    `given` holds what came from the command line or the environment.
    """
    if config.uds is not None and config.fd is not None:
        parser.error("--uds and --fd both name the socket to serve: give one")
    other = "--uds" if config.uds is not None else "--fd" if config.fd is not None else None
    for name in ("host", "port"):
        if other is not None and name in given:
            parser.error(f"--{name} is for TCP; it cannot be combined with {other}")
    if "uds_mode" in given and config.uds is None:
        parser.error("--uds-mode needs --uds")
    if config.max_requests_jitter and not config.max_requests:
        parser.error("--max-requests-jitter needs --max-requests")
    if not config.tls:
        for name in given:
            if name.startswith("ssl_") or name == "timeout_handshake":
                parser.error(f"--{name.replace('_', '-')} is for TLS: it needs --ssl-certfile")
    if config.ssl_cert_reqs and config.ssl_ca_certs is None:
        parser.error(
            f"--ssl-cert-reqs {config.ssl_cert_reqs} checks client certificates against "
            "--ssl-ca-certs: give it"
        )
    if config.ssl_ca_certs is not None and not config.ssl_cert_reqs:
        parser.error("--ssl-ca-certs is for client certificates: it needs --ssl-cert-reqs 1 or 2")
    if config.max_requests and config.protocol != "http":
        parser.error("--max-requests counts HTTP requests; it cannot be used with --protocol echo")
