"""The demo against SQLite (the default): a temporary file, or ``--db PATH`` kept afterwards.

Ids are ``agent-0000``-style strings and timestamps ISO 8601 strings with microseconds (UTC),
so they compare in time order as text. The naive replay writes a fresh file of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sqlite3
import tempfile
from typing import Any

from .. import SQLiteSink
from .._ident import quote
from ._args import Unavailable
from ._display import Row
from ._naive import NaiveResult, replay_sqlite
from ._target import Fleet, check_rows

__all__ = ["SQLiteTarget"]

_REPLICAS = 4


def _iso(stamp: dt.datetime) -> str:
    return stamp.isoformat(timespec="microseconds")


class SQLiteTarget:
    """See the module docstring."""

    label = "SQLite"
    max_in_flight = 1  # SQLite has one writer at a time
    naive_how = "into a fresh SQLite file with the same settings"

    def __init__(self, db: str | None, table: str) -> None:
        self._db = db
        self._table = table
        self._tmp = tempfile.TemporaryDirectory(prefix="writebehind-demo-")
        self.path = db or os.path.join(self._tmp.name, "heartbeats.db")
        self.where = f"{self.path}, table {table}" if db else f"a temporary file, table {table}"
        self._schema = (
            f"CREATE TABLE IF NOT EXISTS {quote(table)} (id TEXT PRIMARY KEY, replica_id TEXT, "
            "first_connected_at TEXT, last_connected_at TEXT, updated_at TEXT)"
        )

    async def prepare(self, *, reset: bool) -> None:
        try:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(self._schema)
                if reset:
                    conn.execute(f"DELETE FROM {quote(self._table)}")
                conn.commit()
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the SQLite database {self.path!r}: {exc}") from None

    def new_fleet(self, agents: int) -> Fleet:
        width = len(str(agents - 1))
        ids = [f"agent-{i:0{width}d}" for i in range(agents)]
        replicas = [f"replica-{i % _REPLICAS}" for i in range(agents)]
        return Fleet(ids, replicas, _iso)

    def sink(self) -> Any:
        return SQLiteSink(self.path, table=self._table, key="id", version="updated_at")

    async def replay_naive(
        self, fleet: Fleet, *, interval: float, total: int, budget: float
    ) -> NaiveResult:
        return await asyncio.to_thread(
            replay_sqlite,
            os.path.join(self._tmp.name, "naive.db"),
            schema=self._schema,
            table=quote(self._table),
            ids=fleet.ids,
            replicas=fleet.replicas,
            interval=interval,
            total=total,
            budget=budget,
        )

    async def check(self, fleet: Fleet) -> tuple[bool, str]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            sql = f"SELECT id, updated_at FROM {quote(self._table)}"
            found = dict(conn.execute(sql).fetchall())
        return check_rows(fleet.expected(), found, len(found))

    def kept(self) -> Row | None:
        return None if self._db is None else ("database", f"{self._db} (kept)")

    async def close(self) -> None:
        self._tmp.cleanup()
