"""``PostgresSink``: one version-conditional upsert per batch, over arrays, with asyncpg.

Each batch is written in one transaction by one statement whose cost does not grow with the
number of statements::

    INSERT INTO "public"."agents" AS t ("id", "status", "updated_at")
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[])
    ON CONFLICT ("id") DO UPDATE SET "status" = excluded."status", ...
    WHERE t."updated_at" IS NULL OR excluded."updated_at" >= t."updated_at"

Tables with array-typed columns (which ``unnest`` would flatten) go through COPY into a
temporary staging table and one ``INSERT ... SELECT ... ON CONFLICT`` instead
(``method="copy"``, also available by choice). Without a key, records are appended by COPY.
asyncpg was chosen by measurement (docs/postgres.md): its ``unnest`` upsert beat psycopg 3's
best method (executemany in pipeline mode) by 1.3-1.6x on this machine. The driver is
imported when the sink starts.

A write that is cancelled (``write_timeout``, or the batcher's close deadline) has its
connection terminated and its server backend ended (``pg_terminate_backend``), so a statement
stuck on a lock neither lingers on the server nor commits late (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import ConfigError, PermanentSinkError
from .._ident import quote, validate
from .._redact import may_quote_password
from ._from_model import RecordNames, sink_from_model
from ._increment import check_pg_types, increment_columns
from ._pg import (
    COLUMNS_SQL,
    UNIQUE_SQL,
    is_client_error,
    map_error,
)
from ._pg_connect import (
    OTHER_LOOP,
    REAP_TIMEOUT,
    _no_reset,
    _terminate_backend,
    on_this_loop,
    pool_from_factory,
    source_of,
)
from ._pg_copy import CopyPath
from ._pg_psycopg import PsycopgDriver, is_psycopg_pool
from ._pg_rows import PgRows
from ._protocol import WriteResult
from ._stale import stale_result
from ._values import JsonDumps, describe_key, iso_parser, json_encoder

__all__ = ["PostgresSink"]

log = logging.getLogger("writebehind")

_METHODS = ("auto", "unnest", "copy")
_DRIVERS = ("auto", "asyncpg", "psycopg")
_CLOSE_TIMEOUT = 2.0  # seconds the pool gets to close gracefully before it is terminated


_FORKED_AWAY: list[Any] = []  # the parent's pools in a forked child: never finalised


class PostgresSink(PgRows, RecordNames):
    """Write batches to a PostgreSQL table (``pip install 'writebehind[postgres]'``).

    Args:
        dsn_or_pool: a DSN, as a ``postgresql://`` URL or in libpq's ``key=value`` form
            (``"host=db user=app dbname=prod"``; the sink opens and closes its own pool); an
            ``asyncpg.Pool`` of yours (used as is, never closed by the sink; it must have
            been made on the batcher's event loop, else ``ConfigError`` at start); or a pool
            *factory*: a function, sync or async, that the sink calls on the batcher's loop
            at each start and whose pool it closes at close (``lambda:
            asyncpg.create_pool(dsn, ...)``: the way to bring a pool of yours to the sync
            ``Batcher``, whose loop runs in a thread of its own).
        table, schema: the table (default schema ``public``); plain identifiers only.
        key: the column (or tuple) of a PRIMARY KEY or UNIQUE index; records upsert on it.
            Without a key, records are appended by COPY.
        version: the column that orders records with one key; an update only lands when its
            version is greater than or equal to the row's.
        method: ``"unnest"``, ``"copy"`` (staging table) or ``"auto"`` (unnest unless the
            table has array columns).
        pool_size: connections in the sink's own pool; give it at least the batcher's
            ``max_in_flight`` so overlapping batches write on separate connections.
        json_dumps: the function that turns values for ``json``/``jsonb`` columns into JSON
            text, e.g. ``orjson.dumps`` (``str`` or UTF-8 ``bytes``); the default is
            ``json.dumps`` writing nested dataclasses, pydantic models and msgspec Structs as
            plain JSON objects (Enums as their values, datetimes as ISO 8601). A ``str`` is
            taken as JSON text already and sent as is.
        connect_kwargs: asyncpg's connect options for the sink's own pool, passed through
            (``ssl``, ``server_settings``, ``command_timeout``, ``statement_cache_size=0``
            behind PgBouncer in transaction mode, ...), and the pool's ``max_queries``,
            ``max_inactive_connection_lifetime``, ``setup``, ``init``. An unknown option, or
            one the sink sets itself (``min_size``, ``max_size``, ``reset``), is a
            ``ConfigError`` naming it. Only with a DSN: configure a pool of yours yourself.
        driver: ``"asyncpg"`` (``unnest`` upserts), ``"psycopg"`` (binary COPY into a
            per-connection temporary table and one merge: ``_pg_copy``; needs
            ``writebehind[psycopg]``), or ``"auto"``: psycopg for a ``psycopg_pool`` pool (or
            a factory returning one), asyncpg otherwise.
        report_stale: find which records the version condition skipped (the table held
            their key at a newer version) and report them, so they resolve
            ``Outcome.STALE`` (``_pg_stale``: the upsert answers with them, in the same
            statement). Off by default: it costs throughput (docs/benchmarks.md).
        increment: numeric columns the upsert adds to instead of overwriting (``SET views =
            t.views + excluded.views``), for ``merge=wb.merge.sum_fields(...)`` deltas; the
            increments apply whatever the versions (``_increment``; docs/postgres.md).
    """

    def __init__(
        self,
        dsn_or_pool: Any,
        *,
        table: str,
        key: str | tuple[str, ...] | None = None,
        version: str | None = None,
        schema: str = "public",
        method: str = "auto",
        pool_size: int = 4,
        json_dumps: JsonDumps | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        driver: str = "auto",
        report_stale: bool = False,
        increment: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        self.table = validate(table, "table")
        self.schema = validate(schema, "schema")
        keys = (key,) if isinstance(key, str) else tuple(key or ())
        self.key = tuple(validate(k, "key") for k in keys)
        self.version = None if version is None else validate(version, "version")
        if self.version is not None and not self.key:
            raise ConfigError("version: needs key (the version orders rows with one key)")
        if method not in _METHODS:
            raise ConfigError(f"method: must be one of {', '.join(_METHODS)}, got {method!r}")
        if not (isinstance(pool_size, int) and pool_size >= 1):
            raise ConfigError(f"pool_size: must be an integer >= 1, got {pool_size!r}")
        if driver not in _DRIVERS:
            raise ConfigError(f"driver: must be one of {', '.join(_DRIVERS)}, got {driver!r}")
        psycopg_pool = is_psycopg_pool(dsn_or_pool)
        if driver == "asyncpg" and psycopg_pool:
            raise ConfigError("driver: 'asyncpg' cannot use a psycopg_pool pool")
        if driver == "psycopg" and connect_kwargs:
            raise ConfigError(
                "connect_kwargs: are asyncpg's options; with driver='psycopg' put libpq's "
                "options in the DSN, or pass a psycopg_pool.AsyncConnectionPool of yours"
            )
        self.increment = increment_columns(increment, self.key, self.version, report_stale)
        self.method = method
        self.reports_stale = bool(report_stale)
        """Whether writes report the records their version condition skipped."""
        self.driver = "psycopg" if psycopg_pool else driver
        self._encode = json_encoder(json_dumps)
        self._by_column: dict[str, Callable[[Any], Any]] = {}
        self.pool_size = pool_size
        source = source_of(dsn_or_pool, driver, connect_kwargs)
        self._dsn, self._pool, self._factory = source.dsn, source.pool, source.factory
        self._secrets, self._where = source.secrets, source.where
        self._url, self._connect = source.url, source.connect
        self._own_pool = self._dsn is not None or self._factory is not None
        self.columns: dict[str, str] = {}
        self._arrays: set[str] = set()
        self._json: set[str] = set()
        self._sql: dict[tuple[str, ...], str] = {}
        self._target = f"{quote(self.schema)}.{quote(self.table)}"
        self.statements = 0
        """Statements that wrote records (one per batch, or per record shape in a batch)."""
        self._reapers: set[asyncio.Task[None]] = set()
        self._psy: PsycopgDriver | None = None

    @property
    def source(self) -> Any:
        """What the sink connects with: the DSN it was given (password included: never log
        it), the caller's pool, or, for a pool factory, the pool it made (the factory
        itself before start). For tools that reach the same server, such as
        :class:`~writebehind.PostgresDeadLetter`."""
        if self._dsn is not None:
            return self._dsn
        return self._pool if self._pool is not None else self._factory

    @classmethod
    def from_model(cls, model: Any, dsn_or_pool: Any, **options: Any) -> PostgresSink:
        """A sink for a SQLAlchemy ``Table`` or mapped (declarative ORM) class
        (``pip install 'writebehind[sqlalchemy]'``): table, schema, ``key`` (the primary key, a
        tuple if composite) and ``version`` (the mapper's ``version_id_col``; otherwise
        none unless you pass ``version="updated_at"``) come from the model. ``options``
        override them and pass through to the constructor; a ``key``/``version`` naming no
        column or attribute of the model is a ``ConfigError``. ORM instances are records
        (their loaded column attributes, under their column names). For the batcher:
        ``key=sink.record_key, version=sink.record_version`` (the attribute names).
        Details: ``_from_model``.
        """
        return sink_from_model(cls, model, dsn_or_pool, options, schemas=True)

    def __repr__(self) -> str:
        return f"PostgresSink({self._where!r}, table={self.schema}.{self.table}, key={self.key!r})"

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the pool (for a DSN) and read the table's columns and unique indexes."""
        if getattr(self, "_forked_pool", False):
            raise ConfigError(
                "PostgresSink: the pool you passed in was created before os.fork(); its "
                "connections belong to the parent process. Create the batcher (and its pool) "
                "in the child, or pass a DSN so the sink opens its own pool there"
            )
        if self._pool is None and self._factory is not None:
            self._pool = await pool_from_factory(self._factory, self._error)
        if self.driver == "psycopg" or is_psycopg_pool(self._pool):
            await self._start_psycopg(self._pool)
            return
        try:
            import asyncpg
        except ImportError as exc:
            raise ConfigError(
                "PostgresSink needs asyncpg: pip install 'writebehind[postgres]'"
            ) from exc
        if not on_this_loop(self._pool):
            if self._factory is not None:
                self._pool = None  # not ours to close: it belongs to the other loop
            raise ConfigError(OTHER_LOOP)
        if self._pool is None:
            try:
                # min_size=0: asyncpg >= 0.32 keeps a pool's floor with a background task
                # that reconnects on its own schedule while the server is down, outside the
                # batcher's backoff (and logs a traceback each time). Without a floor, every
                # connection attempt is a write's, paced by the batcher.
                self._pool = await asyncpg.create_pool(
                    self._url, min_size=0, max_size=self.pool_size, reset=_no_reset,
                    **self._connect,
                )  # fmt: skip
            except Exception as exc:
                raise self._error(exc, connecting=True) from None  # it may quote the DSN
        try:
            await self._read_catalog()  # the first connection is made here (min_size=0)
        except BaseException as exc:
            await self.close()  # our own pool: do not leak its connections
            if isinstance(exc, ConfigError) or not isinstance(exc, Exception):
                raise
            raise self._error(exc, connecting=True) from None  # it may quote the DSN

    async def _start_psycopg(self, pool: Any) -> None:
        """The psycopg path (docs/postgres.md): a pool of yours, or connections of its own."""
        path = CopyPath(
            schema=self.schema, table=self.table, key=self.key, version=self.version,
            method=self.method, report=self.reports_stale, increment=self.increment,
        )  # fmt: skip
        self._psy = PsycopgDriver(path, dsn=self._dsn, pool=pool, pool_size=self.pool_size)
        try:
            info, uniques = await self._psy.start()
            self._apply_catalog(info, uniques)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, ConfigError) or not isinstance(exc, Exception):
                raise
            raise self._error(exc, connecting=True) from None  # it may quote the DSN

    async def _read_catalog(self) -> None:
        async with self._pool.acquire() as conn:
            where = f"{quote(self.schema)}.{quote(self.table)}"
            info = await conn.fetch(COLUMNS_SQL, where)
            uniques = [set(r[0]) for r in await conn.fetch(UNIQUE_SQL, where)]
        self._apply_catalog(info, uniques)

    def _apply_catalog(self, info: Any, uniques: list[set[str]]) -> None:
        if not info:
            raise ConfigError(f"table: {self.schema}.{self.table} does not exist")
        self.columns = {r[0]: r[1] for r in info}
        self._arrays = {r[0] for r in info if r[2] == "A"}
        self._json = {r[0] for r in info if r[1] in ("json", "jsonb")}
        self._by_column = {c: self._json_value for c in self._json}
        for name, pg_type in self.columns.items():
            parse = iso_parser(pg_type)
            if parse is not None and name not in self._arrays:
                self._by_column[name] = parse
        for col in (*self.key, *((self.version,) if self.version else ()), *self.increment):
            if col not in self.columns:
                raise ConfigError(
                    f"column {col!r} is not in table {self.schema}.{self.table} (it has "
                    f"{', '.join(self.columns)})"
                )
        if self.key and set(self.key) not in uniques:
            raise ConfigError(
                f"key: table {self.schema}.{self.table} has no PRIMARY KEY or UNIQUE index on "
                f"({', '.join(self.key)}); the upsert needs one"
            )
        self._whole = check_pg_types(self.increment, info, f"{self.schema}.{self.table}")

    async def close(self) -> None:
        """Close the sink's own pool (a pool you passed in is left open).

        Waits (briefly) for the server side of abandoned writes to be ended first. The pool
        gets ``_CLOSE_TIMEOUT`` s to close gracefully; then, or if this call is cancelled (the
        batcher's close deadline), its connections are terminated, so none is left behind.
        """
        psy, self._psy = self._psy, None
        if psy is not None:  # the psycopg path: its own connections, or a pool of yours
            await psy.close(_CLOSE_TIMEOUT)
            pool, self._pool = self._pool, (None if self._own_pool else self._pool)
            if self._factory is not None and pool is not None:
                await pool.close(timeout=_CLOSE_TIMEOUT)  # made by your factory: ours
            return
        pool, self._pool = self._pool, (None if self._own_pool else self._pool)
        reapers = set(self._reapers)
        try:
            if reapers:
                await asyncio.wait(reapers, timeout=REAP_TIMEOUT)
            if self._own_pool and pool is not None:
                try:
                    async with asyncio.timeout(_CLOSE_TIMEOUT):
                        await pool.close()
                except TimeoutError:
                    log.warning("PostgresSink: the pool did not close in time; terminated it")
                    pool.terminate()
        except BaseException:
            if self._own_pool and pool is not None:
                pool.terminate()
            raise
        finally:
            for task in reapers:
                task.cancel()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's pool without closing it (its connections
        are the parent's); the next ``start()`` opens a pool of the child's own. A pool you
        passed in cannot cross a fork: ``start()`` then raises ``ConfigError``."""
        _FORKED_AWAY.append(self._pool)
        if self._psy is not None:
            _FORKED_AWAY.append(self._psy.after_fork())
            self._psy = None
        self._reapers = set()
        if self._own_pool:
            self._pool = None
        else:
            self._forked_pool = True

    def _error(self, exc: BaseException, *, connecting: bool = False) -> Exception:
        """``exc`` mapped into the error tree, secrets scrubbed; while connecting, a parse
        error of a DSN with a password has its message withheld (it may quote a piece)."""
        withhold = connecting and may_quote_password(self._dsn, exc)
        error = map_error(exc, self._secrets, withhold=withhold)
        if connecting:
            error.args = (f"cannot start on PostgreSQL at {self._where}: {error.args[0]}",)
        return error

    # -- writing --------------------------------------------------------------------------
    async def write(self, batch: list[Any]) -> WriteResult | None:
        """Write ``batch`` in one transaction: one upsert (or COPY) per record shape. With
        ``report_stale``, the result names the records the version condition skipped."""
        if not batch:
            return None
        if self._pool is None and self._psy is None:
            raise map_error(ConnectionError("the PostgreSQL sink is not started"), ())
        self.check_models(batch)
        groups, where, dropped = self._group(batch)
        stale: dict[tuple[str, ...], list[int]] = {}
        try:
            if self._psy is not None:
                written, stale = await self._psy.write(groups)
                self.statements += written
                return stale_result(stale, where, dropped) if where else None
            async with self._pool.acquire() as conn:
                try:
                    if len(groups) == 1 and self._single_statement(*groups):
                        # one statement is atomic on its own: no BEGIN/COMMIT round trips
                        names, rows = next(iter(groups.items()))
                        stale[names] = await self._write_rows(conn, names, rows, 0)
                    else:
                        async with conn.transaction():
                            for shape, (names, rows) in enumerate(groups.items()):
                                stale[names] = await self._write_rows(conn, names, rows, shape)
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        self._abandon(conn)
                    elif is_client_error(exc) or isinstance(exc, OSError):
                        conn.terminate()  # never hand a half-broken connection back to the pool
                    raise
        except PermanentSinkError:
            raise
        except Exception as exc:
            error = self._error(exc)
            if isinstance(error, PermanentSinkError) and len(batch) == 1:
                names, rows = next(iter(groups.items()))
                error.args = (f"{error.args[0]} (the record with key {self._key_of(names, rows)})",)
            if any(s in str(exc) for s in self._secrets):
                raise error from None
            raise error from exc
        return stale_result(stale, where, dropped) if where else None

    def _key_of(self, names: tuple[str, ...], rows: list[Any]) -> str:
        return describe_key(names, rows[0], self.key)

    def _abandon(self, conn: Any) -> None:
        """A write was cancelled (``write_timeout`` or the close deadline) with its statement
        possibly still running, e.g. waiting on a lock. Closing our socket does not stop the
        server: a backend blocked on a lock notices only once it gets the lock, and then it
        may still commit. asyncpg's own cancel request is cancelled by ``terminate()``, so we
        terminate the connection now (it is never reused) and end its backend from another
        connection, in the background (``close()`` waits for that, briefly)."""
        pid = conn.get_server_pid()
        pool = self._pool
        conn.terminate()
        if pool is None or not pid:
            return
        reaper = _terminate_backend(pool, pid, self._target)
        task = asyncio.get_running_loop().create_task(reaper)
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)
