"""SQLiteSink's multi-row statements (``_sqlite_batch``): a batch is sent as statements of a
power-of-two number of rows, which must write exactly what one statement per row wrote."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.sinks._sqlite_thread import Job

from .conftest import rows
from .test_sqlite_faults import _cancel_a_write, _events, _slow_events


async def _write(sink: wb.SQLiteSink, batch: list[Any]) -> Any:
    await sink.start()
    try:
        return await sink.write(batch)
    finally:
        await sink.close()


async def test_one_key_many_times_in_one_batch_keeps_the_newest(heartbeat_db: Path) -> None:
    """600 versions of one key, shuffled, in one batch (statements of 256, 256, 64, 16 and
    8 rows): the rows are applied one by one, in order, so the newest version is left, as
    one statement per row left it."""
    versions = list(range(600))
    random.Random(3).shuffle(versions)
    batch = [{"id": "a", "name": f"v{v}", "updated_at": v} for v in versions]
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await _write(sink, batch)
    assert rows(heartbeat_db) == {"a": ("v599", 599)}


async def test_stale_rows_are_found_across_statements(heartbeat_db: Path) -> None:
    """report_stale counts the rows each statement wrote: the skipped ones of a 700-row
    batch (in its second, third and last statements) are reported by batch index."""
    with sqlite3.connect(heartbeat_db) as c:
        c.executemany(
            "INSERT INTO agents VALUES (?, 'newer', 100)", [(f"k{i}",) for i in (300, 600, 699)]
        )
    batch = [{"id": f"k{i}", "name": "x", "updated_at": 1} for i in range(700)]
    sink = wb.SQLiteSink(
        heartbeat_db, table="agents", key="id", version="updated_at", report_stale=True
    )
    result = await _write(sink, batch)
    assert result is not None
    assert list(result.stale) == [300, 600, 699]
    stored = rows(heartbeat_db)
    assert len(stored) == 700
    assert stored["k600"] == ("newer", 100)
    assert stored["k5"] == ("x", 1)


async def test_a_value_that_cannot_be_bound_names_its_column_and_record(
    heartbeat_db: Path,
) -> None:
    """A value sqlite3 cannot bind, deep in a large batch, is a PermanentSinkError naming
    the column and the record's key (the statement's parameter number mapped back to its
    row), and nothing is written."""
    batch: list[dict[str, Any]] = [
        {"id": f"k{i}", "name": "x", "updated_at": i} for i in range(500)
    ]
    batch[300]["name"] = {1, 2}  # a set: no adapter, sqlite3 refuses to bind it
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    with pytest.raises(
        wb.PermanentSinkError, match=r"column 'name' of the record with key id='k300'"
    ):
        await _write(sink, batch)
    assert rows(heartbeat_db) == {}


async def test_statements_stay_within_the_limit_on_parameters(heartbeat_db: Path) -> None:
    """With a connection allowing few bound parameters, the statements hold fewer rows
    (3 values a row, at most 10 parameters: 2 rows a statement), and every row is written."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        assert sink._conn is not None
        sink._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 10)
        sink._sql.fit(sink._conn)
        assert sink._sql.most(3) == 2
        await sink.write([{"id": f"k{i}", "name": "x", "updated_at": i} for i in range(33)])
    finally:
        await sink.close()
    assert len(rows(heartbeat_db)) == 33


class _MissedInterrupt(wb.SQLiteSink):
    """Its first abandon marks the job without interrupting, as when ``interrupt()`` is
    made between two statements (no statement running: SQLite drops it)."""

    missed = False

    def _abandon(self, job: Job) -> None:
        if not self.missed:
            self.missed = True
            job.abandoned = True
            return
        super()._abandon(job)


async def test_an_interrupt_made_between_statements_is_made_again(tmp_path: Path) -> None:
    """An abandoned write whose first interrupt missed (made while no statement ran) is
    interrupted again while the awaiter waits for its thread: the cancellation returns
    promptly and nothing is written (without a progress handler, the statement would run
    to its end, seconds later)."""
    path = tmp_path / "ev.db"
    _slow_events(path)
    sink = _MissedInterrupt(path, table="events")
    await sink.start()
    try:
        took = await _cancel_a_write(sink)
        assert sink.missed
        assert took < 0.5
    finally:
        await sink.close()
    assert _events(path) == []
