"""Hostile review of SQLiteSink's multi-row upserts (36942ed): statements of 256, 128, ...
rows within SQLite's parameter limit, and abandoned writes interrupted again every 20 ms
instead of a progress handler. Every test writes a real SQLite file; the lock holders and
the competing writers are real processes. A test marked xfail(strict) records a defect."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb

from .conftest import Open, rows
from .test_sqlite_faults import _slow_events

FAST = wb.RetryPolicy(base=0.01, cap=0.05, max_attempts=3)


def _table(path: Path, ddl: str) -> Path:
    with sqlite3.connect(path) as c:
        c.executescript(ddl)
    return path


async def _write(sink: wb.SQLiteSink, *batches: list[Any]) -> list[Any]:
    await sink.start()
    try:
        return [await sink.write(b) for b in batches]
    finally:
        await sink.close()


def _reference(ddl: str, table: str, key: str, version: str | None, batch: list[Any]) -> Any:
    """What one statement per row, in batch order, leaves (the executemany semantics)."""
    c = sqlite3.connect(":memory:")
    c.executescript(ddl)
    for r in batch:
        names = list(r)
        cols = ", ".join(names)
        marks = ", ".join("?" for _ in names)
        sets = ", ".join(f"{n} = excluded.{n}" for n in names if n != key)
        cond = f" WHERE {table}.{version} IS NULL OR excluded.{version} >= {table}.{version}"
        sql = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE "
        sql += f"SET {sets}" + (cond if version and version in names else "")
        c.execute(sql, list(r.values()))
    return sorted(c.execute(f"SELECT * FROM {table}"))


def _all(path: Path, table: str) -> list[Any]:
    with sqlite3.connect(path) as c:
        return sorted(c.execute(f"SELECT * FROM {table}"))


# -- the parameter limit ----------------------------------------------------------------
@pytest.mark.parametrize("width", [2, 100, 999, 2000])
async def test_wide_tables_every_row_written_once(tmp_path: Path, width: int) -> None:
    """Tables of up to SQLite's 2000 columns, batches that cross 999 and 32766 bound
    parameters at every power-of-two boundary: every row lands once, with its values."""
    cols = ", ".join(f"c{i} INTEGER" for i in range(1, width))
    path = _table(tmp_path / "w.db", f"CREATE TABLE w (id INTEGER PRIMARY KEY, {cols});")
    sizes = [1, 255, 256, 257, 511, 513] if width <= 100 else [1, 17, 257]
    sink = wb.SQLiteSink(path, table="w", key="id")
    base = 0
    batches = []
    for n in sizes:
        batches.append(
            [{"id": base + i, **{f"c{j}": base + i + j for j in range(1, width)}} for i in range(n)]
        )
        base += n
    await _write(sink, *batches)
    with sqlite3.connect(path) as c:
        got = c.execute("SELECT * FROM w ORDER BY id").fetchall()
    assert len(got) == base
    assert all(row == tuple(row[0] + j for j in range(width)) for row in got)


async def test_5000_rows_one_batch(tmp_path: Path) -> None:
    path = _table(tmp_path / "w.db", "CREATE TABLE w (id INTEGER PRIMARY KEY, v, s TEXT);")
    batch = [{"id": i, "v": i * 3, "s": f"s{i}"} for i in range(5000)]
    await _write(wb.SQLiteSink(path, table="w", key="id"), batch)
    assert _all(path, "w") == [(i, i * 3, f"s{i}") for i in range(5000)]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 64])
async def test_lowered_parameter_limit(heartbeat_db: Path, limit: int) -> None:
    """A connection allowing fewer parameters than one row has (limit 1, 2 for 3 columns):
    the write fails as a permanent error naming the limit, never silently short; at or
    above the width, every row lands."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        assert sink._conn is not None
        sink._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        sink._sql.fit(sink._conn)
        batch = [{"id": f"k{i}", "name": "x", "updated_at": i} for i in range(300)]
        if limit < 3:
            with pytest.raises(wb.PermanentSinkError, match="too many SQL variables"):
                await sink.write(batch)
        else:
            await sink.write(batch)
    finally:
        await sink.close()
    assert len(rows(heartbeat_db)) == (0 if limit < 3 else 300)


