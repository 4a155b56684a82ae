"""Heartbeats into PostgreSQL with ``AsyncBatcher`` and ``PostgresSink``.

Two hundred agents send twenty heartbeats each; heartbeats of one agent coalesce in the
buffer (the newest ``updated_at`` wins), and each batch is one ``INSERT ... SELECT FROM
unnest(...) ON CONFLICT (id) DO UPDATE ... WHERE excluded.updated_at >= t.updated_at``.

Run it with ``python examples/postgres_heartbeats.py`` (``pip install
'writebehind[postgres]'``). It connects to ``postgresql://root@127.0.0.1:5432/test`` unless
the environment variable ``WB_PG_DSN`` says otherwise, creates a table of its own, and drops
it at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid

import asyncpg

import writebehind as wb

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = f"example_heartbeats_{uuid.uuid4().hex[:8]}"


async def send_heartbeats(agents: list[uuid.UUID], rounds: int) -> None:
    sink = wb.PostgresSink(DSN, table=TABLE, key="id", version="updated_at", pool_size=2)
    batcher = wb.AsyncBatcher(
        sink, key="id", version="updated_at", linger=0.25, max_in_flight=2, name="example"
    )
    async with batcher:
        for _ in range(rounds):
            now = dt.datetime.now(dt.UTC)
            for agent in agents:
                await batcher.add({"id": agent, "updated_at": now, "status": "online"})
            await asyncio.sleep(0.05)  # 20 heartbeats a second: faster than the linger
    print(batcher.stats())  # after close: everything committed or coalesced
    print(f"statements: {sink.statements}")


async def main() -> None:
    print(f"table {TABLE}")  # not the DSN: it may hold a password
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(
            f"CREATE TABLE {TABLE} (id uuid PRIMARY KEY, status text, "
            "updated_at timestamptz NOT NULL)"
        )
        agents = [uuid.uuid4() for _ in range(200)]
        await send_heartbeats(agents, rounds=20)
        rows, newest = await conn.fetchrow(f"SELECT count(*), max(updated_at) FROM {TABLE}")
        print(f"rows: {rows}, newest updated_at: {newest.isoformat()}")
        assert rows == len(agents)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
