"""A pool of your own with the sync ``Batcher``: give ``PostgresSink`` a pool *factory*.

The sync ``Batcher`` runs its event loop in a thread of its own, and an asyncpg pool works
only on the loop that made it. So instead of a pool, give the sink a function that makes
one: the sink calls it on the batcher's loop at start (sync or async, awaited if need be)
and closes the pool at close. A pool made elsewhere is refused at start with a
``ConfigError`` that says so.

Run it with ``python examples/postgres_own_pool.py`` (``pip install
'writebehind[postgres]'``). It connects to ``postgresql://root@127.0.0.1:5432/test`` unless
``WB_PG_DSN`` says otherwise, creates a table of its own, and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from typing import Any

import asyncpg

import writebehind as wb

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = f"example_own_pool_{uuid.uuid4().hex[:8]}"


def make_pool() -> asyncpg.Pool:
    """Your pool, as you configure it; called on the batcher's loop."""
    return asyncpg.create_pool(DSN, min_size=0, max_size=2, command_timeout=10)


def sql(query: str) -> Any:
    """One statement on a connection of its own (outside the batcher), for the setup."""

    async def run() -> Any:
        conn = await asyncpg.connect(DSN)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def main() -> None:
    print(f"table {TABLE}")
    sql(f"CREATE TABLE {TABLE} (job_id int PRIMARY KEY, progress int NOT NULL)")
    try:
        sink = wb.PostgresSink(make_pool, table=TABLE, key="job_id", version="progress")
        with wb.Batcher(sink, key="job_id", version="progress", linger=0.05) as batcher:

            def worker(first: int) -> None:  # plain threads, as a web app's would be
                for step in range(0, 101, 10):
                    for job in range(first, first + 25):
                        batcher.add({"job_id": job, "progress": step})

            threads = [threading.Thread(target=worker, args=(n * 25,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            batcher.flush()
        print(batcher.stats())
        done = sql(f"SELECT count(*) FROM {TABLE} WHERE progress = 100")
        assert done == 100, done
    finally:
        sql(f"DROP TABLE IF EXISTS {TABLE}")


if __name__ == "__main__":
    main()
