"""ASGI apps for tests/asgi/test_lifespan.py: each one answers HTTP with a short text,
and does one thing with the lifespan protocol; `events` notes what each saw."""

from __future__ import annotations

from typing import Any

events: list[Any] = []


async def _answer(scope: Any, send: Any) -> None:
    body = repr(sorted(scope.get("state", {}).items())).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _app(startup: str, shutdown: str) -> Any:
    """An app whose startup and shutdown answer 'complete', 'failed' or 'raise'."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await _answer(scope, send)
            return
        assert scope["type"] == "lifespan"
        for phase, how in (("startup", startup), ("shutdown", shutdown)):
            message = await receive()
            events.append(message["type"])
            assert message["type"] == f"lifespan.{phase}"
            if phase == "startup":
                scope["state"]["db"] = "open"
            if how == "raise":
                raise RuntimeError(f"{phase} raised")
            if how == "failed":
                await send({"type": f"lifespan.{phase}.failed", "message": f"no {phase} today"})
                return
            await send({"type": f"lifespan.{phase}.complete"})

    return app


complete = _app("complete", "complete")
startup_failed = _app("failed", "complete")
startup_raises = _app("raise", "complete")
shutdown_failed = _app("complete", "failed")


async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
    """An app that does not do lifespan: it raises on any other scope type, at once."""
    if scope["type"] != "http":
        events.append(("refused", scope["type"]))
        raise ValueError(f"unsupported scope type {scope['type']}")
    await _answer(scope, send)
