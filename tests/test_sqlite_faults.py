"""SQLiteSink under faults: abandoned writes, a full disk, a file deleted while in use."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
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


async def _cancel_a_write(sink: wb.SQLiteSink, records: int = 50) -> float:
    """Start writing ``records`` events, cancel the write 0.1 s in: the seconds until its
    ``CancelledError`` came back."""
    task = asyncio.create_task(sink.write([{"n": i, "at": "x"} for i in range(records)]))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - t0


def _events(path: Path) -> list[int]:
    with sqlite3.connect(path) as c:
        return [n for (n,) in c.execute("SELECT n FROM events ORDER BY n")]


# -- abandoned writes (issue 9, item 5) -------------------------------------------------------
async def test_cancelled_write_is_interrupted_and_rolled_back(tmp_path: Path) -> None:
    """Cancelling a write interrupts it on its thread: the cancellation is re-raised once
    the transaction rolled back, promptly, and nothing is in the table afterwards."""
    path = tmp_path / "ev.db"
    _slow_events(path)
    sink = wb.SQLiteSink(path, table="events")
    await sink.start()
    try:
        took = await _cancel_a_write(sink)
        assert took < 0.5  # interrupted, not run to its end (seconds)
    finally:
        await sink.close()
    await asyncio.sleep(1.5)
    assert _events(path) == []


async def test_cancelled_write_that_committed_returns_normally(tmp_path: Path) -> None:
    """A write cancelled after its transaction committed on the thread (the result not yet
    seen by the loop) returns normally: its records are in the table, so whoever cancelled
    must count them committed, never lost."""
    path = tmp_path / "ev.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE events (n INTEGER, at TEXT)")
    sink = wb.SQLiteSink(path, table="events")
    await sink.start()
    try:
        task = asyncio.create_task(sink.write([{"n": 1, "at": "x"}]))
        for _ in range(5):  # the write is handed to the sink's thread
            await asyncio.sleep(0)
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop while the thread commits
        task.cancel()
        await task  # no CancelledError: the write committed
    finally:
        await sink.close()
    assert _events(path) == [1]


async def test_timed_out_writes_never_commit_later(api: Open, tmp_path: Path) -> None:
    """Writes abandoned on write_timeout are rolled back before they are retried: a keyless
    table gets no duplicate, and no record reported DEAD_LETTERED is in it, even seconds
    later (they used to commit on the executor thread after the engine gave up)."""
    path = tmp_path / "ev.db"
    _slow_events(path)
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.SQLiteSink(path, table="events")
    options: dict[str, Any] = {"max_batch": 10, "write_timeout": 0.1, "retry": FAST}
    async with api(sink, dead_letter=letters.extend, **options) as b:
        receipts = [b.add_nowait({"n": i, "at": "x"}) for i in range(10)]
        await b.flush()
        outcomes = [await b.outcome(r) for r in receipts]
    assert set(outcomes) == {wb.Outcome.DEAD_LETTERED}
    assert len(letters) == 10
    await asyncio.sleep(2.0)
    assert _events(path) == []


async def test_writes_abandoned_at_the_close_deadline_never_commit(
    api: Open, tmp_path: Path
) -> None:
    """A write still running at the close deadline is interrupted: the records reported
    LOST are not in the table seconds later (once the write would have ended), and none is
    there twice."""
    path = tmp_path / "ev.db"
    _slow_events(path)
    sink = wb.SQLiteSink(path, table="events")
    b = api(sink, max_batch=15, linger=0.01)
    driver = await b.__aenter__()
    receipts = [driver.add_nowait({"n": i, "at": "x"}) for i in range(15)]
    await asyncio.sleep(0.2)  # the write has started (it takes about a second)
    report = await driver.close(timeout=0.2)
    assert report.lost == 15
    await asyncio.sleep(4.0)
    in_table = _events(path)
    assert len(in_table) == len(set(in_table))
    lost = {i for i, r in enumerate(receipts) if r.outcome is wb.Outcome.LOST}
    assert lost
    assert not lost & set(in_table)


async def test_the_sink_thread_is_a_daemon(tmp_path: Path) -> None:
    """The sink's worker thread is a daemon: a hung write cannot hold up interpreter exit."""
    path = tmp_path / "ev.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE events (n INTEGER, at TEXT)")
    sink = wb.SQLiteSink(path, table="events")
    await sink.start()
    try:
        await sink.write([{"n": 1, "at": "x"}])
        mine = [t for t in threading.enumerate() if t.name.startswith("writebehind-sqlite")]
        assert mine
        assert all(t.daemon for t in mine)
    finally:
        await sink.close()


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


# -- the file deleted while in use (issue 9, item 15) -----------------------------------------
def _exists(path: Path) -> bool:
    return path.exists()


def _unlink(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_deleted_file_is_not_written_into(heartbeat_db: Path) -> None:
    """A database file deleted while the sink has it open is noticed at the next write,
    which fails (it used to commit into the unlinked file and report success); with the
    file gone the sink cannot take any record, so it is SinkMisconfigured."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        await sink.write([{"id": "a", "name": "x", "updated_at": 1}])
        _unlink(heartbeat_db)
        with pytest.raises(wb.RetriableSinkError, match="deleted or replaced"):
            await sink.write([{"id": "b", "name": "y", "updated_at": 1}])
        with pytest.raises(SinkMisconfigured, match="open"):
            await sink.write([{"id": "b", "name": "y", "updated_at": 1}])
        assert not _exists(heartbeat_db)  # not recreated empty
    finally:
        await sink.close()


async def test_replaced_file_is_reopened(api: Open, heartbeat_db: Path) -> None:
    """Records written after the file was deleted and created again land in the new file
    (the sink reopens it), none reported committed into the deleted one."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    policy = wb.RetryPolicy(base=0.05, cap=0.1, max_attempts=50)
    async with api(sink, key="id", version="updated_at", max_batch=1, retry=policy) as b:
        assert await b.outcome(await b.add({"id": "a", "name": "x", "updated_at": 1})) is (
            wb.Outcome.COMMITTED
        )
        _unlink(heartbeat_db)
        receipt = await b.add({"id": "b", "name": "y", "updated_at": 1})
        deadline = time.monotonic() + 5
        while b.stats().retried < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert b.stats().retried >= 2
        assert receipt.outcome is None  # not committed into the deleted file
        with sqlite3.connect(heartbeat_db) as c:
            c.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER)")
        assert await b.outcome(receipt) is wb.Outcome.COMMITTED
    assert rows(heartbeat_db) == {"b": ("y", 1)}


async def test_file_check_cost(heartbeat_db: Path) -> None:
    """The per-write check that the file is still the one opened (one ``os.stat``) costs a
    few microseconds at most (about 2 us measured), against a write's hundreds."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id")
    await sink.start()
    try:
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            assert not sink._moved()
        assert (time.perf_counter() - t0) / n < 50e-6
    finally:
        await sink.close()
