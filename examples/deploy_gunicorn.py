"""Recipe: gunicorn ``gthread`` workers serving a Flask app with the sync ``Batcher``.

This file is both the app (``create_app()``) and its gunicorn configuration (the settings
at the end)::

    pip install 'writebehind[postgres]' flask gunicorn
    gunicorn -c examples/deploy_gunicorn.py --chdir examples --workers 2 \\
        'deploy_gunicorn:create_app()'                  # the same with --preload

``POST /records/<request_id>`` hands one record to this process's batcher and answers at
once; the records reach a PostgreSQL table in batches (appended: the table has no key).
``/writebehind`` is the stats endpoint of the worker that answers.

- Without ``--preload`` gunicorn calls ``create_app()`` in each worker, so each worker opens
  its own batcher.
- With ``--preload`` the master calls it once, before forking. The library notices the fork
  and starts the batcher afresh in each worker at its first use (empty, with its own thread
  and its own PostgreSQL pool); the master's copy never writes a worker's records. No hook
  is needed: concurrent first requests wait for the one restart, and the stats endpoint's
  ``/health`` starts it too, so a readiness probe sees the worker ready.

On SIGTERM the master tells the workers to stop; a ``gthread`` worker finishes the requests
it holds and leaves through ``sys.exit``, so ``atexit`` runs: ``batcher.close()`` flushes
what the batcher holds (the library's own exit hook would too, with a warning that the
batcher was left open). Keep ``close_timeout`` below ``graceful_timeout``: a worker still
flushing when the graceful timeout ends is killed with SIGKILL, and what it held is lost.

Run as a script (``python examples/deploy_gunicorn.py``) it creates a table, serves the app
under ``gunicorn --preload`` with two workers on a free port of 127.0.0.1, sends it 200
requests, stops the master with SIGTERM, counts the rows and drops the table. Set
``WB_PG_DSN`` for another server than ``postgresql://root@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import writebehind as wb
from writebehind.integrations import wsgi as stats

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = os.environ.get("WB_TABLE", "deploy_requests")


def create_app() -> Flask:
    """The app and this process's batcher (closed at exit)."""
    sink = wb.PostgresSink(DSN, table=TABLE, pool_size=2)
    batcher = wb.Batcher(sink, linger=1.0, close_timeout=5.0, name="requests")
    batcher.start()
    atexit.register(batcher.close)  # in the worker: it flushes; in a --preload master: a no-op

    app = Flask(__name__)

    @app.post("/records/<request_id>")
    def record(request_id: str) -> dict[str, Any]:
        batcher.add({"request_id": request_id, "pid": os.getpid()})  # blocks only when full
        return {"accepted": True, "pid": os.getpid()}

    # this worker's stats endpoint, on an internal route (see docs/stats-endpoint.md)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/writebehind": stats.wsgi_app(batcher)}
    )
    return app


# -- gunicorn configuration (gunicorn -c examples/deploy_gunicorn.py) ------------------------
worker_class = "gthread"
threads = 8
graceful_timeout = 10  # seconds; more than the batcher's close_timeout
control_socket_disable = True  # gunicorn >= 25 would make ~/.gunicorn/gunicorn.ctl


def main() -> None:
    """Create a table, serve the app under gunicorn --preload, send it requests, SIGTERM."""
    import concurrent.futures
    import http.client
    import signal
    import socket
    import subprocess
    import time
    import uuid

    import psycopg

    table = f"deploy_gunicorn_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (request_id text NOT NULL, pid integer NOT NULL)")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    host, port = sock.getsockname()
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-m", "gunicorn", "-c", os.path.join(here, "deploy_gunicorn.py")]
    command += ["--workers", "2", "--preload", "--log-level", "warning"]
    command += ["--bind", f"fd://{sock.fileno()}", "deploy_gunicorn:create_app()"]
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WB_TABLE": table, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    server = subprocess.Popen(command, pass_fds=[sock.fileno()], env=env, start_new_session=True)
    sock.close()

    def post(n: int) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=10)
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
    print(f"{ok} of 200 requests answered 200; {row[0]} rows, {row[1]} distinct; gunicorn "
          f"exited {code} {took:.1f} s after SIGTERM")  # fmt: skip
    assert (ok, row[0], row[1], code) == (200, 200, 200, 0)


if __name__ == "__main__":
    main()