# -- ordering and versions ----------------------------------------------------------------
VDDL = "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, v INTEGER);"


@pytest.mark.parametrize("n", [2, 255, 256, 257, 513, 1500])
async def test_many_versions_of_few_keys_match_one_row_at_a_time(tmp_path: Path, n: int) -> None:
    """Few keys, many versions each (older after newer, equal versions, None versions),
    in one batch straddling statement boundaries: the table equals what one statement per
    row, in order, leaves."""
    rng = random.Random(n)
    batch = [
        {"id": f"k{rng.randrange(5)}", "name": f"r{i}", "v": rng.choice([None, *range(8)])}
        for i in range(n)
    ]
    path = _table(tmp_path / "t.db", VDDL)
    await _write(wb.SQLiteSink(path, table="t", key="id", version="v"), batch)
    assert _all(path, "t") == _reference(VDDL, "t", "id", "v", batch)


async def test_equal_versions_later_wins_across_statement_boundary(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.db", VDDL)
    batch = [{"id": f"x{i}", "name": "f", "v": 0} for i in range(255)]
    batch += [{"id": "a", "name": "first", "v": 7}, {"id": "a", "name": "second", "v": 7}]
    await _write(wb.SQLiteSink(path, table="t", key="id", version="v"), batch)
    assert rows(path, "t")["a"] == ("second", 7)


async def test_same_key_two_shapes_later_record_wins(tmp_path: Path) -> None:
    """Without a version, "the later write wins" (_upsert). A batch holding one key in two
    record shapes (a field present in one, absent in the other) was written shape by shape,
    so the first record, in the shape written last, overwrote the later one. Now the newest
    record of the key is written and the older ones are not (docs/guide.md, "Did the row
    change?"): the third, alone (its shape has no "extra")."""
    ddl = "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, extra INTEGER);"
    path = _table(tmp_path / "t.db", ddl)
    batch: list[dict[str, Any]] = [
        {"id": "a", "name": "first"},
        {"id": "a", "name": "second", "extra": 2},
        {"id": "a", "name": "third"},
    ]
    await _write(wb.SQLiteSink(path, table="t", key="id"), batch)
    assert rows(path, "t")["a"] == ("third", None)


async def test_mixed_number_versions_in_one_batch(tmp_path: Path) -> None:
    """int, float, bool and Decimal versions of one key in one batch order as in Python."""
    ddl = "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, v NUMERIC);"
    path = _table(tmp_path / "t.db", ddl)
    vs: list[Any] = [3, 2.5, True, decimal.Decimal("3.25"), 4, decimal.Decimal("3.5"), 3.9]
    batch = [{"id": "a", "name": f"n{i}", "v": v} for i, v in enumerate(vs)]
    batch = [{"id": f"p{i}", "name": "p", "v": 0} for i in range(254)] + batch
    await _write(wb.SQLiteSink(path, table="t", key="id", version="v"), batch)
    assert rows(path, "t")["a"] == ("n4", 4)


@pytest.mark.parametrize("at", [254, 255, 256, 257, 511, 512])
async def test_stale_at_statement_boundaries(tmp_path: Path, at: int) -> None:
    """report_stale with a stale row and an in-batch superseded row at each boundary."""
    path = _table(tmp_path / "t.db", VDDL)
    with sqlite3.connect(path) as c:
        c.execute("INSERT INTO t VALUES (?, 'newer', 100)", (f"k{at}",))
    batch = [{"id": f"k{i}", "name": "x", "v": 1} for i in range(600)]
    batch.append({"id": f"k{at + 1}", "name": "y", "v": 5})  # supersedes row at + 1
    sink = wb.SQLiteSink(path, table="t", key="id", version="v", report_stale=True)
    (result,) = await _write(sink, batch)
    assert result is not None
    assert list(result.stale) == [at, at + 1]
    got = rows(path, "t")
    assert got[f"k{at}"] == ("newer", 100)
    assert got[f"k{at + 1}"] == ("y", 5)
    assert len(got) == 600


async def test_increment_duplicate_keys_exact_sums(tmp_path: Path) -> None:
    ddl = "CREATE TABLE c (id TEXT PRIMARY KEY, views INTEGER, name TEXT, v INTEGER);"
    path = _table(tmp_path / "c.db", ddl)
    rng = random.Random(5)
    batch: list[dict[str, Any]] = [
        {"id": f"k{rng.randrange(7)}", "views": rng.randrange(-5, 1000), "name": f"n{i}",
         "v": rng.randrange(10)}
        for i in range(1300)
    ]  # fmt: skip
    sink = wb.SQLiteSink(path, table="c", key="id", version="v", increment=("views",))
    await _write(sink, batch, batch[:300])
    expect: dict[str, int] = {}
    for r in batch + batch[:300]:
        expect[r["id"]] = expect.get(r["id"], 0) + r["views"]
    got = {k: v[0] for k, v in rows(path, "c").items()}
    assert got == expect
    # the name follows the newest version (equal: later), sequentially
    best: dict[str, tuple[int, str]] = {}
    for r in batch + batch[:300]:
        if r["id"] not in best or r["v"] >= best[r["id"]][0]:
            best[r["id"]] = (r["v"], r["name"])
    assert {k: (v[1], v[2]) for k, v in rows(path, "c").items()} == {
        k: (n, v) for k, (v, n) in best.items()
    }


async def test_increment_overflow_mid_batch_names_column_writes_nothing(tmp_path: Path) -> None:
    ddl = "CREATE TABLE c (id TEXT PRIMARY KEY, views INTEGER);"
    path = _table(tmp_path / "c.db", ddl)
    batch = [{"id": "a", "views": 1} for _ in range(300)]
    batch[280]["views"] = 2**63 - 100
    sink = wb.SQLiteSink(path, table="c", key="id", increment=("views",))
    await sink.start()
    try:
        with pytest.raises(wb.PermanentSinkError, match="increment column 'views'"):
            await sink.write(batch)
    finally:
        await sink.close()
    assert rows(path, "c") == {}


# -- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [object(), {1, 2}], ids=["object", "set"])
async def test_unbindable_value_is_isolated_by_the_batcher(tmp_path: Path, bad: Any) -> None:
    path = _table(tmp_path / "t.db", VDDL)
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.SQLiteSink(path, table="t", key="id", version="v")
    b = wb.AsyncBatcher(sink, key="id", version="v", max_batch=500, retry=FAST,
                   dead_letter=letters.extend)  # fmt: skip
    await b.start()
    receipts = [b.add_nowait({"id": f"k{i}", "name": "x", "v": i}) for i in range(500)]
    receipts.append(b.add_nowait({"id": "bad", "name": bad, "v": 1}))
    receipts += [b.add_nowait({"id": f"z{i}", "name": "x", "v": i}) for i in range(100)]
    await b.close()
    outcomes = [r.outcome for r in receipts]
    assert outcomes.count(wb.Outcome.DEAD_LETTERED) == 1
    assert outcomes[500] is wb.Outcome.DEAD_LETTERED
    assert "name" in letters[0].message
    assert "bad" in letters[0].message
    assert len(rows(path, "t")) == 600


@pytest.mark.parametrize(
    "bad",
    [2**63, -(2**63) - 1, "\udc80"],
    ids=["int-too-big", "int-too-small", "lone-surrogate"],
)
async def test_overflowing_value_names_column_and_key(heartbeat_db: Path, bad: Any) -> None:
    batch: list[dict[str, Any]] = [
        {"id": f"k{i}", "name": "x", "updated_at": i} for i in range(500)
    ]
    batch[300]["name"] = bad
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    with pytest.raises(wb.PermanentSinkError) as err:
        await _write(sink, batch)
    assert rows(heartbeat_db) == {}
    assert "'name'" in str(err.value)
    assert "k300" in str(err.value)


async def test_overflowing_value_still_isolated_by_the_batcher(heartbeat_db: Path) -> None:
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    b = wb.AsyncBatcher(sink, key="id", version="updated_at", max_batch=500, retry=FAST,
                   dead_letter=letters.extend)  # fmt: skip
    await b.start()
    receipts = [b.add_nowait({"id": f"k{i}", "name": "x", "updated_at": i}) for i in range(500)]
    receipts.insert(257, b.add_nowait({"id": "bad", "name": 2**64, "updated_at": 10**6}))
    await b.close()
    outcomes = [r.outcome for r in receipts]
    assert [i for i, o in enumerate(outcomes) if o is not wb.Outcome.COMMITTED] == [257]
    assert outcomes[257] is wb.Outcome.DEAD_LETTERED
    assert len(letters) == 1
    assert letters[0].record["id"] == "bad"
    got = rows(heartbeat_db)
    assert len(got) == 500
    assert "bad" not in got


async def test_not_null_violation_mid_chunk_rolls_back_then_isolated(heartbeat_db: Path) -> None:
    """A NULL in a NOT NULL column in the second statement of a batch: the direct write
    leaves nothing; through the batcher, only that record is dead-lettered."""
    with sqlite3.connect(heartbeat_db) as c:
        c.execute("DROP TABLE agents")
        c.execute(
            "CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT NOT NULL, updated_at INTEGER)"
        )
    batch: list[dict[str, Any]] = [
        {"id": f"k{i}", "name": "x", "updated_at": i} for i in range(500)
    ]
    batch[300]["name"] = None
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    with pytest.raises(wb.PermanentSinkError, match="NOT NULL"):
        await _write(sink, batch)
    assert rows(heartbeat_db) == {}
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    b = wb.AsyncBatcher(sink, key="id", version="updated_at", max_batch=500, retry=FAST,
                   dead_letter=letters.extend)  # fmt: skip
    await b.start()
    receipts = [b.add_nowait(r) for r in batch]
    await b.close()
    assert [i for i, r in enumerate(receipts) if r.outcome is not wb.Outcome.COMMITTED] == [300]
    assert len(rows(heartbeat_db)) == 499


async def test_value_types_round_trip(tmp_path: Path) -> None:
    ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, a, b, c, d, e, f, g, h);"
    path = _table(tmp_path / "t.db", ddl)
    big = "x" * (1 << 20)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6)
    u = uuid.UUID(int=7)
    batch: list[dict[str, Any]] = [
        {"id": i, "a": b"\x00\xff" * 10, "b": big if i % 100 == 0 else "s", "c": math.inf,
         "d": -math.inf, "e": True, "f": None, "g": u, "h": 1.5}
        for i in range(600)
    ]  # fmt: skip
    batch[3]["c"] = math.nan
    batch[4]["g"] = when
    await _write(wb.SQLiteSink(path, table="t", key="id"), batch)
    got = {r[0]: r[1:] for r in _all(path, "t")}
    assert len(got) == 600
    assert got[0][1] == big
    assert got[1][1] == "s"
    assert got[5][:2] == (b"\x00\xff" * 10, "s")
    assert got[5][2:6] == (math.inf, -math.inf, 1, None)
    assert got[3][2] is None  # SQLite stores NaN as NULL, as executemany would
    assert got[5][6] == str(u)


