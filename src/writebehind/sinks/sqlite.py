"""``SQLiteSink``: the embedded default. One conditional upsert per batch, in one transaction.

The connection lives on one worker thread of the sink's own, so the event loop never
blocks on SQLite. The table's columns are read when the batcher starts; a missing table,
a missing key or version column, or a key without a PRIMARY KEY/UNIQUE index that
``ON CONFLICT`` can use (a partial index or one on an expression cannot) raises
``ConfigError`` there. Each batch runs ``INSERT ... ON CONFLICT (key) DO UPDATE SET ...
WHERE excluded.version >= table.version`` through ``executemany`` inside ``BEGIN IMMEDIATE``
... ``COMMIT``, so an older record never overwrites a newer row, whoever writes it;
versions are stored in a form SQLite orders as Python does (``_sqlite_versions``). Errors
are classed by SQLite's result code (``_sqlite_errors``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._errors import ConfigError, PermanentSinkError, RetriableSinkError
from ._ident import quote, validate
from ._records import Rows, adapt_columns, check_shape, group_rows
from ._sqlite_errors import map_error
from ._sqlite_schema import inspect
from ._sqlite_versions import Versions
from ._upsert import on_conflict

__all__ = ["SQLiteSink"]

log = logging.getLogger("writebehind")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_ADAPT: dict[type, Callable[[Any], Any]] = {
    dt.datetime: dt.datetime.isoformat,
    dt.date: dt.date.isoformat,
    uuid.UUID: str,
    decimal.Decimal: str,
    dict: json.dumps,
    list: json.dumps,
}


class SQLiteSink:
    """Write batches to a SQLite table with one upsert statement per batch.

    Args:
        path: the database file (created if missing; the table must exist).
        table: the table's name.
        key: the column (or tuple of columns) of a PRIMARY KEY or UNIQUE index (not a
            partial one); with it, records upsert; without it, they are inserted.
        version: the column ordering records with the same key; the upsert only overwrites
            a row whose version is older or equal. Versions are stored so that SQLite orders
            them as Python does: aware datetimes as fixed-width UTC text, naive ones and
            dates as fixed-width text, ``Decimal`` as a number; one sink writes one kind of
            version, and what SQLite could not order is refused (``PermanentSinkError``).
        synchronous: SQLite's ``PRAGMA synchronous`` (``"FULL"``, the default, or
            ``"NORMAL"``, ``"OFF"``, ``"EXTRA"``). The journal is always WAL.
        busy_timeout: seconds a write waits for another connection's lock before failing
            (a retriable error).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str,
        key: str | tuple[str, ...] | None = None,
        version: str | None = None,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.table = validate(table, "table")
        keys = (key,) if isinstance(key, str) else tuple(key or ())
        self.key = tuple(validate(k, "key") for k in keys)
        self.version = None if version is None else validate(version, "version")
        if self.version is not None and not self.key:
            raise ConfigError("version: needs key (the version orders rows with one key)")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ConfigError(f"synchronous: must be one of {', '.join(_SYNCHRONOUS)}")
        self.synchronous = synchronous.upper()
        if not busy_timeout >= 0:
            raise ConfigError(f"busy_timeout: must be >= 0 seconds, got {busy_timeout!r}")
        self.busy_timeout = busy_timeout
        self.columns: tuple[str, ...] = ()
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._sql: dict[tuple[str, ...], str] = {}
        self._versions: Versions | None = None
        self.statements = 0
        """Statements executed (one per batch, or per shape of record within a batch)."""

    def __repr__(self) -> str:
        return f"SQLiteSink({self.path!r}, table={self.table!r}, key={self.key!r})"

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the connection and check the table (``ConfigError`` if it does not fit)."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="writebehind-sqlite")
        await self._run(self._open)

    def _open(self) -> None:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            table = inspect(conn, self.path, self.table, self.key, self.version)
        except sqlite3.Error as exc:
            conn.close()
            raise map_error(exc) from exc
        except BaseException:
            conn.close()
            raise
        self.columns = table.columns
        if self.version:
            self._versions = Versions(self.version, table.version_type)
        self._conn = conn

    async def close(self) -> None:
        """Close the connection (after any write still running) and stop the worker thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        try:
            if conn is not None:  # after any write still queued on the thread
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise RetriableSinkError("the SQLite sink is not started or already closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- writing --------------------------------------------------------------------------
    async def write(self, batch: list[Any]) -> None:
        """Upsert ``batch`` in one transaction."""
        if batch:
            await self._run(self._write, batch)

    def _write(self, batch: list[Any]) -> None:
        conn = self._conn
        if conn is None:
            raise RetriableSinkError("the SQLite sink is closed")
        groups = self._group(batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for names, rows in groups.items():
                    conn.executemany(self._statement(names), rows)
                    self.statements += 1
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise map_error(exc) from exc
        except (OverflowError, ValueError) as exc:  # an int beyond 64 bits, a lone surrogate
            raise PermanentSinkError(f"{type(exc).__name__}: {exc}") from exc

    def _group(self, batch: list[Any]) -> Rows:
        groups = group_rows(batch)
        out: Rows = {}
        versions, version = self._versions, self.version
        for names, rows in groups.items():
            if names not in self._sql:
                check_shape(names, self.columns, self.key, self.table)
            if versions is not None and version in names:
                rows = versions.adapt(rows, names.index(version))
            out[names] = adapt_columns(rows, _ADAPT)
        return out

    def _statement(self, names: tuple[str, ...]) -> str:
        sql = self._sql.get(names)
        if sql is None:
            sql = self._sql[names] = self._build(names)
        return sql

    def _build(self, names: tuple[str, ...]) -> str:
        t = quote(self.table)
        cols = ", ".join(quote(n) for n in names)
        marks = ", ".join("?" for _ in names)
        sql = f"INSERT INTO {t} ({cols}) VALUES ({marks})"
        if not self.key:
            return sql
        return sql + on_conflict(names, self.key, self.version, t)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite ends it itself on a full disk or
    an interrupt); a failing rollback never replaces the error being raised."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("writebehind: SQLiteSink: ROLLBACK failed: %s", exc)
