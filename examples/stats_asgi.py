"""The stats endpoint mounted in a Starlette (or FastAPI) app, one batcher per worker process.

Run: python examples/stats_asgi.py
     (or serve it: uvicorn --app-dir examples stats_asgi:app --workers 2 --port 8000
      and watch it: writebehind top http://127.0.0.1:8000/writebehind)

The app's lifespan opens an ``AsyncBatcher`` (here into an in-memory sink; yours would be a
``PostgresSink``) and closes it at shutdown, so every worker process has its own batcher,
named after its pid. ``/writebehind`` is the stats endpoint of that worker's batcher, on the
application's own port: several workers never fight over a port. Run as a script, it
starts uvicorn on a free port of 127.0.0.1, sends itself a few heartbeats and reads its own
``/writebehind/stats``, then shuts down and exits 0.

In FastAPI it is the same: ``app = FastAPI(lifespan=lifespan)`` and
``app.mount("/writebehind", asgi_app(current_batcher))``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import writebehind as wb
from writebehind.integrations.asgi import asgi_app
from writebehind.testing import MemorySink

batchers: dict[str, wb.AsyncBatcher] = {}  # this worker's batcher, once the lifespan opened it


def current_batcher() -> wb.AsyncBatcher | None:
    """The batcher the stats endpoint serves (None before startup: the endpoint says 503)."""
    return batchers.get("heartbeats")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open this worker's batcher at startup; close it (flushing everything) at shutdown."""
    name = f"heartbeats-{os.getpid()}"
    async with wb.AsyncBatcher(MemorySink(), key="id", linger=0.05, name=name) as batcher:
        batchers["heartbeats"] = batcher
        yield
    del batchers["heartbeats"]


async def heartbeat(request: Request) -> JSONResponse:
    """``POST /heartbeat/{id}``: hand the record to the batcher and answer at once."""
    batcher = current_batcher()
    assert batcher is not None
    await batcher.add({"id": request.path_params["id"], "seen": request.query_params.get("at")})
    return JSONResponse({"accepted": True, "worker": os.getpid()})


app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/heartbeat/{id}", heartbeat, methods=["POST"]),
        # an internal route: it has no authentication (see docs/stats-endpoint.md)
        Mount("/writebehind", app=asgi_app(current_batcher)),
    ],
)


def _request(url: str, method: str = "GET") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
        body: bytes = r.read()
        return body


async def main() -> None:
    """Serve the app on a free port, send it three heartbeats, read its stats, stop."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    for agent in ("a", "b", "c"):
        await asyncio.to_thread(_request, f"{base}/heartbeat/{agent}?at=now", "POST")
    doc = json.loads(await asyncio.to_thread(_request, f"{base}/writebehind/stats"))
    print(
        f"{base}/writebehind/stats: {doc['batcher']} {doc['state']}, "
        f"accepted {doc['stats']['accepted']}"
    )
    assert doc["stats"]["accepted"] == 3
    server.should_exit = True
    await serving
    sock.close()


if __name__ == "__main__":
    asyncio.run(main())