# -- abandon / interrupt -------------------------------------------------------------------
_HOLDER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("ROLLBACK")
"""


def _hold_lock(path: Path, seconds: float, code: str = _HOLDER) -> subprocess.Popen[str]:
    """Start a process that locks ``path`` (``code``) and return once it holds the lock."""
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "locked"
    return p


async def test_write_stuck_behind_exclusive_lock_is_abandoned_and_retried(
    heartbeat_db: Path,
) -> None:
    """Another process holds BEGIN EXCLUSIVE for 1.5 s; write_timeout 0.2 s: the write is
    abandoned, its thread ends, and the retry commits every record exactly once after the
    lock is released."""
    with sqlite3.connect(heartbeat_db) as c:
        c.execute("PRAGMA journal_mode=WAL")
    holder = _hold_lock(heartbeat_db, 1.5)
    try:
        sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
        policy = wb.RetryPolicy(base=0.05, cap=0.1, max_attempts=60)
        b = wb.AsyncBatcher(sink, key="id", version="updated_at", max_batch=5000,
                       write_timeout=0.2, retry=policy)  # fmt: skip
        await b.start()
        receipts = [
            b.add_nowait({"id": f"k{i}", "name": "x", "updated_at": i}) for i in range(3000)
        ]
        t0 = time.monotonic()
        await b.close(timeout=20)
        assert time.monotonic() - t0 < 15
        assert {r.outcome for r in receipts} == {wb.Outcome.COMMITTED}
    finally:
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert len(rows(heartbeat_db)) == 3000


async def test_close_deadline_during_a_big_write_nothing_lost_is_committed(
    api: Open, tmp_path: Path
) -> None:
    """A 5000-row write into a table with a slow trigger is running at the close deadline:
    close returns within its deadline plus the grace; the records reported LOST are not in
    the table seconds later; a new sink on the file writes normally."""
    path = tmp_path / "ev.db"
    _table(
        path,
        """
        CREATE TABLE pad (n INTEGER);
        WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 300)
            INSERT INTO pad SELECT n FROM r;
        CREATE TABLE events (n INTEGER PRIMARY KEY, at TEXT);
        CREATE TRIGGER slow AFTER INSERT ON events BEGIN
            SELECT count(*) FROM pad a, pad b WHERE (a.n * b.n) % 7 = 3;
        END;
        """,
    )
    sink = wb.SQLiteSink(path, table="events", key="n")
    b = api(sink, key="n", max_batch=5000, linger=0.01, max_pending=10_000)
    driver = await b.__aenter__()
    receipts = [driver.add_nowait({"n": i, "at": "x"}) for i in range(5000)]
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    report = await driver.close(timeout=0.5)
    assert time.monotonic() - t0 < 0.5 + 1.5
    assert report.lost == 5000
    assert all(r.outcome is wb.Outcome.LOST for r in receipts)
    await asyncio.sleep(1.0)
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM events").fetchone() == (0,)
        c.execute("DROP TRIGGER slow")
    sink2 = wb.SQLiteSink(path, table="events", key="n")
    await _write(sink2, [{"n": i, "at": "y"} for i in range(10)])
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM events").fetchone() == (10,)


async def test_lock_released_as_the_reinterrupt_fires(heartbeat_db: Path) -> None:
    """Many rounds: a lock holder releases around when the write is abandoned. Whatever
    happens, the write's outcome matches the table: cancelled -> nothing; returned ->
    every row."""
    with sqlite3.connect(heartbeat_db) as c:
        c.execute("PRAGMA journal_mode=WAL")
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        for rnd in range(12):
            holder = sqlite3.connect(heartbeat_db, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")
            batch = [{"id": f"r{rnd}-{i}", "name": "x", "updated_at": i} for i in range(700)]
            task = asyncio.create_task(sink.write(batch))
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            loop.call_later(0.001 * rnd, holder.rollback)
            await asyncio.sleep(0.001 * (12 - rnd))
            task.cancel()
            try:
                await asyncio.wait_for(task, 5)
                written = True
            except asyncio.CancelledError:
                written = False
            await asyncio.sleep(0.02)
            holder.close()
            have = {k for k in rows(heartbeat_db) if k.startswith(f"r{rnd}-")}
            assert len(have) == (700 if written else 0), (rnd, written, len(have))
        await sink.write([{"id": "after", "name": "x", "updated_at": 1}])
    finally:
        await sink.close()
    assert rows(heartbeat_db)["after"] == ("x", 1)


# -- concurrency ---------------------------------------------------------------------------
_WRITER = """
import asyncio, random, sys
import writebehind as wb
async def main(path, seed):
    rng = random.Random(int(seed))
    sink = wb.SQLiteSink(path, table="t", key="id", version="v", busy_timeout=30)
    await sink.start()
    try:
        for _ in range(15):
            batch = [{"id": "k%d" % rng.randrange(300), "name": seed, "v": rng.randrange(10**6)}
                     for _ in range(400)]
            await sink.write(batch)
            for r in batch:
                print(r["id"], r["v"], flush=False)
    finally:
        await sink.close()
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_two_processes_overlapping_keys_newest_version_wins(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.db", VDDL)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, str(path), str(seed),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for seed in (1, 2)
    ]  # fmt: skip
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 50)
    assert [p.returncode for p in procs] == [0, 0], [err.decode()[-2000:] for _, err in outs]
    newest: dict[str, int] = {}
    for out, _ in outs:
        for line in out.decode().split("\n"):
            if line:
                k, v = line.split()
                newest[k] = max(newest.get(k, -1), int(v))
    got = rows(path, "t")
    assert {k: v[1] for k, v in got.items()} == newest


