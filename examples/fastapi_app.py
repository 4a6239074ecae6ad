"""A small FastAPI app, as a ringserve user would serve it.

Run it on either backend and parser (``pip install -e '.[fastapi]'``)::

    python -m server --app examples.fastapi_app:app --backend uring --http httptools
    python -m server --app examples.fastapi_app:create_app --factory   # the same, built by a call

or on uvicorn (``python -m uvicorn examples.fastapi_app:app``), also on our
event loop (``--loop server.aio:new_event_loop``).  ``loadtest.compare --app
fastapi`` benchmarks it on ours and the peers with ``GET /items/42?q=hello``;
``loadtest/locustfile.py``'s ``FastApiUser`` drives ``/items`` both ways.

- ``GET /items/{item_id}?q=``: the path and query, validated and echoed as
  JSON (``{"item_id": 42, "q": "hello"}``; 422 for an ``item_id`` that is not
  an integer);
- ``POST /items``: a JSON `Item` validated by pydantic, answered 201 with it
  and its total (422 for a bad body);
- ``GET /items?count=N``: N items streamed as NDJSON, one line each, from an
  async generator (``StreamingResponse``: a chunked response);
- ``GET /``: a greeting kept in the lifespan state (startup runs before the
  server accepts: ``--lifespan auto``, the default, or ``on``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

GREETING = "Hello from ringserve"


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    price: float = Field(gt=0)
    quantity: int = Field(default=1, ge=1, le=1000)
    tags: list[str] = Field(default_factory=list, max_length=10)


class StoredItem(Item):
    total: float


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"greeting": GREETING}  # copied into each request's state


def create_app() -> FastAPI:
    """The app; ``python -m server --factory --app examples.fastapi_app:create_app`` calls it."""
    api = FastAPI(title="ringserve example", lifespan=lifespan)

    @api.get("/")
    async def root(request: Request) -> dict[str, str]:
        return {"message": request.state.greeting}

    @api.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @api.post("/items", status_code=201)
    async def create_item(item: Item) -> StoredItem:
        return StoredItem(**item.model_dump(), total=round(item.price * item.quantity, 2))

    @api.get("/items")
    async def list_items(count: int = Query(default=10, ge=0, le=1000)) -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            for i in range(count):
                yield json.dumps({"item_id": i, "name": f"item {i}"}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return api


app = create_app()
