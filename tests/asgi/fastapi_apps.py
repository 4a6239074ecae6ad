"""A FastAPI app and a Starlette app for tests/asgi/test_frameworks.py.

Each handler exercises one thing a real app does on ringserve's loop: JSON, path
and query parameters (a bad one is FastAPI's 422), a StreamingResponse, a background
task, the lifespan state, asyncio.sleep, asyncio.open_connection to a local TCP
server, run_in_executor, asyncio.timeout, httpx.AsyncClient (anyio/sniffio detect
asyncio on our loop).  `events` notes what ran after the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

events: list[Any] = []


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    events.append("startup")
    yield {"greeting": "hello from lifespan"}
    events.append("shutdown")


api = FastAPI(lifespan=lifespan)


@api.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None, limit: int = 10) -> dict[str, Any]:
    return {"item_id": item_id, "q": q, "limit": limit}


@api.post("/echo-json")
async def echo_json(payload: dict[str, Any]) -> dict[str, Any]:
    return {"got": payload}


@api.get("/stream")
async def stream() -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0)
            yield b"piece %d;" % i

    return StreamingResponse(pieces(), media_type="text/plain")


@api.get("/background")
async def background(tasks: BackgroundTasks) -> dict[str, str]:
    async def later() -> None:
        await asyncio.sleep(0.01)
        events.append("background ran")

    tasks.add_task(later)
    return {"queued": "yes"}


@api.get("/state")
async def state(request: Request) -> dict[str, str]:
    return {"greeting": request.state.greeting}


@api.get("/sleep")
async def sleep() -> dict[str, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(0.05)
    return {"slept": round(loop.time() - start, 2)}


@api.get("/tcp")
async def tcp(port: int) -> dict[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return {"reply": line.decode().strip()}


def _blocking() -> str:
    return threading.current_thread().name


@api.get("/executor")
async def executor() -> dict[str, bool]:
    name = await asyncio.get_running_loop().run_in_executor(None, _blocking)
    return {"other_thread": name != threading.current_thread().name}


@api.get("/timeout")
async def timeout() -> dict[str, bool]:
    try:
        async with asyncio.timeout(0.02):
            await asyncio.sleep(5)
    except TimeoutError:
        return {"timed_out": True}
    return {"timed_out": False}


@api.get("/httpx")
async def via_httpx(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"http://127.0.0.1:{port}/hello")
    return {"status": resp.status_code, "body": resp.text}


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"starlette {request.path_params['name']}")


async def body_len(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"len": len(body), "state": request.state.greeting})


star = Starlette(
    routes=[Route("/hi/{name}", homepage), Route("/len", body_len, methods=["POST"])],
    lifespan=lifespan,
)
