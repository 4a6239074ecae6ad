"""A WSGI app whose import fails, for the tests of workers dying at start-up.

``CRASHING_APP`` says how: ``raise`` (an exception: the worker exits 1) or
``kill`` (SIGKILL to itself).  With ``CRASHING_APP_IF`` set to a path it
crashes only while that file exists, so a test can break and mend the app
between two reloads.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

_how = os.environ.get("CRASHING_APP", "raise")
_only_if = os.environ.get("CRASHING_APP_IF")

if _only_if is None or os.path.exists(_only_if):
    if _how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("this app cannot start (tests.support.crashing_app)")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = b"mended\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
