"""``PostgresDeadLetter``: dead letters in a PostgreSQL table, through asyncpg.

The table is created if missing on first use. Records are ``jsonb`` holding the same tagged
JSON as the SQLite store (``jsonb`` does not keep the order of object keys; the records'
values round-trip exactly). Errors are mapped through :mod:`writebehind.sinks._pg`, so a
DSN password never shows in them, nor in the ``repr``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .._errors import ConfigError
from .._ident import quote, validate
from .._redact import may_quote_password, redact_dsn, secrets_of
from ..sinks._pg import map_error
from ..sinks._pg_connect import asyncpg_dsn
from ..sinks.postgres import PostgresSink
from ._store import DeadLetterStore, rowcount

__all__ = ["PostgresDeadLetter"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL,
    batcher text NOT NULL,
    sink text NOT NULL,
    error text NOT NULL,
    message text NOT NULL,
    attempts integer NOT NULL,
    record jsonb NOT NULL,
    encoding text NOT NULL,
    record_type text NOT NULL
)"""


class PostgresDeadLetter(DeadLetterStore):
    """Keep dead letters in a PostgreSQL table (``pip install 'writebehind[postgres]'``).

    Args:
        dsn_or_pool_or_sink: a ``postgresql://`` DSN (the store opens a small pool of its
            own on first use and closes it in :meth:`close`), an ``asyncpg.Pool`` of yours
            (used as is, never closed), or a :class:`~writebehind.PostgresSink` (the same
            server: its DSN with a pool of the store's own, or the pool it was given).
        table, schema: where the entries go (default ``public.writebehind_dead_letters``);
            plain identifiers only. The table is created if missing.
        pool_size: connections in the store's own pool (1 or 2).

    Columns as :class:`~writebehind.dlq.SQLiteDeadLetter`, except ``at`` is a
    ``timestamptz`` and ``record`` a ``jsonb``.
    """

    _record_select = "record::text"
    _json_cast = "::jsonb"

    def __init__(
        self,
        dsn_or_pool_or_sink: Any,
        *,
        table: str = "writebehind_dead_letters",
        schema: str = "public",
        pool_size: int = 1,
    ) -> None:
        self.table = validate(table, "table")
        self.schema = validate(schema, "schema")
        if pool_size not in (1, 2):
            raise ConfigError(f"pool_size: must be 1 or 2, got {pool_size!r}")
        self.pool_size = pool_size
        source = dsn_or_pool_or_sink
        if isinstance(source, PostgresSink):
            # the sink's DSN (a pool of our own on the same server) or the pool it was given
            source = source.source
            if source is None:
                raise ConfigError("dsn_or_pool_or_sink: the PostgresSink has no DSN or pool")
        if isinstance(source, str):
            asyncpg_dsn(source)  # a key=value DSN it cannot honour: ConfigError now
            self._dsn: str | None = source
            self._secrets: tuple[str, ...] = secrets_of(source)
            self._where = redact_dsn(source)
            self._pool: Any = None
        elif callable(getattr(source, "acquire", None)):
            self._dsn, self._secrets, self._where, self._pool = None, (), "<pool>", source
        else:
            raise ConfigError(
                "dsn_or_pool_or_sink: give a postgresql:// DSN, an asyncpg.Pool or a "
                f"PostgresSink, not {type(source).__name__}"
            )
        self._own_pool = self._dsn is not None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._ready = False
        self._table = f"{quote(self.schema)}.{quote(self.table)}"

    def __repr__(self) -> str:
        return f"PostgresDeadLetter({self._where!r}, table={self.schema}.{self.table})"

    # -- the backend -----------------------------------------------------------------------
    def _param(self, n: int) -> str:
        return f"${n}"

    def _at_param(self, at: float) -> Any:
        return dt.datetime.fromtimestamp(at, dt.UTC)

    def _at_value(self, raw: Any) -> float:
        return float(raw.timestamp())

    async def _insert(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        async def run(conn: Any) -> None:
            async with conn.transaction():
                await conn.executemany(sql, rows)

        await self._with_conn(run)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        async def run(conn: Any) -> list[Sequence[Any]]:
            return list(await conn.fetch(sql, *params))

        return await self._with_conn(run)

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        async def run(conn: Any) -> int:
            return rowcount(await conn.execute(sql, *params))

        return await self._with_conn(run)

    # -- connections -----------------------------------------------------------------------
    async def _with_conn(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                if not self._ready:
                    await self._create_table(conn)
                try:
                    return await fn(conn)
                except Exception as exc:
                    if getattr(exc, "sqlstate", None) != "42P01":
                        raise
                    # the table was dropped since it was made: make it again, once
                    await self._create_table(conn)
                    return await fn(conn)
        except ConfigError:
            raise
        except Exception as exc:
            # a parse error of the DSN (raised at the first connection) may quote a piece
            withhold = not self._ready and may_quote_password(self._dsn, exc)
            error = map_error(exc, self._secrets, withhold=withhold)
            error.args = (f"dead-letter store {self._where}: {error.args[0]}",)
            if any(s in str(exc) for s in self._secrets):
                raise error from None  # the driver's error quoted the DSN
            raise error from exc

    async def _get_pool(self) -> Any:
        if not self._own_pool:
            return self._pool
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._pool_loop is not loop:
            self._pool.terminate()  # made on another (perhaps finished) event loop
            self._pool = None
        if self._pool is None:
            try:
                import asyncpg
            except ImportError as exc:
                raise ConfigError(
                    "PostgresDeadLetter needs asyncpg: pip install 'writebehind[postgres]'"
                ) from exc
            url, options = asyncpg_dsn(self._dsn or "")  # libpq key=value DSNs too
            pool = await asyncpg.create_pool(url, min_size=0, max_size=self.pool_size, **options)
            if self._pool is None:
                self._pool, self._pool_loop = pool, loop
            else:  # two first uses raced (batches dead-lettered at once): keep one pool
                await pool.close()
        return self._pool

    async def _create_table(self, conn: Any) -> None:
        # an advisory lock per table: two processes starting at once do not race on
        # CREATE TABLE IF NOT EXISTS (which can fail with a unique violation)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._table)
            await conn.execute(_SCHEMA.format(table=self._table))
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(self.table[:55] + '_at_idx')} "
                f"ON {self._table} (at)"
            )
        self._ready = True

    async def close(self) -> None:
        """Close the store's own pool (a pool you passed in is left open)."""
        if not self._own_pool:
            return
        pool, self._pool = self._pool, None
        if pool is not None:
            if self._pool_loop is asyncio.get_running_loop():
                await pool.close()
            else:
                pool.terminate()
