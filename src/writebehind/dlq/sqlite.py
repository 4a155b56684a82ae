"""``SQLiteDeadLetter``: dead letters in a local SQLite file.

Constructing one does no I/O: the file is created (mode 0600, before SQLite opens it) and
the table made on first use, on the store's own worker thread, so the event loop never
blocks on SQLite. Each ``put`` is one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .._errors import ConfigError, PermanentSinkError, RetriableSinkError
from .._ident import quote, validate
from ._store import DeadLetterStore, rowcount

__all__ = ["SQLiteDeadLetter"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    batcher TEXT NOT NULL,
    sink TEXT NOT NULL,
    error TEXT NOT NULL,
    message TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    record TEXT NOT NULL,
    encoding TEXT NOT NULL,
    record_type TEXT NOT NULL
)"""


class SQLiteDeadLetter(DeadLetterStore):
    """Keep dead letters in a SQLite file.

    Args:
        path: the file (required: nothing is written where the process runs unless you
            name it). Created with mode 0600 on first use; nothing happens when the store
            is made.
        table: the table's name (default ``dead_letters``), created if missing.
        create: ``False`` to refuse a missing file or table on first use (``ConfigError``)
            instead of creating them; the command line reads stores this way.
        busy_timeout: seconds to wait for another connection's lock.

    Columns: ``id`` (rising, never reused), ``at`` (``time.time()`` seconds, REAL),
    ``batcher``, ``sink``, ``error``, ``message``, ``attempts``, ``record`` (tagged JSON
    text), ``encoding`` (``json`` or ``repr``) and ``record_type``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "dead_letters",
        create: bool = True,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.table = validate(table, "table")
        self.create = create
        if not busy_timeout >= 0:
            raise ConfigError(f"busy_timeout: must be >= 0 seconds, got {busy_timeout!r}")
        self.busy_timeout = busy_timeout
        self._table = quote(self.table)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteDeadLetter({self.path!r}, table={self.table!r})"

    def _absent(self) -> bool:
        """No file yet (nothing was dead-lettered): a count is 0 without making one."""
        return self._conn is None and self.create and not os.path.exists(self.path)

    async def count(self) -> int:
        """How many entries the store holds (0, without creating the file, if it is absent)."""
        return 0 if self._absent() else await super().count()

    # -- the backend -----------------------------------------------------------------------
    def _param(self, n: int) -> str:
        return "?"

    def _at_param(self, at: float) -> Any:
        return at

    def _at_value(self, raw: Any) -> float:
        return float(raw)

    async def _insert(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

        await self._run(run)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Sequence[Any]]:
        return await self._run(lambda conn: conn.execute(sql, params).fetchall())

    async def _execute(self, sql: str, params: Sequence[Any]) -> int:
        return await self._run(lambda conn: rowcount(conn.execute(sql, params).rowcount))

    # -- the connection, on its own thread -------------------------------------------------
    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="writebehind-dlq")
            executor = self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except ConfigError:
            raise
        except sqlite3.Error as exc:
            raise _mapped(exc, f"dead-letter store {self.path!r}") from exc
        except (ValueError, TypeError, OverflowError) as exc:  # a value sqlite3 cannot bind
            text = f"dead-letter store {self.path!r}: {type(exc).__name__}: {exc}"
            raise PermanentSinkError(text) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if not os.path.exists(self.path):
            if not self.create:
                raise ConfigError(f"no dead-letter file at {self.path!r}")
            try:  # 0600 from the start: the records may hold personal data
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            except FileExistsError:
                pass  # another process made it meanwhile
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the dead-letter file {self.path!r}: {exc.strerror}"
                ) from exc
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # -wal/-shm take the file's mode
            if self.create:
                conn.execute(_SCHEMA.format(table=self._table))
            elif not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.table,)
            ).fetchone():
                raise ConfigError(f"{self.path!r} has no dead-letter table {self.table!r}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    async def close(self) -> None:
        """Close the connection and stop the worker thread (the next call reopens them)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown(wait=False)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# errors no entry can cause: the file is busy, full, unreadable or unwritable
_STORE_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                 "SQLITE_READONLY", "SQLITE_PROTOCOL", "SQLITE_NOMEM")  # fmt: skip
_STORE_MESSAGES = ("locked", "busy", "disk i/o", "disk is full", "unable to open", "readonly")


def _mapped(exc: sqlite3.Error, where: str) -> PermanentSinkError | RetriableSinkError:
    """``exc`` as a store error that says what it is: retriable when no entry can cause it
    (a locked, full or failing disk), with SQLite's own name for it."""
    name = getattr(exc, "sqlite_errorname", None)
    text = f"{where}: {type(exc).__name__}: {exc}" + (f" ({name})" if name else "")
    if (name and name.startswith(_STORE_ERRORS)) or any(
        m in str(exc).lower() for m in _STORE_MESSAGES
    ):
        return RetriableSinkError(text)
    return PermanentSinkError(text)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the transaction a failed statement left open, if SQLite has not already
    (it rolls back by itself on a full disk or an I/O error). A failing rollback never
    replaces the error that caused it."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
