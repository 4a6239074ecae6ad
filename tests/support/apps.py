"""WSGI apps for the process tests: which process serves, and with what environment.

``whoami`` answers with its pid, the systemd variables it sees (socket
activation must have removed them) and SERVER_NAME/SERVER_PORT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def whoami(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    info = {
        "pid": os.getpid(),
        "environ": {k: os.environ.get(k) for k in SYSTEMD_VARIABLES},
        "SERVER_NAME": environ["SERVER_NAME"],
        "SERVER_PORT": environ["SERVER_PORT"],
    }
    body = json.dumps(info).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


async def asgi_whoami(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI twin of `whoami` (its pid only); refuses lifespan as a bare app may."""
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    body = json.dumps({"pid": os.getpid()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
