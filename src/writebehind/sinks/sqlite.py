"""``SQLiteSink``: the embedded default. One conditional upsert per batch, in one transaction.

The connection lives on one daemon worker thread of the sink's own (``WorkerThreads``), so
the event loop never blocks on SQLite and a hung write cannot hold up interpreter exit. The
table is read when the batcher starts; a missing table, a missing key or version column, or
a key without a PRIMARY KEY/UNIQUE index that ``ON CONFLICT`` can use (a partial index or
one on an expression cannot) raises ``ConfigError`` there. Each batch runs ``INSERT ... ON
CONFLICT (key) DO UPDATE SET ... WHERE excluded.version >= table.version`` in multi-row
statements (``_sqlite_batch``) inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, so an older
record never overwrites a newer row, whoever writes it; versions are stored in a form
SQLite orders as Python does (``_sqlite_versions``).

An abandoned write (``write_timeout``, the close deadline: the engine cancels the task
awaiting ``write``) is interrupted on its thread, and its outcome is decided only once the
thread has returned: rolled back, the cancellation propagates; committed already, ``write``
returns normally. Before each commit the sink checks, with one ``os.stat``, that its file is
still the one it opened: a file deleted or replaced while in use fails the write (retriable)
and is reopened for the next attempt, instead of committing into an unlinked file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError, PermanentSinkError, RetriableSinkError, SinkMisconfigured
from .._ident import validate
from .._workers import WorkerThreads
from ._from_model import RecordNames, sink_from_model
from ._increment import check_deltas, increment_columns
from ._newest import newest_across_shapes
from ._protocol import WriteResult
from ._records import Rows, check_keys, check_shape
from ._sqlite_batch import Statements
from ._sqlite_errors import map_error, statement_error
from ._sqlite_schema import check_file, inspect
from ._sqlite_thread import Abandoned, Job, Moved, begin, file_identity, moved, settled
from ._sqlite_versions import Versions
from ._stale import Where, group_indexed, sqlite_stale, stale_result
from ._values import JsonDumps, convert_rows, json_encoder, sqlite_types

__all__ = ["SQLiteSink"]

log = logging.getLogger("writebehind")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_BUSY_SLICE = 0.05  # s SQLite's own busy handler waits before the sink looks at the job again


_FORKED_AWAY: list[Any] = []  # the parent's connections in a forked child: never finalised
_LIVE: weakref.WeakSet[SQLiteSink] = weakref.WeakSet()
_FORK_WAIT = 2.0  # seconds a fork waits for a sink's transaction in progress to end


def _before_fork() -> None:
    """No transaction may be half done when the process forks: SQLite's in-process lock
    bookkeeping would cross into the child, whose own connection then finds the file busy
    for good. Wait (a bounded time) for each sink's transaction to end; hold it off until
    the fork is done."""
    for sink in list(_LIVE):
        sink._fork_held = sink._txn.acquire(timeout=_FORK_WAIT)


def _after_fork_in_parent() -> None:
    for sink in list(_LIVE):
        if sink._fork_held:
            sink._fork_held = False
            sink._txn.release()


def _after_fork_in_child() -> None:
    for sink in list(_LIVE):
        sink._txn = threading.Lock()  # the parent's writer thread is not here to release it
        sink._fork_held = False


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class SQLiteSink(RecordNames):
    """Write batches to a SQLite table with one upsert statement per batch.

    Args:
        path: the database file, which must exist with the table in it (a path that does
            not exist is a ``ConfigError`` at start, and nothing is created);
            ``":memory:"`` opens a private in-memory database.
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
        json_dumps: the function that turns dicts, lists and structured values (nested
            dataclasses, pydantic models, msgspec Structs) into JSON text, e.g.
            ``orjson.dumps`` (``str`` or UTF-8 ``bytes``); the default is ``json.dumps``
            writing them as plain JSON objects (Enums as their values, datetimes as ISO 8601).
        report_stale: report the records the version condition skipped, so they resolve
            ``Outcome.STALE`` (``_stale``). Off by default: free while nothing is skipped,
            a lookup per batch that has skipped records (docs/benchmarks.md).
        increment: numeric columns the upsert adds to instead of overwriting (``SET views =
            views + excluded.views``), whatever the versions (``_increment``).
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
        json_dumps: JsonDumps | None = None,
        report_stale: bool = False,
        increment: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.reports_stale = bool(report_stale)
        self.table = validate(table, "table")
        keys = (key,) if isinstance(key, str) else tuple(key or ())
        self.key = tuple(validate(k, "key") for k in keys)
        self.version = None if version is None else validate(version, "version")
        if self.version is not None and not self.key:
            raise ConfigError("version: needs key (the version orders rows with one key)")
        self.increment = increment_columns(increment, self.key, self.version, report_stale)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ConfigError(f"synchronous: must be one of {', '.join(_SYNCHRONOUS)}")
        self.synchronous = synchronous.upper()
        if not busy_timeout >= 0:
            raise ConfigError(f"busy_timeout: must be >= 0 seconds, got {busy_timeout!r}")
        self.busy_timeout = busy_timeout
        self._encode = json_encoder(json_dumps)
        self._types = sqlite_types(self._encode)
        self._by_column: dict[str, Callable[[Any], Any]] = {}
        self.columns: tuple[str, ...] = ()
        self._conn: sqlite3.Connection | None = None
        self._pool: WorkerThreads | None = None
        self._txn = threading.Lock()  # held for each transaction; a fork waits for it
        self._fork_held = False
        _LIVE.add(self)
        self._sql = Statements(self.table, self.key, self.version, self.increment)
        self._versions: Versions | None = None
        self._lock = threading.Lock()  # guards _current against _abandon's interrupt
        self._current: Job | None = None  # the write running on the thread
        self._where = ""  # the file's absolute path, for the identity check
        self._file: tuple[int, int] | None = None  # (device, inode) when opened
        self._reopen = False  # the file was deleted or replaced: open it again
        self.statements = 0
        """Statements executed (one per batch, or per shape of record within a batch)."""

    @classmethod
    def from_model(cls, model: Any, path: str | os.PathLike[str], **options: Any) -> SQLiteSink:
        """A sink for a SQLAlchemy ``Table`` or mapped (declarative ORM) class
        (``pip install 'writebehind[sqlalchemy]'``): table, ``key`` (the primary key, a
        tuple if composite) and ``version`` (the mapper's ``version_id_col``; otherwise
        none unless you pass ``version="updated_at"``) come from the model. ``options``
        override them and pass through to the constructor; a ``key``/``version`` naming no
        column or attribute of the model is a ``ConfigError``. ORM instances are records
        (their loaded column attributes, under their column names). For the batcher:
        ``key=sink.record_key, version=sink.record_version`` (the attribute names).
        Details: ``_from_model``.
        """
        return sink_from_model(cls, model, path, options, schemas=False)

    def __repr__(self) -> str:
        return f"SQLiteSink({self.path!r}, table={self.table!r}, key={self.key!r})"

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the connection and check the table (``ConfigError`` if it does not fit)."""
        pool = self._pool = WorkerThreads(1, "writebehind-sqlite")
        try:
            await pool.run(self._open)
        except BaseException:
            self._pool = None
            pool.shutdown()
            raise

    def _open(self, again: bool = False) -> None:
        """Open the file and read the table, on the sink's thread. ``again``: reopen a file
        that was deleted or replaced, and never create it."""
        if self.path in ("", ":memory:"):
            target, uri = self.path, False
        else:
            if not again:
                self._where = os.path.abspath(self.path)
                check_file(self.path, self._where, self.table)
            # mode=rw: SQLite never creates the file (a mistyped path leaves nothing behind)
            target, uri = pathlib.Path(self._where).as_uri() + "?mode=rw", True
        conn = sqlite3.connect(
            target, uri=uri, isolation_level=None, check_same_thread=False,
            timeout=self.busy_timeout,
        )  # fmt: skip
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            table = inspect(conn, self.path, self.table, self.key, self.version, self.increment)
            # From here SQLite's own busy wait is sliced, so an abandoned write stops waiting.
            conn.execute(f"PRAGMA busy_timeout = {int(min(self.busy_timeout, _BUSY_SLICE) * 1e3)}")
            file = file_identity(self.path, self._where)
        except sqlite3.Error as exc:
            conn.close()
            raise map_error(exc) from exc
        except BaseException:
            conn.close()
            raise
        self.columns = table.columns
        self._by_column = {c: self._json_value for c in table.json}
        if self.version and (
            self._versions is None or self._versions.declared != table.version_type
        ):
            self._versions = Versions(self.version, table.version_type)
        self._sql.forget()
        self._sql.fit(conn)
        self._conn, self._file = conn, file

    async def close(self) -> None:
        """Close the connection (after any write still running) and stop the worker thread."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await pool.run(self._shut)  # after any write still queued on the thread
        finally:
            pool.shutdown()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's connection and thread (never close them:
        SQLite connections must not cross a fork); the next ``start()`` opens anew."""
        _FORKED_AWAY.append(self._conn)
        self._conn, self._pool = None, None

    def _shut(self) -> None:
        conn, self._conn = self._conn, None
        self._reopen = False
        if conn is not None:
            conn.close()

    # -- writing --------------------------------------------------------------------------
    async def write(self, batch: list[Any]) -> WriteResult | None:
        """Upsert ``batch`` in one transaction.

        When the await is cancelled, the write is interrupted on its thread, and the
        cancellation waits (shielded) for the thread to return: if the transaction rolled
        back, the ``CancelledError`` propagates; if it had already committed, ``write``
        returns normally, so the records are counted committed.
        """
        if not batch:
            return None
        pool = self._pool
        if pool is None:
            raise RetriableSinkError("the SQLite sink is not started or already closed")
        self.check_models(batch)
        job = Job()
        attempt = asyncio.ensure_future(pool.run(self._write, batch, job))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            if attempt.done() and attempt.cancelled():
                raise
            self._abandon(job)
            await settled(attempt, lambda: self._abandon(job))
            if attempt.cancelled() or attempt.exception() is not None:
                raise  # rolled back (interrupted, or failed anyway): nothing was written
            # The transaction committed before the interruption could take effect, so the
            # records are in the table. Swallowing the cancellation is deliberate: returning
            # normally makes whoever cancelled (write_timeout, the close deadline) count them
            # committed, never LOST or DEAD_LETTERED.
            return attempt.result()

    def _abandon(self, job: Job) -> None:
        """Stop ``job``: the thread looks at ``abandoned`` between statements;
        ``interrupt()`` stops the statement running now (made again until the thread
        returns: ``settled``)."""
        with self._lock:
            job.abandoned = True
            conn = self._conn
            if self._current is job and conn is not None:
                with contextlib.suppress(sqlite3.Error):  # closed meanwhile: nothing to stop
                    conn.interrupt()

    def _write(self, batch: list[Any], job: Job) -> WriteResult | None:
        with self._lock:
            if job.abandoned:
                raise Abandoned  # cancelled while queued behind another write
            self._current = job
        try:
            conn = self._connection()
            groups, where, dropped = self._group(batch)
            with self._txn:  # a fork waits for the transaction to end (see _before_fork)
                stale = self._transaction(conn, groups, job, bool(where))
            return stale_result(stale, where, dropped) if where else None
        except sqlite3.Error as exc:
            raise map_error(exc) from exc
        except (OverflowError, ValueError) as exc:  # an int beyond 64 bits, a lone surrogate
            raise PermanentSinkError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._current = None

    def _transaction(self, conn: sqlite3.Connection, groups: Rows, job: Job, report: bool) -> Any:
        stale = {}  # per shape, the rows the upsert skipped (report_stale)
        try:
            begin(conn, job, self.busy_timeout)
            for names, rows in groups.items():
                written = self._sql.run(conn, names, rows, job, self._failed(names))
                self.statements += 1
                if report and written < len(rows):  # some skipped: which (rarely needed)
                    stale[names] = sqlite_stale(conn, names, rows, self)
            if job.abandoned:
                raise Abandoned
            if self._moved():
                raise Moved
            conn.execute("COMMIT")
            return stale
        except BaseException as exc:
            self._release()  # no interrupt and no abort may hit the rollback
            self._rollback(conn)
            if isinstance(exc, Moved):
                self._forget(conn)
                raise RetriableSinkError(
                    f"the database file {self.path!r} was deleted or replaced while in use; "
                    f"nothing was written to it, and the sink opens the file again"
                ) from None
            raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Roll back if a transaction is still open (SQLite ends it itself on a full disk
        or an interrupt); a failing rollback never replaces the error being raised."""
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning(
                "writebehind: SQLiteSink(%r): ROLLBACK failed (%s); reopening the connection",
                self.path, exc,
            )  # fmt: skip
            self._forget(conn)

    def _moved(self) -> bool:
        """Whether the file at ``path`` is no longer the one the connection has open."""
        return moved(self._where, self._file)

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Close ``conn``; the next write opens the file again. Closing checkpoints the WAL
        into the file the connection has open (deleted or not) and removes its ``-wal`` and
        ``-shm`` files, so that they are not mistaken for those of a new file at ``path``."""
        if self._conn is conn:
            self._conn = None
            self._reopen = True
        try:
            conn.close()
        except sqlite3.Error as exc:
            log.debug("writebehind: SQLiteSink(%r): close failed: %s", self.path, exc)

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None:
            return conn
        if not self._reopen:
            raise RetriableSinkError("the SQLite sink is closed")
        if not os.path.exists(self._where):
            raise SinkMisconfigured(
                f"cannot open {self.path!r} again: the file is gone (deleted while in use?); "
                f"restore it, or create it with table {self.table!r}"
            )
        try:
            self._open(again=True)
        except ConfigError as exc:
            raise SinkMisconfigured(f"opened {self.path!r} again, but: {exc}") from exc
        assert self._conn is not None  # _open sets it or raises
        self._reopen = False
        return self._conn

    def _group(self, batch: list[Any]) -> tuple[Rows, Where, list[int]]:
        """The rows by record shape, where each came from (with ``report_stale``), and the
        batch indexes of the records of a key left out for its newest (``_newest``)."""
        groups, where = group_indexed(batch, self.reports_stale and self.version is not None)
        groups, where, dropped = newest_across_shapes(
            batch, groups, where, self.key, self.version, self.increment
        )
        out: Rows = {}
        versions, version = self._versions, self.version
        for names, rows in groups.items():
            if names not in self._sql.shapes:
                check_shape(names, self.columns, self.key, self.table)
                self._sql.shapes.add(names)
            check_keys(names, rows, self.key)
            if versions is not None and version in names:
                rows = versions.adapt(rows, names.index(version))
            out[names] = convert_rows(names, rows, self.key, self._types, self._by_column)
            if self.increment:
                check_deltas(names, out[names], self.increment)
        return out, where, dropped

    def _json_value(self, v: Any) -> Any:
        return v if v is None or isinstance(v, str) else self._encode(v)

    def _failed(self, names: tuple[str, ...]) -> Callable[[Any, Any], Exception]:
        return lambda exc, rows: statement_error(exc, names, rows, self.key, self.increment)

    def _build(self, names: tuple[str, ...], rows: int = 1) -> str:
        """The upsert of ``rows`` records of ``names`` (``_sqlite_batch``)."""
        return self._sql.build(names, rows)