async def test_write_timeout_racing_the_commit_outcomes_match_the_table(tmp_path: Path) -> None:
    """Keyless writes that take about as long as write_timeout, so the timeout lands before,
    during and after the commit: every record COMMITTED is in the table exactly once, every
    other one is not there at all (no duplicate from a timed-out write that committed)."""
    path = tmp_path / "ev.db"
    _slow_events(path, 120)
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.SQLiteSink(path, table="events")
    policy = wb.RetryPolicy(base=0.001, cap=0.002, max_attempts=2)
    b = wb.AsyncBatcher(sink, max_batch=40, linger=0.001, write_timeout=0.07, retry=policy,
                        dead_letter=letters.extend)  # fmt: skip
    await b.start()
    receipts = []
    for i in range(1200):
        receipts.append(await b.add({"n": i, "at": "x"}))
        if i % 40 == 39:
            await asyncio.sleep(random.Random(i).random() * 0.02)
    await b.close(timeout=30)
    await asyncio.sleep(0.5)
    with sqlite3.connect(path) as c:
        stored = [n for (n,) in c.execute("SELECT n FROM events")]
    assert len(stored) == len(set(stored)), "a record written twice"
    committed = {i for i, r in enumerate(receipts) if r.outcome is wb.Outcome.COMMITTED}
    assert set(stored) == committed


