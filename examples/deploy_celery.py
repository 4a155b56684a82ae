"""Recipe: a Celery worker (prefork pool) with a sync ``Batcher`` in each pool process.

Serve it (``pip install 'writebehind[postgres]' 'celery[redis]'``)::

    PYTHONPATH=examples celery -A deploy_celery worker --pool prefork --concurrency 2

The pool processes are forked from the worker's main process. Each one opens its own
batcher in ``worker_process_init`` (so no batcher, thread or PostgreSQL connection crosses
the fork) and closes it in ``worker_process_shutdown``. Close it there, not at exit: a pool
process leaves through ``os._exit()`` right after that signal, skipping ``atexit`` and
``multiprocessing``'s finalisers (billiard, Celery's pool, has its own). The ``record`` task
hands one record to the batcher of the process that runs it and returns at once; the
records reach a PostgreSQL table in batches (appended: the table has no key).

On SIGTERM (warm shutdown) the worker stops taking tasks, waits for the ones running, then
stops the pool: each pool process sends ``worker_process_shutdown``, and ``close()``
flushes what its batcher holds. Keep the batcher's ``close_timeout`` short: the handlers of
``worker_process_init`` must also return within ``worker_proc_alive_timeout`` (4 s).

The broker is Redis (``WB_CELERY_BROKER``, default ``redis://127.0.0.1:6379/11``), which
also keeps the results so that a caller can wait for its tasks.

Run as a script (``python examples/deploy_celery.py``) it creates a table, starts a worker
with two pool processes, sends it 200 tasks and waits for them, stops the worker with
SIGTERM, counts the rows and drops the table. Set ``WB_PG_DSN`` for another server than
``postgresql://root@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

import writebehind as wb

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = os.environ.get("WB_TABLE", "deploy_requests")
BROKER = os.environ.get("WB_CELERY_BROKER", "redis://127.0.0.1:6379/11")
QUEUE = os.environ.get("WB_CELERY_QUEUE", "deploy_records")

app = Celery("deploy_celery", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=600,
    broker_connection_retry_on_startup=True,
)

batcher: wb.Batcher | None = None  # this pool process's own


@worker_process_init.connect
def open_batcher(**_: Any) -> None:
    """In each pool process, as it starts."""
    global batcher
    sink = wb.PostgresSink(DSN, table=TABLE, pool_size=2)
    batcher = wb.Batcher(sink, linger=1.0, close_timeout=5.0, name=f"tasks-{os.getpid()}")
    batcher.start()


@worker_process_shutdown.connect
def close_batcher(**_: Any) -> None:
    """In each pool process, as it ends (warm shutdown, --max-tasks-per-child)."""
    if batcher is not None:
        batcher.close()  # flushes: returns within close_timeout (plus a moment)


@app.task
def record(request_id: str) -> str:
    assert batcher is not None, "worker_process_init did not run: use the prefork pool"
    batcher.add({"request_id": request_id, "pid": os.getpid()})  # blocks only when full
    return request_id


def main() -> None:
    """Create a table, start a worker, send it tasks, wait for them, SIGTERM."""
    import signal
    import subprocess
    import time
    import uuid

    import psycopg
    import redis

    table = f"deploy_celery_{uuid.uuid4().hex[:8]}"
    queue = f"deploy_celery_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (request_id text NOT NULL, pid integer NOT NULL)")
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-m", "celery", "-A", "deploy_celery", "worker"]
    command += ["--pool", "prefork", "--concurrency", "2", "--loglevel", "warning"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WB_TABLE": table, "WB_CELERY_QUEUE": queue, "PYTHONPATH": path}
    worker = subprocess.Popen(
        command, env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, start_new_session=True
    )
    client = Celery(broker=BROKER, backend=BROKER)
    try:
        results = [
            client.send_task("deploy_celery.record", args=[f"t{n}"], queue=queue)
            for n in range(200)
        ]
        done = [r.get(timeout=30) for r in results]
        for r in results:
            r.forget()
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
        took = time.monotonic() - started
        with psycopg.connect(DSN, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(*), count(DISTINCT request_id), count(DISTINCT pid) FROM {table}"
            ).fetchone()
    finally:
        if worker.poll() is None:  # something went wrong: end it, workers included
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        client.close()
        with redis.Redis.from_url(BROKER) as broker:  # the queue's keys
            for key in broker.scan_iter(f"*{queue}*"):
                broker.delete(key)
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")
    assert row is not None
    print(f"{len(done)} of 200 tasks done; {row[0]} rows, {row[1]} distinct, from {row[2]} "
          f"pool processes; the worker exited {code} {took:.1f} s after SIGTERM")  # fmt: skip
    assert (len(done), row[0], row[1], code) == (200, 200, 200, 0)


if __name__ == "__main__":
    main()
