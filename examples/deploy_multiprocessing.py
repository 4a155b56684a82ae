"""Recipe: ``multiprocessing.Pool`` with a sync ``Batcher`` in each worker process.

The pool's ``initializer`` runs once in each worker process as it starts: it opens that
worker's batcher (its own thread, its own PostgreSQL pool). Jobs hand records to the
batcher of the worker that runs them; the records reach a PostgreSQL table in batches
(appended: the table has no key).

The pool gives no hook for a worker's end, and its workers leave through ``os._exit()``,
skipping ``atexit``. The library closes the batcher there itself, with a finaliser it
registers with ``multiprocessing`` (it logs a WARNING that the batcher was not closed, and
flushes it). That finaliser runs when a worker ends *normally*: after ``pool.close()`` (no
more jobs), ``pool.join()`` waits for the workers to flush and exit. Do not leave the pool
with ``terminate()``, which is what ``with Pool() as pool:`` does on leaving the block: it
kills the workers with SIGTERM, and the records their batchers held are lost.

The same holds under every start method (``fork``, ``spawn``, ``forkserver``), and for
workers that end because of ``maxtasksperchild``.

Run as a script (``python examples/deploy_multiprocessing.py``) it creates a table, runs
200 jobs on a pool of two workers, counts the rows and drops the table. Set ``WB_PG_DSN``
for another server than ``postgresql://root@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import multiprocessing
import os

import writebehind as wb

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")

batcher: wb.Batcher | None = None  # this worker process's own


def init_worker(table: str) -> None:
    """The pool's initializer: in each worker process, as it starts."""
    global batcher
    sink = wb.PostgresSink(DSN, table=table, pool_size=1)
    batcher = wb.Batcher(sink, linger=1.0, close_timeout=5.0, name=f"pool-{os.getpid()}")
    batcher.start()


def job(n: int) -> int:
    assert batcher is not None, "init_worker did not run"
    batcher.add({"request_id": f"j{n}", "pid": os.getpid()})  # blocks only when full
    return n


def run(
    table: str, jobs: int, *, processes: int = 2, method: str | None = None, chunksize: int = 1
) -> list[int]:
    """``jobs`` jobs on a pool of ``processes`` workers (started by ``method``: the
    platform's default if None); returns once every worker has flushed its batcher and
    exited."""
    ctx = multiprocessing.get_context(method)
    pool = ctx.Pool(processes, initializer=init_worker, initargs=(table,))
    try:
        return pool.map(job, range(jobs), chunksize)
    finally:
        pool.close()  # no more jobs: each worker ends normally and flushes its batcher...
        pool.join()  # ...wait for that (never pool.terminate(): it loses what they hold)


def main() -> None:
    """Create a table, run jobs on a pool, count the rows."""
    import uuid

    import psycopg

    table = f"deploy_pool_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (request_id text NOT NULL, pid integer NOT NULL)")
    try:
        done = run(table, 200)
        with psycopg.connect(DSN, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(*), count(DISTINCT request_id), count(DISTINCT pid) FROM {table}"
            ).fetchone()
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")
    assert row is not None
    print(f"{len(done)} jobs done; {row[0]} rows, {row[1]} distinct, from {row[2]} workers")
    assert (len(done), row[0], row[1]) == (200, 200, 200)


if __name__ == "__main__":
    main()