async def test_close_deadline_while_waiting_on_another_process_lock(heartbeat_db: Path) -> None:
    """busy_timeout 30 s, another process holds BEGIN EXCLUSIVE for 4 s: close(0.3) returns
    within its deadline plus the grace (the sliced busy wait sees the abandon), the records
    are LOST and not in the table once the lock is gone, and a later batcher writes."""
    with sqlite3.connect(heartbeat_db) as c:
        c.execute("PRAGMA journal_mode=WAL")
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at",
                         busy_timeout=30)  # fmt: skip
    b = wb.AsyncBatcher(sink, key="id", version="updated_at", max_batch=600, linger=0.01)
    await b.start()
    holder = _hold_lock(heartbeat_db, 4)
    try:
        receipts = [b.add_nowait({"id": f"k{i}", "name": "x", "updated_at": i}) for i in range(600)]
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        report = await b.close(timeout=0.3)
        assert time.monotonic() - t0 < 0.3 + 1.5
        assert report.lost == 600
        assert {r.outcome for r in receipts} == {wb.Outcome.LOST}
    finally:
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()
    assert rows(heartbeat_db) == {}
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    async with wb.AsyncBatcher(sink, key="id", version="updated_at") as b2:
        r = b2.add_nowait({"id": "later", "name": "y", "updated_at": 1})
    assert r.outcome is wb.Outcome.COMMITTED
    assert rows(heartbeat_db) == {"later": ("y", 1)}


