"""The image's HEALTHCHECK: probe the ringserve process in this container.

It reads the server's own command line (and RINGSERVE_* environment, which
the command line overrides, as in server/config.py) from /proc, so the check
follows `--port`, `--host` and `--protocol` however the container was
started.  http: `GET /` must answer 200.  echo: a line must come back.
With `--ssl-certfile` (TLS) the probe speaks TLS too, without checking the
certificate: it is the container's own server, reached as 127.0.0.1, a name
the certificate need not carry.
Exit status 0 is healthy, 1 unhealthy (Docker's HEALTHCHECK contract).
Standard library only; runs as the image's non-root user.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import urllib.request

TIMEOUT_S = 3.0


def _server_process() -> tuple[list[str], dict[str, str]]:
    """argv and environment of the lowest-numbered `python -m server` process."""
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "server" in argv and argv[argv.index("server") - 1] == "-m":
            env: dict[str, str] = {}
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    for item in f.read().split(b"\0"):
                        key, sep, value = item.decode().partition("=")
                        if sep:
                            env[key] = value
            except OSError:
                pass
            return argv[argv.index("server") + 1 :], env
    raise SystemExit("unhealthy: no `python -m server` process")


def _option(argv: list[str], env: dict[str, str], name: str, default: str) -> str:
    value = env.get("RINGSERVE_" + name.upper().replace("-", "_"), default)
    flag = "--" + name
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def main() -> int:
    argv, env = _server_process()
    host = _option(argv, env, "host", "127.0.0.1")
    port = int(_option(argv, env, "port", "8080"))
    protocol = _option(argv, env, "protocol", "http")
    tls = _option(argv, env, "ssl-certfile", "") != ""
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        if protocol == "echo":
            with socket.create_connection((host, port), timeout=TIMEOUT_S) as raw:
                sock = ctx.wrap_socket(raw) if ctx is not None else raw
                sock.sendall(b"healthcheck\n")
                got = b""
                while len(got) < 12:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    got += chunk
            ok = got == b"healthcheck\n"
        else:
            url_host = f"[{host}]" if ":" in host else host
            url = f"{'https' if tls else 'http'}://{url_host}:{port}/"
            with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=ctx) as resp:
                ok = resp.status == 200
    except OSError as exc:
        print(f"unhealthy: {protocol} on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(("healthy" if ok else "unhealthy") + f": {protocol} on {host}:{port}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
