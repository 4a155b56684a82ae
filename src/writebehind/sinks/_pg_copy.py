"""``PostgresSink``'s psycopg path: binary COPY into a per-connection temporary table, then
one ordered merge.

Per batch, on one connection, in one transaction::

    COPY "wb_copy_agents_1a2b3c4d" ("id", "status", "updated_at") FROM STDIN (FORMAT BINARY)
    INSERT INTO "public"."agents" AS t ("id", "status", "updated_at")
    SELECT DISTINCT ON ("id") "id", "status", "updated_at" FROM "wb_copy_agents_1a2b3c4d"
    ORDER BY "id", "updated_at" DESC NULLS LAST, wb_n DESC
    ON CONFLICT ("id") DO UPDATE SET ... WHERE t."updated_at" IS NULL OR excluded... >= t...

The staging table is created once per connection (``CREATE TEMP TABLE ... ON COMMIT DELETE
ROWS AS SELECT <the table's columns> ... WITH NO DATA``, plus an identity column ``wb_n``
that numbers the rows in the order they were sent), so a write is BEGIN, COPY, merge, COMMIT
and nothing else. Rows go in key order (no deadlock between overlapping writers); a key that
appears twice in one write keeps its newest row (greatest version, then the later one),
decided by the server, not by Python. Batches below ``copy_min`` records are one statement
instead (``unnest`` of arrays, the same merge): four round trips cost more than COPY saves
there (docs/postgres.md has the measurement).

Connections come from a ``psycopg_pool.AsyncConnectionPool`` of the user's, or from
:class:`Connections`, the sink's own small set (connecting on demand, so a server that is
down fails the write at once instead of waiting in a pool's queue). A cancelled write has its
connection closed and its backend ended from another connection, as on the asyncpg path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

from .._errors import ConfigError
from .._ident import quote
from ._pg import TYPES_SQL
from ._pg_stale import copy_report, psycopg_merge
from ._upsert import on_conflict

__all__ = ["Connections", "CopyPath", "PsycopgDriver", "is_psycopg_pool"]

log = logging.getLogger("writebehind")

COPY_MIN = 16
"""Below this many records a write is one ``unnest`` statement, not COPY + merge."""
_REAP_TIMEOUT = 1.0
_CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout for the sink's own connections
UNIQUE_SQL = """
SELECT array_agg(a.attname::text ORDER BY a.attname)
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indpred IS NULL
GROUP BY i.indexrelid
"""
_TEXT_OID = 25
Stale = dict[tuple[str, ...], list[int]]
"""Per record-shape group, the ordinals of the rows a merge did not write."""


def is_psycopg_pool(obj: Any) -> bool:
    """Whether ``obj`` is a ``psycopg_pool`` pool (async), without importing psycopg_pool."""
    return any(c.__module__.startswith("psycopg_pool") for c in type(obj).__mro__) and hasattr(
        obj, "connection"
    )


def import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            "PostgresSink(driver='psycopg') needs psycopg 3: pip install 'writebehind[psycopg]'"
        ) from exc
    return psycopg


class Connections:
    """The sink's own psycopg connections (autocommit), at most ``size`` at once: one is
    made when a write finds none idle, and a connection that saw an error is closed, not
    kept."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self.idle: list[Any] = []
        self.slots = asyncio.Semaphore(size)
        self.closed = False

    async def open_one(self) -> Any:
        psycopg = import_psycopg()
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
        )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with self.slots:
            conn = self.idle.pop() if self.idle else await self.open_one()
            try:
                yield conn
            except BaseException:
                if not conn.closed and conn.info.transaction_status != 0:  # not IDLE
                    conn.pgconn.finish()
                raise
            finally:
                if self.closed or conn.closed:
                    if not conn.closed:
                        await conn.close()
                else:
                    self.idle.append(conn)

    async def close(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()

    def terminate(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.pgconn.finish()

    def forget(self) -> list[Any]:
        """After fork: the parent's connections, to be kept (never finalised) by the caller."""
        idle, self.idle = self.idle, []
        return idle


class CopyPath:
    """Writes one batch's rows, grouped by record shape, on a psycopg connection."""

    def __init__(
        self, *, schema: str, table: str, key: tuple[str, ...], version: str | None,
        method: str, copy_min: int = COPY_MIN, report: bool = False,
        increment: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.target = f"{quote(schema)}.{quote(table)}"
        digest = hashlib.sha1(f"{schema}.{table}".encode()).hexdigest()[:8]
        self.stage_name = f"wb_copy_{table[:40]}_{digest}"
        self.stage = quote(self.stage_name)
        self.key, self.version, self.method = key, version, method
        self.increment = increment  # columns that add (_increment)
        self.report = report  # report_stale: merges answer with the rows they skipped
        self.copy_min = 1 if method == "copy" else copy_min
        self.columns: dict[str, str] = {}
        self.oids: dict[str, int] = {}  # column -> the oid its values are dumped as; 0: none
        self._sql: dict[tuple[str, ...], str] = {}
        self._ready: weakref.WeakSet[Any] = weakref.WeakSet()  # connections with the stage
        self.json: set[str] = set()
        self.arrays: set[str] = set()  # array columns: unnest would flatten them, so COPY
        self.statements = 0

    # -- catalog ---------------------------------------------------------------------------
    async def read_catalog(self, conn: Any) -> tuple[list[tuple[Any, ...]], list[set[str]]]:
        """The table's columns (name, type, category, base type) and its unique column sets."""
        psycopg = import_psycopg()
        async with conn.cursor() as cur:
            await cur.execute(TYPES_SQL, (self.target,))
            info = await cur.fetchall()
            await cur.execute(UNIQUE_SQL, (self.target,))
            uniques = [set(r[0]) for r in await cur.fetchall()]
        if not conn.autocommit:
            await conn.rollback()  # a pool of the user's: leave no transaction open
        known = psycopg.adapters.types
        self.arrays = {r[0] for r in info if r[2] == "A"}
        enums = {r[4] for r in info if r[5] == "e"}
        for name, pg_type, _, _, oid, typtype, base, _elem in info:
            self.columns[name] = pg_type
            if typtype == "d" and base:  # a domain: its base type's binary format
                oid = base
            if typtype == "e" or oid in enums:
                oid = _TEXT_OID  # an enum's binary format is its label's text
            self.oids[name] = oid if known.get(oid) is not None else 0
            if pg_type in ("json", "jsonb"):
                self.json.add(name)
        return [r[:4] for r in info], uniques

    def copyable(self, names: tuple[str, ...]) -> bool:
        return all(self.oids.get(n) for n in names)

    # -- writing ---------------------------------------------------------------------------
    async def write(self, conn: Any, groups: dict[tuple[str, ...], list[Any]]) -> Stale:
        """Every group of rows in one transaction (or one statement, in autocommit); with
        ``report``, the ordinals of each group's rows that the merge did not write."""
        items = list(groups.items())
        copies = [self._use_copy(names, rows) for names, rows in items]
        stale: Stale = {}
        if len(items) == 1 and not copies[0] and conn.autocommit:
            stale[items[0][0]] = await self._statement(conn, *items[0])  # atomic on its own
            return stale
        await self._transaction(conn, items, copies, stale)
        return stale

    async def _transaction(
        self, conn: Any, items: list[tuple[tuple[str, ...], list[Any]]], copies: list[bool],
        stale: Stale,
    ) -> None:  # fmt: skip
        if self.key and any(copies) and conn not in self._ready:
            # outside the write's transaction: a rollback of the write keeps the table
            async with conn.transaction():
                await self._create_stage(conn)
            self._ready.add(conn)
        staged = False
        async with conn.transaction():
            for (names, rows), copy in zip(items, copies, strict=True):
                if not copy:
                    stale[names] = await self._statement(conn, names, rows)
                    continue
                if staged:
                    await conn.execute(f"TRUNCATE {self.stage}")  # the last shape's rows
                stale[names] = await self._copy(conn, names, rows)
                staged = bool(self.key)

    def _use_copy(self, names: tuple[str, ...], rows: list[Any]) -> bool:
        if not self.arrays.isdisjoint(names):
            return True
        return self.method != "unnest" and len(rows) >= self.copy_min and self.copyable(names)

    async def _copy(self, conn: Any, names: tuple[str, ...], rows: list[Any]) -> list[int]:
        cols = ", ".join(quote(n) for n in names)
        into = self.stage if self.key else self.target
        async with conn.cursor() as cur:
            if not self.json.isdisjoint(names):
                from psycopg.types.json import set_json_dumps

                set_json_dumps(_as_is, cur)  # the sink made JSON text already
            async with cur.copy(f"COPY {into} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([self.oids[n] for n in names])
                await _send(copy, rows)
            found = await psycopg_merge(self, cur, names, None, len(rows)) if self.key else []
        self.statements += 1
        return found

    async def _create_stage(self, conn: Any) -> None:
        cols = ", ".join(quote(c) for c in self.columns)
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {self.target} WITH NO DATA"
        )
        await conn.execute(
            f"ALTER TABLE {self.stage} ADD COLUMN IF NOT EXISTS wb_n bigint "
            "GENERATED ALWAYS AS IDENTITY"
        )

    def forget(self, conn: Any) -> None:
        """``conn`` may have lost its staging table (an error, a reset): make it again."""
        self._ready.discard(conn)

    async def _statement(self, conn: Any, names: tuple[str, ...], rows: list[Any]) -> list[int]:
        found: list[int] = []
        async with conn.cursor() as cur:
            arrays = [list(c) for c in zip(*rows, strict=True)]
            if self.key:
                found = await psycopg_merge(self, cur, names, arrays, len(rows))
            else:
                await cur.execute(self._append(names), arrays)
        self.statements += 1
        return found

    def _append(self, names: tuple[str, ...]) -> str:
        cols = ", ".join(quote(n) for n in names)
        arrays = ", ".join(f"%s::{self.columns[n]}[]" for n in names)
        return f"INSERT INTO {self.target} ({cols}) SELECT * FROM unnest({arrays})"

    def _merge(self, names: tuple[str, ...], arrays: list[Any] | None, report: bool) -> str:
        """The merge from the staging table (``arrays`` None) or from ``unnest`` arrays."""
        cache = (*names, "" if arrays is None else "unnest", "report" if report else "")
        sql = self._sql.get(cache)
        if sql is not None:
            return sql
        cols = ", ".join(quote(n) for n in names)
        keys = ", ".join(quote(k) for k in self.key)
        if arrays is None:
            source = self.stage
        else:
            typed = ", ".join(f"%s::{self.columns[n]}[]" for n in names)
            source = f"unnest({typed}) WITH ORDINALITY AS u ({cols}, wb_n)"
        if report and self.version is not None:
            sql = copy_report(
                self.target, names, self.key, self.version, source,
                on_conflict(names, self.key, self.version, "t", self.increment),
            )  # fmt: skip
            self._sql[cache] = sql
            return sql
        order = keys
        if self.version is not None and self.version in names:
            order += f", {quote(self.version)} DESC NULLS LAST"
        # newest row per key (a tie: the later one), rows in key order: no deadlocks
        select = f"SELECT DISTINCT ON ({keys}) {cols} FROM {source} ORDER BY {order}, wb_n DESC"
        sql = f"INSERT INTO {self.target} AS t ({cols}) {select}"
        sql += on_conflict(names, self.key, self.version, "t", self.increment)
        self._sql[cache] = sql
        return sql


async def _send(copy: Any, rows: list[Any]) -> None:
    """``rows`` into the COPY: formatted in one synchronous loop, awaiting only when
    psycopg's buffer is full (``AsyncCopy.write_row`` is a coroutine call per row)."""
    formatter = getattr(copy, "formatter", None)
    if formatter is None:  # not psycopg 3.1-3.3's layout: the public way
        for row in rows:
            await copy.write_row(row)
        return
    write_row = formatter.write_row
    for row in rows:
        if data := write_row(row):
            await copy.write(data)


def _as_is(text: Any) -> Any:
    return text


async def terminate_backend(source: Any, pid: int, markers: tuple[str, str]) -> None:
    """End backend ``pid`` if it is ours: this role's, its statement naming one of
    ``markers`` (the sink's table, its staging table), so a pid a pooler made up ends no
    stranger."""
    sql = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s "
        "AND usename = current_user AND (position(%s in query) > 0 OR position(%s in query) > 0)"
    )
    try:
        async with asyncio.timeout(_REAP_TIMEOUT):
            if isinstance(source, Connections):
                conn = await source.open_one()
                try:
                    await conn.execute(sql, (pid, *markers))
                finally:
                    await conn.close()
            else:
                async with source.connection(timeout=_REAP_TIMEOUT) as conn:
                    await conn.execute(sql, (pid, *markers))
    except Exception as exc:  # the server is gone too, or the pool closed: nothing to end
        log.debug("PostgresSink: could not end backend %d: %s", pid, type(exc).__name__)


class PsycopgDriver:
    """Where the psycopg path gets its connections (the user's pool, or :class:`Connections`
    of the sink's own) and what it does when a write fails or is cancelled."""

    def __init__(self, path: CopyPath, *, dsn: str | None, pool: Any, pool_size: int) -> None:
        self.path = path
        self.dsn, self.user_pool, self.pool_size = dsn, pool, pool_size
        self.own: Connections | None = None
        self.reapers: set[asyncio.Task[None]] = set()

    @property
    def source(self) -> Any:
        return self.user_pool if self.user_pool is not None else self.own

    async def start(self) -> tuple[list[tuple[Any, ...]], list[set[str]]]:
        import_psycopg()
        if self.user_pool is None:
            assert self.dsn is not None
            self.own = Connections(self.dsn, self.pool_size)
        async with self._connection() as conn:
            return await self.path.read_catalog(conn)

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.user_pool is not None:
            return self.user_pool.connection()  # type: ignore[no-any-return]
        assert self.own is not None
        return self.own.connection()

    async def write(self, groups: dict[tuple[str, ...], list[Any]]) -> tuple[int, Stale]:
        """Statements run, and (with ``report``) each group's rows the merge skipped."""
        before = self.path.statements
        async with self._connection() as conn:
            pid = conn.info.backend_pid
            try:
                stale = await self.path.write(conn, groups)
            except BaseException as exc:
                self.path.forget(conn)
                if isinstance(exc, asyncio.CancelledError):
                    self._abandon(conn, pid)
                elif not conn.closed and conn.info.transaction_status != 0:  # not IDLE
                    conn.pgconn.finish()  # never hand a half-broken connection back
                raise
        return self.path.statements - before, stale

    def _abandon(self, conn: Any, pid: int) -> None:
        """A cancelled write (``write_timeout``, the close deadline): close its connection
        now and end its backend from another one, in the background, so that a statement
        stuck on a lock neither lingers nor commits late."""
        if not conn.closed:
            conn.pgconn.finish()
        source = self.source
        if source is None or not pid:
            return
        task = asyncio.get_running_loop().create_task(
            terminate_backend(source, pid, (self.path.target, self.path.stage))
        )
        self.reapers.add(task)
        task.add_done_callback(self.reapers.discard)

    async def close(self, timeout: float) -> None:
        reapers = set(self.reapers)
        try:
            if reapers:
                await asyncio.wait(reapers, timeout=_REAP_TIMEOUT)
            if self.own is not None:
                try:
                    async with asyncio.timeout(timeout):
                        await self.own.close()
                except TimeoutError:
                    self.own.terminate()
        except BaseException:
            if self.own is not None:
                self.own.terminate()
            raise
        finally:
            for task in reapers:
                task.cancel()

    def after_fork(self) -> list[Any]:
        """The parent's connections, which the child must neither use nor finalise."""
        self.reapers = set()
        own, self.own = self.own, None
        return own.forget() if own is not None else []
