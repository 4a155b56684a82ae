"""Did the row change? ``report_stale=True`` tells ``COMMITTED`` from ``STALE``.

Job state arrives out of order: a worker's late "running" update (seq 2) reaches the table
after "done" (seq 3). The version-conditional upsert keeps "done", as it always does; with
``report_stale=True`` the late record's receipt says so (``Outcome.STALE``, counted in
``committed`` and in ``stats().stale``) instead of ``COMMITTED``. An update with the same
seq overwrites (a replay writes identical data): ``COMMITTED``.

Shown with ``SQLiteSink`` (the sync ``Batcher``, a file in a temporary directory) and with
``PostgresSink`` (``AsyncBatcher``; ``postgresql://root@127.0.0.1:5432/test`` unless the
environment variable ``WB_PG_DSN`` says otherwise; a table of its own, dropped at the end).
Run it with ``python examples/stale_rows.py``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import uuid

import asyncpg

import writebehind as wb

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
UPDATES = [  # (job, state, seq), in the order they arrive
    ("job-1", "done", 3),
    ("job-2", "queued", 1),
]
LATE = [
    ("job-1", "running", 2),  # older than the row's seq 3: changes nothing
    ("job-2", "queued", 1),  # the same seq again: overwrites, as a replay does
    ("job-3", "queued", 1),  # a new row
]


def sqlite_jobs(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT, seq INTEGER)")
    sink = wb.SQLiteSink(path, table="jobs", key="id", version="seq", report_stale=True)
    with wb.Batcher(sink, key="id", version="seq") as batcher:
        for job, state, seq in UPDATES:
            batcher.add({"id": job, "state": state, "seq": seq})
        batcher.flush()
        receipts = [batcher.add({"id": j, "state": s, "seq": q}) for j, s, q in LATE]
        batcher.flush()
        for (job, state, seq), receipt in zip(LATE, receipts, strict=True):
            print(f"sqlite: {job} {state} (seq {seq}): {receipt.result(timeout=10).name}")
    print(f"sqlite: committed={batcher.stats().committed} stale={batcher.stats().stale}")
    with sqlite3.connect(path) as conn:
        print("sqlite rows:", conn.execute("SELECT * FROM jobs ORDER BY id").fetchall())


async def postgres_jobs() -> None:
    table = f"example_jobs_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(DSN)
    await conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, state text, seq int)")
    try:
        sink = wb.PostgresSink(DSN, table=table, key="id", version="seq", report_stale=True)
        async with wb.AsyncBatcher(sink, key="id", version="seq") as batcher:
            for job, state, seq in UPDATES:
                await batcher.add({"id": job, "state": state, "seq": seq})
            await batcher.flush()
            receipts = [await batcher.add({"id": j, "state": s, "seq": q}) for j, s, q in LATE]
            await batcher.flush()
            for (job, state, seq), receipt in zip(LATE, receipts, strict=True):
                print(f"postgres: {job} {state} (seq {seq}): {(await receipt).name}")
        print(batcher.stats())
        rows = await conn.fetch(f"SELECT id, state, seq FROM {table} ORDER BY id")
        print("postgres rows:", [tuple(r) for r in rows])
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_jobs(os.path.join(tmp, "jobs.db"))
    asyncio.run(postgres_jobs())


if __name__ == "__main__":
    main()
