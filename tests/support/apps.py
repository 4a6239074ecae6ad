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
