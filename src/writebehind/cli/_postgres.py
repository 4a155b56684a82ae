"""The demo against PostgreSQL (``--dsn``), through :class:`~writebehind.PostgresSink`.

The table (``agent_heartbeats`` unless ``--table``) is created if it is missing and kept
afterwards; ``--reset`` truncates it first. Every run uses fresh ``uuid4`` ids, so a table
reused from an earlier run is fine: the check reads back only this run's agents. Records
carry ``uuid.UUID`` ids and timezone-aware ``datetime`` stamps. The naive replay writes a
scratch copy of the table (``<table>_naive``, dropped afterwards) on one asyncpg
connection, one autocommitted upsert per heartbeat. The DSN's password is never printed.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from .. import ConfigError, PostgresSink
from .._ident import quote
from .._redact import describe, may_quote_password, redact_dsn, secrets_of
from ._args import Unavailable
from ._display import Row
from ._naive import CHECK_EVERY, COLUMNS, NaiveResult, heartbeats, upsert_sql
from ._target import Fleet, check_rows

__all__ = ["PostgresTarget"]

_REPLICAS = 4
_CONNECT_TIMEOUT = 10.0


def _same(stamp: Any) -> Any:
    return stamp


class PostgresTarget:
    """See the module docstring."""

    label = "PostgreSQL"
    max_in_flight = 2
    pool_size = 2
    naive_how = "on one asyncpg connection, into a scratch copy of the table"

    def __init__(self, dsn: str, table: str) -> None:
        self._dsn = dsn
        self._table = table
        self._naive = quote(f"{table[:57]}_naive")
        self._secrets = secrets_of(dsn)
        self.where = f"{redact_dsn(dsn)}, table {table}"
        self._conn: Any = None

    async def _connect(self) -> Any:
        try:
            import asyncpg
        except ImportError as exc:
            raise ConfigError("--dsn needs asyncpg: pip install 'writebehind[postgres]'") from exc
        try:
            return await asyncpg.connect(self._dsn, timeout=_CONNECT_TIMEOUT)
        except Exception as exc:  # the driver's message may quote the DSN
            withhold = may_quote_password(self._dsn, exc)
            message = describe(exc, self._secrets, withhold=withhold)
            raise Unavailable(
                f"cannot connect to PostgreSQL at {redact_dsn(self._dsn)}: {message}"
            ) from None

    async def prepare(self, *, reset: bool) -> None:
        self._conn = await self._connect()
        table = quote(self._table)
        await self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id uuid PRIMARY KEY, replica_id uuid, "
            "first_connected_at timestamptz, last_connected_at timestamptz, "
            "updated_at timestamptz NOT NULL)"
        )
        if reset:
            await self._conn.execute(f"TRUNCATE {table}")

    def new_fleet(self, agents: int) -> Fleet:
        replicas = [uuid.uuid4() for _ in range(_REPLICAS)]
        ids = [uuid.uuid4() for _ in range(agents)]
        return Fleet(ids, [replicas[i % _REPLICAS] for i in range(agents)], _same)

    def sink(self) -> Any:
        return PostgresSink(
            self._dsn, table=self._table, key="id", version="updated_at", pool_size=self.pool_size
        )

    async def replay_naive(
        self, fleet: Fleet, *, interval: float, total: int, budget: float
    ) -> NaiveResult:
        conn = self._conn
        await conn.execute(f"DROP TABLE IF EXISTS {self._naive}")
        await conn.execute(f"CREATE TABLE {self._naive} (LIKE {quote(self._table)} INCLUDING ALL)")
        try:
            sql = upsert_sql(self._naive, [f"${i}" for i in range(1, len(COLUMNS) + 1)])
            statement = await conn.prepare(sql)
            replayed = 0
            t0 = time.perf_counter()
            for agent, replica, first, stamp in heartbeats(
                fleet.ids, fleet.replicas, interval=interval, total=total
            ):
                await statement.fetch(agent, replica, first, stamp, stamp)  # autocommits
                replayed += 1
                if replayed % CHECK_EVERY == 0 and time.perf_counter() - t0 >= budget:
                    break
            seconds = time.perf_counter() - t0
        finally:  # an interrupted replay may leave the connection unusable: never mask that
            with contextlib.suppress(Exception):
                await conn.execute(f"DROP TABLE IF EXISTS {self._naive}")
        return NaiveResult(total=total, replayed=replayed, seconds=seconds)

    async def check(self, fleet: Fleet) -> tuple[bool, str]:
        table = quote(self._table)
        rows = await self._conn.fetch(
            f"SELECT id, updated_at FROM {table} WHERE id = ANY($1::uuid[])", fleet.ids
        )
        total = await self._conn.fetchval(f"SELECT count(*) FROM {table}")
        return check_rows(fleet.expected(), {r[0]: r[1] for r in rows}, int(total))

    def kept(self) -> Row | None:
        return ("database", f"{self.where} (kept)")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