_REPLACE_AND_LOCK = """
import os, sqlite3, sys, time
path, tmp = sys.argv[1], sys.argv[1] + ".new"
c = sqlite3.connect(tmp)
c.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER NOT NULL)")
c.commit()
c.close()
os.replace(tmp, path)  # a restore from backup, in rollback-journal mode
c = sqlite3.connect(path, isolation_level=None)
c.execute("BEGIN EXCLUSIVE")  # the restoring tool still holds its exclusive lock
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("ROLLBACK")
"""


async def test_close_deadline_with_the_file_replaced_and_locked(tmp_path: Path) -> None:
    """The database file is replaced (a restore) while the sink has it open, and the new
    file is held under BEGIN EXCLUSIVE by another process: a write in flight does not hold
    close() past its deadline, and the record is LOST, not in the new file."""
    path = _table(
        tmp_path / "hb.db",
        "CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT, updated_at INTEGER NOT NULL);",
    )
    sink = wb.SQLiteSink(path, table="agents", key="id", version="updated_at", busy_timeout=6)
    b = wb.AsyncBatcher(sink, key="id", version="updated_at", max_batch=100, linger=0.01,
                        retry=wb.RetryPolicy(base=0.01, cap=0.02, max_attempts=100))  # fmt: skip
    await b.start()
    await b.add({"id": "first", "name": "x", "updated_at": 1})
    await b.flush()
    p = _hold_lock(path, 8, _REPLACE_AND_LOCK)
    try:
        second = b.add_nowait({"id": "second", "name": "x", "updated_at": 2})
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await asyncio.wait_for(b.close(timeout=0.3), 20)
        elapsed = time.monotonic() - t0
    finally:
        p.kill()
        p.wait()
        assert p.stdout is not None
        p.stdout.close()
    assert elapsed < 0.3 + 1.5, elapsed
    assert second.outcome is wb.Outcome.LOST
    assert "second" not in rows(path)


