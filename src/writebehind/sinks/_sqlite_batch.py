"""How ``SQLiteSink`` sends one group's rows (one record shape): multi-row statements,
``INSERT ... VALUES (?, ...), (?, ...), ... ON CONFLICT ...``, of a power-of-two number of
rows each (at most :data:`MOST`, and within SQLite's limit on bound parameters), rather
than ``executemany`` of the one-row statement.

Why: Python's ``sqlite3`` releases the GIL around each ``sqlite3_step``, and
``executemany`` steps once per row, so the sink's thread had to take the GIL back after
every row. While the event loop's thread was busy (producers adding records), each of those
waits could last up to the interpreter's switch interval (5 ms), so the sink's thread and
the loop took turns, and SQLite's own work never overlapped the loop's. A multi-row
statement binds its values (the GIL held) and then runs all its rows in one step without
the GIL, while the loop goes on. The values are bound exactly as ``executemany`` binds them
(the same adapters, the same errors), and the rows are applied in order, one by one, so a
key twice in one statement upserts twice, as two statements would.

A batch of 500 rows is 256 + 128 + 64 + 32 + 16 + 4: at most nine statement texts per
record shape (cached here, prepared once by ``sqlite3``'s statement cache).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from typing import Any

from .._ident import quote
from ._sqlite_thread import Abandoned, Job
from ._upsert import on_conflict

__all__ = ["MOST", "Statements"]

MOST = 256
"""The most rows in one statement (a power of two)."""

_chain = itertools.chain.from_iterable


class Statements:
    """One sink's upsert texts, per record shape and number of rows, and their execution."""

    def __init__(
        self, table: str, key: tuple[str, ...], version: str | None, increment: tuple[str, ...]
    ) -> None:
        self.table, self.key, self.version, self.increment = table, key, version, increment
        self._sql: dict[tuple[tuple[str, ...], int], str] = {}
        self.shapes: set[tuple[str, ...]] = set()
        """The record shapes checked against the table's columns."""
        self._most = MOST
        self._limit = 999  # SQLite's oldest default; fit() reads the connection's

    def fit(self, conn: sqlite3.Connection) -> None:
        """Read the connection's limit on bound parameters (a new connection)."""
        self._limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

    def forget(self) -> None:
        """A new connection: the table may have changed, so every shape is checked again."""
        self.shapes.clear()

    def sql(self, names: tuple[str, ...], rows: int = 1) -> str:
        """The upsert of ``rows`` records of ``names``."""
        sql = self._sql.get((names, rows))
        if sql is None:
            sql = self._sql[(names, rows)] = self.build(names, rows)
        return sql

    def build(self, names: tuple[str, ...], rows: int = 1) -> str:
        t = quote(self.table)
        cols = ", ".join(quote(n) for n in names)
        marks = "(" + ", ".join("?" for _ in names) + ")"
        sql = f"INSERT INTO {t} ({cols}) VALUES {', '.join([marks] * rows)}"
        if not self.key:
            return sql
        clause = on_conflict(names, self.key, self.version, t, self.increment, checked=True)
        return sql + clause

    def most(self, width: int) -> int:
        """The most rows of ``width`` values in one statement: a power of two."""
        n = self._most
        while n > 1 and n * width > self._limit:
            n //= 2
        return n

    def run(
        self,
        conn: sqlite3.Connection,
        names: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        job: Job,
        failed: Callable[[Exception, list[tuple[Any, ...]]], BaseException],
    ) -> int:
        """Upsert ``rows`` (each of ``len(names)`` values); return the rows inserted or
        updated (SQLite's changes: those the version condition skipped are not counted).
        A statement that fails raises ``failed(error, its rows)``; an abandoned ``job``
        stops between statements."""
        width = len(names)
        values = list(_chain(rows))
        n, done, written = len(rows), 0, 0
        size = self.most(width)
        execute = conn.execute
        while done < n:
            while size > n - done:
                size //= 2
            if job.abandoned:
                raise Abandoned
            try:
                cur = execute(self.sql(names, size), values[done * width : (done + size) * width])
            except (sqlite3.Error, OverflowError, ValueError) as exc:  # see statement_error
                raise failed(exc, rows[done : done + size]) from exc
            written += cur.rowcount
            done += size
        return written
