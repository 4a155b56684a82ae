"""SQLiteSink under faults: abandoned writes, a full disk, a file deleted while in use."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind._errors import SinkMisconfigured  # not exported (yet)

from .conftest import Open, rows

FAST = wb.RetryPolicy(base=0.01, cap=0.05, max_attempts=3)


def _slow_events(path: Path, pad: int = 1000) -> None:
    """A keyless ``events`` table whose every insert runs a trigger that takes tens of
    milliseconds of pure SQL (a filtered cross join of ``pad`` rows), so a batch of ten
    takes about half a second, and can be interrupted."""
    with sqlite3.connect(path) as c:
        c.executescript(
            f"""
            CREATE TABLE pad (n INTEGER);
            WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {pad})
                INSERT INTO pad SELECT n FROM r;
            CREATE TABLE events (n INTEGER, at TEXT);
            CREATE TRIGGER slow AFTER INSERT ON events BEGIN
                SELECT count(*) FROM pad a, pad b WHERE (a.n * b.n) % 7 = 3;
            END;
            """
        )


def _events(path: Path) -> list[int]:
    with sqlite3.connect(path) as c:
        return [n for (n,) in c.execute("SELECT n FROM events ORDER BY n")]


# -- a full disk (issue 9, item 10) -----------------------------------------------------------
class _SmallDisk(wb.SQLiteSink):
    """A sink whose connection may not grow the file past its size at open: SQLite raises
    a real SQLITE_FULL ("database or disk is full") when a write needs a new page."""

    def _open(self, *args: Any, **kwargs: Any) -> None:
        super()._open(*args, **kwargs)
        conn = self._conn
        assert conn is not None
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")


def _filled(path: Path) -> None:
    """An ``agents`` table and a ``filler`` row taking most of the file: deleting the
    filler frees pages for the sink to reuse."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER)")
        c.execute("CREATE TABLE filler (b BLOB)")
        c.execute("INSERT INTO filler VALUES (zeroblob(200000))")
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def test_disk_full_keeps_the_error_and_is_retriable(tmp_path: Path) -> None:
    """A full disk raises a retriable error that keeps SQLite's own message and code (it
    was replaced by "cannot rollback - no transaction is active" and classed permanent)."""
    path = tmp_path / "full.db"
    _filled(path)
    sink = _SmallDisk(path, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        big = [{"id": f"a{i}", "name": "x" * 1000, "updated_at": 1} for i in range(100)]
        with pytest.raises(wb.RetriableSinkError, match="disk is full") as info:
            await sink.write(big)
        assert not isinstance(info.value, SinkMisconfigured)
        cause = info.value.__cause__
        assert isinstance(cause, sqlite3.OperationalError)
        assert cause.sqlite_errorname == "SQLITE_FULL"
        await sink.write([{"id": "small", "name": "x", "updated_at": 1}])  # still usable
    finally:
        await sink.close()


async def test_disk_full_is_retried_until_there_is_room(api: Open, tmp_path: Path) -> None:
    """Records that meet a full disk are retried, not bisected into the dead-letter store,
    and commit once there is room again."""
    path = tmp_path / "full.db"
    _filled(path)
    letters: list[wb.DeadLetterEntry] = []
    sink = _SmallDisk(path, table="agents", key="id", version="updated_at")
    policy = wb.RetryPolicy(base=0.05, cap=0.1, max_attempts=100)
    async with api(sink, key="id", max_batch=100, retry=policy, dead_letter=letters.extend) as b:
        receipts = [
            b.add_nowait({"id": f"a{i}", "name": "x" * 1000, "updated_at": 1}) for i in range(100)
        ]
        deadline = time.monotonic() + 5
        while b.stats().retried < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert b.stats().retried >= 2
        assert b.stats().splits == 0
        with sqlite3.connect(path) as c:
            c.execute("DELETE FROM filler")
        outcomes = {await b.outcome(r) for r in receipts}
    assert outcomes == {wb.Outcome.COMMITTED}
    assert letters == []
    assert len(rows(path)) == 100