async def test_keyless_batcher_same_key_two_shapes_later_record_wins(tmp_path: Path) -> None:
    ddl = "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, extra INTEGER);"
    path = _table(tmp_path / "t.db", ddl)
    sink = wb.SQLiteSink(path, table="t", key="id")
    b = wb.AsyncBatcher(sink, max_batch=10, linger=3600)
    await b.start()
    receipts = [
        b.add_nowait({"id": "a", "name": "first"}),
        b.add_nowait({"id": "a", "name": "second", "extra": 2}),
        b.add_nowait({"id": "a", "name": "third"}),
    ]
    await b.close()
    assert {r.outcome for r in receipts} == {wb.Outcome.COMMITTED}
    assert rows(path, "t")["a"] == ("third", None)  # the newest record; the others not written


@pytest.mark.parametrize("at", [255, 256, 257])
async def test_stale_two_shapes_interleaved_across_boundaries(tmp_path: Path, at: int) -> None:
    """report_stale with two record shapes interleaved (each group > 256 rows): the stale
    rows are reported by their batch index, whichever group and statement they were in."""
    ddl = "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, extra INTEGER, v INTEGER);"
    path = _table(tmp_path / "t.db", ddl)
    stale = {at, 2 * at, 2 * at + 1, 700}
    with sqlite3.connect(path) as c:
        c.executemany("INSERT INTO t VALUES (?, 'newer', 0, 100)", [(f"k{i}",) for i in stale])
    batch: list[dict[str, Any]] = []
    for i in range(800):
        r: dict[str, Any] = {"id": f"k{i}", "name": "x", "v": 1}
        if i % 2:
            r["extra"] = i
        batch.append(r)
    sink = wb.SQLiteSink(path, table="t", key="id", version="v", report_stale=True)
    (result,) = await _write(sink, batch)
    assert result is not None
    assert list(result.stale) == sorted(stale)
    got = rows(path, "t")
    assert len(got) == 800
    assert all(got[f"k{i}"] == ("newer", 0, 100) for i in stale)
    assert got["k3"] == ("x", 3, 1)
    assert got["k4"] == ("x", None, 1)


