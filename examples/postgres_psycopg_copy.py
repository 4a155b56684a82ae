"""PostgreSQL at COPY speed: ``PostgresSink(driver="psycopg")``, or a psycopg pool of yours.

With psycopg 3 the sink writes each batch by binary COPY into a temporary table it creates
once per connection (``ON COMMIT DELETE ROWS``), then one ``INSERT ... SELECT ... ON
CONFLICT`` in key order: newest version wins, as on the default (asyncpg) path, at less
client CPU per row. Batches under 16 records are one statement instead. Give it a DSN and
``driver="psycopg"``, or your own ``psycopg_pool.AsyncConnectionPool`` (used as is, left
open).

Run it with ``python examples/postgres_psycopg_copy.py`` (``pip install
'writebehind[psycopg]' psycopg-pool``). It connects to
``postgresql://root@127.0.0.1:5432/test`` unless ``WB_PG_DSN`` says otherwise, creates a
table of its own, and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import psycopg
import psycopg_pool

import writebehind as wb

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = f"example_copy_{uuid.uuid4().hex[:8]}"
AGENTS = 2_000


async def heartbeats(sink: wb.PostgresSink, beats: int) -> wb.Stats:
    async with wb.AsyncBatcher(
        sink, key="id", version="seq", max_batch=1_000, max_in_flight=2
    ) as batcher:
        agents = [uuid.uuid4() for _ in range(AGENTS)]
        for seq in range(beats):
            for agent in agents:
                await batcher.add({"id": agent, "seq": seq, "status": f"up {seq}"})
    return batcher.stats()


async def main() -> None:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as admin:
        await admin.execute(
            f"CREATE TABLE {TABLE} (id uuid PRIMARY KEY, seq int NOT NULL, status text)"
        )
        try:
            # 1. a DSN: the sink keeps its own psycopg connections (pool_size of them)
            sink = wb.PostgresSink(DSN, table=TABLE, key="id", version="seq", driver="psycopg")
            stats = await heartbeats(sink, beats=3)
            print(f"own connections: committed={stats.committed} lost={stats.lost}")

            # 2. your pool: the sink borrows its connections and leaves it open
            async with psycopg_pool.AsyncConnectionPool(DSN, min_size=1, max_size=2) as pool:
                sink = wb.PostgresSink(pool, table=TABLE, key="id", version="seq")
                stats = await heartbeats(sink, beats=2)
                print(f"your pool ({sink.driver}): committed={stats.committed} lost={stats.lost}")

            cur = await admin.execute(f"SELECT count(*), max(seq) FROM {TABLE}")
            print(f"rows={await cur.fetchone()}")
        finally:
            await admin.execute(f"DROP TABLE IF EXISTS {TABLE}")


if __name__ == "__main__":
    asyncio.run(main())
