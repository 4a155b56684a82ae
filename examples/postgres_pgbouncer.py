"""Connecting ``PostgresSink`` as deployments do: a libpq ``key=value`` DSN and asyncpg's
connect options, set for PgBouncer in transaction mode (``statement_cache_size=0``).

PgBouncer in transaction mode hands each transaction to whichever server connection is
free, so a statement prepared on one is unknown on the next: asyncpg must not keep named
prepared statements (``statement_cache_size=0``). The example writes through the same
options straight to PostgreSQL (point ``WB_PG_DSN`` at your PgBouncer to try it there) and
checks that the connection holds no prepared statement afterwards.

Run it with ``python examples/postgres_pgbouncer.py`` (``pip install
'writebehind[postgres]'``). It connects to ``postgresql://root@127.0.0.1:5432/test`` unless
``WB_PG_DSN`` says otherwise, creates a table of its own, and drops it at the end.
"""

from __future__ import annotations

import asyncio
import enum
import os
import uuid
from urllib.parse import urlsplit

import asyncpg

import writebehind as wb

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = f"example_pgbouncer_{uuid.uuid4().hex[:8]}"


class Status(enum.Enum):
    ONLINE = "online"
    AWAY = "away"


def key_value(url: str) -> str:
    """The same server as a libpq key=value DSN (the form psql and many configs use)."""
    u = urlsplit(url)
    parts = {"host": u.hostname, "port": u.port, "user": u.username, "dbname": u.path[1:]}
    if u.password:
        parts["password"] = "'" + u.password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    parts["application_name"] = "'writebehind example'"
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


async def main() -> None:
    print(f"table {TABLE}")  # not the DSN: it may hold a password
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(
            f"CREATE TABLE {TABLE} (id uuid PRIMARY KEY, status text, seen_at timestamptz, "
            "v int NOT NULL)"
        )
        sink = wb.PostgresSink(
            key_value(DSN),
            table=TABLE,
            key="id",
            version="v",
            pool_size=2,
            connect_kwargs={
                "statement_cache_size": 0,  # PgBouncer, transaction mode
                "command_timeout": 10,
                "server_settings": {"lock_timeout": "5s"},
            },
        )
        print(sink)  # the password, if any, shows as ***
        agents = [uuid.uuid4() for _ in range(100)]
        async with wb.AsyncBatcher(sink, key="id", version="v", linger=0.1) as batcher:
            for v in range(5):
                for agent in agents:
                    # an Enum is written as its value; an ISO-8601 string fills a timestamptz
                    await batcher.add(
                        {"id": agent, "status": Status.ONLINE, "seen_at": "2026-11-23T12:00:00Z",
                         "v": v}
                    )  # fmt: skip
            await batcher.flush()
            async with sink._pool.acquire() as c:  # a look inside, for the demo
                prepared = await c.fetchval("SELECT count(*) FROM pg_prepared_statements")
        print(batcher.stats())
        print(f"prepared statements left on the connection: {prepared}")
        rows = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE v = 4")
        assert rows == len(agents), rows
        assert prepared == 0, prepared
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