async def test_two_sinks_one_process_overlapping_keys_newest_wins(tmp_path: Path) -> None:
    """Two batchers (each its own sink, connection and thread) in one process, writing the
    same keys with random versions at once: every key holds its newest version."""
    path = _table(tmp_path / "t.db", VDDL)
    rng = random.Random(11)
    newest: dict[str, int] = {}
    batchers = [
        wb.AsyncBatcher(wb.SQLiteSink(path, table="t", key="id", version="v"), key="id",
                        version="v", max_batch=300, linger=0.001)
        for _ in range(2)
    ]  # fmt: skip
    for b in batchers:
        await b.start()
    for i in range(6000):
        k, v = f"k{rng.randrange(200)}", rng.randrange(10**6)
        newest[k] = max(newest.get(k, -1), v)
        await batchers[i % 2].add({"id": k, "name": str(i), "v": v})
    for b in batchers:
        await b.close(timeout=30)
    assert {k: r[1] for k, r in rows(path, "t").items()} == newest


async def test_aware_datetime_versions_in_many_zones_across_boundaries(tmp_path: Path) -> None:
    """Aware datetime versions in several time zones for few keys, shuffled, 700 rows in
    one batch: each key holds the row with its latest instant (equal instants: the later
    record), as Python orders them."""
    ddl = "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, v TEXT);"
    path = _table(tmp_path / "t.db", ddl)
    rng = random.Random(2)
    base = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    zones = [dt.timezone(dt.timedelta(hours=h)) for h in (-11, -3, 0, 5, 14)]
    batch: list[dict[str, Any]] = [
        {"id": f"k{rng.randrange(4)}", "name": f"n{i}",
         "v": (base + dt.timedelta(minutes=rng.randrange(600))).astimezone(rng.choice(zones))}
        for i in range(700)
    ]  # fmt: skip
    await _write(wb.SQLiteSink(path, table="t", key="id", version="v"), batch)
    best: dict[str, tuple[dt.datetime, str]] = {}
    for r in batch:
        if r["id"] not in best or r["v"] >= best[r["id"]][0]:
            best[r["id"]] = (r["v"], r["name"])
    assert {k: r[0] for k, r in rows(path, "t").items()} == {k: n for k, (_, n) in best.items()}


async def test_composite_key_without_rowid_stale_across_boundaries(tmp_path: Path) -> None:
    ddl = (
        "CREATE TABLE t (a INTEGER, b TEXT, name TEXT, v INTEGER, PRIMARY KEY (a, b))"
        " WITHOUT ROWID;"
    )
    path = _table(tmp_path / "t.db", ddl)
    stale = [0, 255, 256, 511, 512, 699]
    with sqlite3.connect(path) as c:
        c.executemany("INSERT INTO t VALUES (?, ?, 'newer', 50)", [(i, f"b{i % 3}") for i in stale])
    batch = [{"a": i, "b": f"b{i % 3}", "name": "x", "v": 7} for i in range(700)]
    sink = wb.SQLiteSink(path, table="t", key=("a", "b"), version="v", report_stale=True)
    (result,) = await _write(sink, batch)
    assert result is not None
    assert list(result.stale) == stale
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*), sum(name = 'newer') FROM t").fetchone() == (700, 6)
