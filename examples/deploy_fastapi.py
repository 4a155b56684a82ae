"""Recipe: FastAPI under ``uvicorn --workers 2``, an ``AsyncBatcher`` per worker process.

Serve it (``pip install 'writebehind[postgres]' fastapi uvicorn``)::

    uvicorn --app-dir examples deploy_fastapi:app --workers 2 --timeout-graceful-shutdown 10

The lifespan opens the batcher when a worker starts and closes it when the worker stops:
``async with`` flushes everything the batcher holds, within its ``close_timeout``.
uvicorn runs the lifespan in each worker process, so each worker has its own batcher (and
its own PostgreSQL pool); nothing is shared across processes.

``POST /records/{request_id}`` hands one record to this worker's batcher and answers at
once; the records reach a PostgreSQL table in batches (appended: the table has no key).
``/writebehind`` is the stats endpoint of the worker that answers (see
docs/stats-endpoint.md): mounted in the app, it shares the app's port, so the workers never
fight over one.

On SIGTERM (or Ctrl-C) the uvicorn parent passes SIGTERM to the workers; each stops taking
connections, finishes the requests it holds (for at most ``--timeout-graceful-shutdown``
seconds), then runs the lifespan's shutdown, where the batcher closes.

Run as a script (``python examples/deploy_fastapi.py``) it creates a table, serves the app
with two workers on a free port of 127.0.0.1, sends it 200 requests, stops uvicorn with
SIGTERM, counts the rows and drops the table. Set ``WB_PG_DSN`` for another server than
``postgresql://root@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

import writebehind as wb
from writebehind.integrations.asgi import asgi_app

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = os.environ.get("WB_TABLE", "deploy_requests")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One batcher per worker process, open while the worker serves."""
    sink = wb.PostgresSink(DSN, table=TABLE, pool_size=2)
    name = f"requests-{os.getpid()}"  # tells the workers apart in `writebehind top`
    async with wb.AsyncBatcher(sink, linger=1.0, close_timeout=5.0, name=name) as batcher:
        app.state.batcher = batcher
        yield
    # leaving the block closed the batcher: what it held is written (or counted lost)


def current_batcher() -> wb.AsyncBatcher | None:
    """The batcher the stats endpoint serves (None before startup: it answers 503)."""
    return getattr(app.state, "batcher", None)


app = FastAPI(lifespan=lifespan)
app.mount("/writebehind", asgi_app(current_batcher))  # an internal route: no authentication


@app.post("/records/{request_id}")
async def record(request_id: str, request: Request) -> dict[str, Any]:
    batcher: wb.AsyncBatcher = request.app.state.batcher
    await batcher.add({"request_id": request_id, "pid": os.getpid()})  # waits only when full
    return {"accepted": True, "pid": os.getpid()}


def main() -> None:
    """Create a table, serve the app with two workers, send it requests, SIGTERM."""
    import concurrent.futures
    import http.client
    import signal
    import socket
    import subprocess
    import time
    import uuid

    import psycopg

    table = f"deploy_fastapi_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (request_id text NOT NULL, pid integer NOT NULL)")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    host, port = sock.getsockname()
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-m", "uvicorn", "--app-dir", here, "deploy_fastapi:app"]
    command += ["--workers", "2", "--timeout-graceful-shutdown", "10", "--log-level", "warning"]
    command += ["--fd", str(sock.fileno())]
    env = {**os.environ, "WB_TABLE": table, "PYTHONDONTWRITEBYTECODE": "1"}
    server = subprocess.Popen(command, pass_fds=[sock.fileno()], env=env, start_new_session=True)
    sock.close()

    def post(n: int) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=20)
        try:
            conn.request("POST", f"/records/r{n}")
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(200)))
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        took = time.monotonic() - started
        with psycopg.connect(DSN, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(*), count(DISTINCT request_id) FROM {table}"
            ).fetchone()
    finally:
        if server.poll() is None:  # something went wrong: end it, workers included
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")
    assert row is not None
    ok = statuses.count(200)
    print(f"{ok} of 200 requests answered 200; {row[0]} rows, {row[1]} distinct; uvicorn "
          f"exited {code} {took:.1f} s after SIGTERM")  # fmt: skip
    assert (ok, row[0], row[1]) == (200, 200, 200)


if __name__ == "__main__":
    main()
