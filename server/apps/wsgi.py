"""A PEP 3333 adapter: serve any WSGI application on the HTTP protocol.

By default the app runs synchronously inside the loop, so a slow app stalls
every connection: that is for apps that answer quickly.  With
``--wsgi-threads N`` it runs in a pool of N threads instead (`ThreadedWsgi`,
an ASGI app around the same adapter), so an app that blocks (a database
call, a ``time.sleep``) holds up only its own requests.  The request body is
complete (bounded by ``--max-body-bytes``) when the app is called, and the
response iterable is consumed before the response is sent; a Content-Length
is added when the app gives none.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from server.protocols.http.common import (
    APP_ERROR_BODY,
    APP_ERROR_HEADERS,
    Counters,
    Request,
    Response,
    split_target,
)

logger = logging.getLogger("server.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
StartResponse = Callable[..., Callable[[bytes], None]]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def load_app(spec: str) -> WsgiApp:
    """Import 'module:callable' (the callable may be a dotted attribute path).

    Raises:
        ValueError: the spec is malformed or does not name a callable.
        ImportError: the module cannot be imported.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must look like 'module:callable', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable")
    app: WsgiApp = obj
    return app


class WsgiAdapter:
    """Calls a WSGI app for each request.

    Args:
        app: the WSGI callable.
        server_name, server_port: for SERVER_NAME / SERVER_PORT.
        multiprocess: true when several workers serve the port.
    """

    def __init__(
        self,
        app: WsgiApp,
        server_name: str,
        server_port: int,
        multiprocess: bool = False,
        multithread: bool = False,
    ) -> None:
        self._app = app
        self._base: dict[str, Any] = {
            "SCRIPT_NAME": "",
            "SERVER_NAME": server_name,
            "SERVER_PORT": str(server_port),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
        }

    def environ(self, request: Request) -> dict[str, Any]:
        path, query = split_target(request.target)
        env = dict(self._base)
        env["REQUEST_METHOD"] = request.method.decode("ascii")
        # PEP 3333: native strings hold bytes decoded as latin-1.
        env["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
        env["QUERY_STRING"] = query.decode("latin-1")
        env["SERVER_PROTOCOL"] = "HTTP/" + request.http_version.decode("ascii")
        env["wsgi.input"] = io.BytesIO(request.body)
        env["CONTENT_LENGTH"] = str(len(request.body)) if request.body else ""
        for name, value in request.headers:
            if b"_" in name:
                # "X_Forwarded_For" would land on the same key as
                # "X-Forwarded-For": dropped, as nginx and gunicorn do.
                continue
            key = name.decode("latin-1").upper().replace("-", "_")
            val = value.decode("latin-1")
            if key == "CONTENT_TYPE":
                env["CONTENT_TYPE"] = val
                continue
            if key == "CONTENT_LENGTH":
                continue  # the body is complete: its real length is above
            key = "HTTP_" + key
            env[key] = env[key] + "," + val if key in env else val
        return env

    def __call__(self, request: Request) -> Response:
        status_line: list[str] = []
        headers: list[tuple[str, str]] = []
        written: list[bytes] = []

        def start_response(
            status: str, response_headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None:
                try:
                    if written:  # PEP 3333: headers sent already, re-raise
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif status_line:
                raise AssertionError("start_response called twice without exc_info")
            status_line[:] = [status]
            headers[:] = response_headers
            return written.append

        result = self._app(self.environ(request), start_response)
        try:
            written.extend(chunk for chunk in result if chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not status_line:
            raise RuntimeError("the WSGI app returned without calling start_response")
        body = b"".join(written)
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        status = int(status_line[0][:3])
        reason = status_line[0][4:].encode("latin-1")
        # RFC 9110 8.6: no Content-Length on 1xx/204, and none invented for
        # 304 or HEAD, where it would have to be the GET body's length.
        bodyless = status < 200 or status in (204, 304) or request.method == b"HEAD"
        if not bodyless and not any(k.lower() == b"content-length" for k, _ in out):
            out.append((b"content-length", b"%d" % len(body)))
        return Response(status, out, body, reason or None)


class ThreadedWsgi:
    """An ASGI app that runs a `WsgiAdapter` in a pool of threads.

    The body is gathered with ``receive()`` (the framing has bounded it), the
    adapter runs in the pool with the same `Request` the inline path gives
    it, and its `Response` goes back whole, through the parser's cached head.
    An app that raises gets the inline path's answer (a 500 that keeps the
    connection), so the bytes on the wire are the same either way.

    Args:
        adapter: the WSGI app, adapted.
        threads: the pool's size.
        counters: where an app's exception is counted (``app_errors``).
    """

    def __init__(self, adapter: WsgiAdapter, threads: int, counters: Counters) -> None:
        self._adapter = adapter
        self._counters = counters
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="wsgi")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to do (auto treats the return as "not supported")
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        query = scope["query_string"]
        target = scope["raw_path"] + (b"?" + query if query else b"")
        request = Request(
            scope["method"].encode("ascii"),
            target,
            scope["headers"],
            scope["http_version"].encode("ascii"),
            b"".join(chunks),
        )
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(self.pool, self._adapter, request)
        except Exception:
            logger.exception("Exception in WSGI application")
            self._counters.app_errors += 1
            response = Response(500, APP_ERROR_HEADERS, APP_ERROR_BODY)
        headers = response.headers
        # "reason": the WSGI status line's own phrase, so the bytes are the
        # inline path's (ASGI has no reason phrase; RequestCycle reads this key).
        start = {"type": "http.response.start", "status": response.status, "headers": headers}
        if response.reason is not None:
            start["reason"] = response.reason
        await send(start)
        await send({"type": "http.response.body", "body": response.body})

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
