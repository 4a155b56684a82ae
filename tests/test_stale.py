"""``Outcome.STALE`` end to end (issue 15, "Did the row change?"): a record whose write
changed nothing, because the table already held its key at a newer version, resolves
``STALE`` (counted in ``committed`` and in ``stale``), against the real PostgreSQL (both
drivers, the ``unnest`` statement and the COPY/staging merge) and a real SQLite file, with
both APIs; an equal version overwrites (``COMMITTED``); a sink that reports nothing
(``report_stale=False``, a user's callable) still says ``COMMITTED``."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb

from .pg import DSN, connect

OC = wb.Outcome
pytestmark = pytest.mark.server

# (driver, method, records per batch): the asyncpg unnest statement, asyncpg's staging
# merge, psycopg's COPY + merge (>= 16 records), psycopg's one unnest statement (< 16)
PG_PATHS = [
    ("asyncpg", "auto", 4),
    ("asyncpg", "copy", 4),
    ("psycopg", "auto", 40),
    ("psycopg", "auto", 4),
]


@pytest.fixture
async def pg_table() -> AsyncIterator[str]:
    """A fresh table ``(id text PRIMARY KEY, v int, note text CHECK (note <> 'poison'))``."""
    conn = await connect()
    name = f"stale_{uuid.uuid4().hex[:12]}"
    await conn.execute(
        f"CREATE TABLE {name} (id text PRIMARY KEY, v int, note text CHECK (note <> 'poison'))"
    )
    try:
        yield name
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.close()


async def _pg_seed(table: str, rows: list[tuple[str, int, str]]) -> None:
    conn = await connect()
    try:
        await conn.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)", rows)
    finally:
        await conn.close()


async def _pg_rows(table: str) -> dict[str, tuple[int, str]]:
    conn = await connect()
    try:
        return {r["id"]: (r["v"], r["note"]) for r in await conn.fetch(f"SELECT * FROM {table}")}
    finally:
        await conn.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "stale.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER, note TEXT CHECK (note <> 'poison'))"
    )
    conn.commit()
    conn.close()
    return path


def _sq_seed(path: Path, rows: list[tuple[str, int, str]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)


def _sq_rows(path: Path) -> dict[str, tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return {k: (v, n) for k, v, n in conn.execute("SELECT id, v, note FROM t")}


def _pg_sink(table: str, driver: str = "asyncpg", method: str = "auto", **kw: Any) -> Any:
    kw.setdefault("report_stale", True)
    return wb.PostgresSink(
        DSN, table=table, key="id", version="v", driver=driver, method=method, **kw
    )


async def _one_batch(
    sink: Any, records: list[dict[str, Any]], **kw: Any
) -> tuple[list[Any], tuple[wb.Stats, list[wb.BatchCommitted]]]:
    """``records`` added and flushed as one batch: their outcomes, the stats, and the
    ``BatchCommitted`` events (read after close, up to ``Closed``)."""
    async with wb.AsyncBatcher(sink, key="id", version="v", linger=60, **kw) as b:
        receipts = [await b.add(r) for r in records]
        await b.flush()
        outcomes = [await r for r in receipts]
        stats = b.stats()
    committed = [e async for e in b.events(since=0) if isinstance(e, wb.BatchCommitted)]
    return outcomes, (stats, committed)


def _check_conserved(s: wb.Stats) -> None:
    total = s.committed + s.coalesced + s.dead_lettered + s.dropped + s.pending + s.in_flight
    assert s.accepted == total, s
    assert 0 <= s.stale <= s.committed, s


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.parametrize(("driver", "method", "size"), PG_PATHS)
async def test_pg_an_older_version_after_a_newer_one_is_stale(
    pg_table: str, driver: str, method: str, size: int
) -> None:
    """The table holds a at v10; a record with v5 changes nothing: STALE, stale == 1, the
    row untouched; fresh rows of the same batch COMMITTED; the event counts it."""
    await _pg_seed(pg_table, [("a", 10, "kept"), ("b", 10, "old")])
    records = [{"id": "a", "v": 5, "note": "older"}, {"id": "b", "v": 11, "note": "newer"}]
    records += [{"id": f"x{i}", "v": 1, "note": "fresh"} for i in range(size - 2)]
    outcomes, (stats, events) = await _one_batch(_pg_sink(pg_table, driver, method), records)
    assert outcomes == [OC.STALE] + [OC.COMMITTED] * (size - 1)
    assert stats.stale == 1, stats
    assert stats.committed == size, stats
    assert [(e.size, e.stale) for e in events] == [(size, 1)]
    _check_conserved(stats)
    rows = await _pg_rows(pg_table)
    assert rows["a"] == (10, "kept")
    assert rows["b"] == (11, "newer")
    assert len(rows) == size


@pytest.mark.parametrize(("driver", "method", "size"), PG_PATHS)
async def test_pg_an_equal_version_overwrites_and_is_committed(
    pg_table: str, driver: str, method: str, size: int
) -> None:
    """Ties overwrite (``>=``: a replay writes identical data), so the row changed (or was
    rewritten as it was): COMMITTED, never STALE."""
    await _pg_seed(pg_table, [("a", 10, "before")])
    records = [{"id": "a", "v": 10, "note": "same version"}]
    records += [{"id": f"x{i}", "v": 1, "note": "fresh"} for i in range(size - 1)]
    outcomes, (stats, _) = await _one_batch(_pg_sink(pg_table, driver, method), records)
    assert outcomes == [OC.COMMITTED] * size
    assert stats.stale == 0, stats
    assert (await _pg_rows(pg_table))["a"] == (10, "same version")


@pytest.mark.parametrize(("driver", "method", "size"), PG_PATHS)
async def test_pg_a_batch_mixing_fresh_and_stale_rows(
    pg_table: str, driver: str, method: str, size: int
) -> None:
    """Every other row of one batch is stale, in any order of keys: exactly those are STALE."""
    await _pg_seed(pg_table, [(f"k{i:02}", 100, "newer") for i in range(0, size, 2)])
    records = [{"id": f"k{i:02}", "v": 50, "note": "batch"} for i in reversed(range(size))]
    outcomes, (stats, events) = await _one_batch(_pg_sink(pg_table, driver, method), records)
    want = [OC.STALE if int(r["id"][1:]) % 2 == 0 else OC.COMMITTED for r in records]
    assert outcomes == want
    assert stats.stale == (size + 1) // 2 == sum(e.stale for e in events), stats
    rows = await _pg_rows(pg_table)
    assert all(rows[f"k{i:02}"] == ((100, "newer") if i % 2 == 0 else (50, "batch"))
               for i in range(size))  # fmt: skip


async def test_pg_sync_batcher_reports_stale(pg_table: str) -> None:
    """The sync ``Batcher`` (its loop in a thread) gives the same outcome."""
    await _pg_seed(pg_table, [("agent-1", 9, "newer")])

    def run() -> tuple[OC, OC, wb.Stats]:
        with wb.Batcher(_pg_sink(pg_table), key="id", version="v") as batcher:
            old = batcher.add({"id": "agent-1", "v": 7, "note": "older"})
            new = batcher.add({"id": "agent-2", "v": 7, "note": "up"})
            batcher.flush()
            return old.result(timeout=10), new.result(timeout=10), batcher.stats()

    old, new, stats = await asyncio.to_thread(run)
    assert (old, new) == (OC.STALE, OC.COMMITTED)
    assert stats.stale == 1, stats
    assert stats.committed == 2, stats


@pytest.mark.parametrize(("driver", "method", "size"), PG_PATHS)
async def test_pg_split_batch_with_a_poison_record_and_a_stale_one(
    pg_table: str, driver: str, method: str, size: int
) -> None:
    """A CHECK violation splits the batch; each half reports its own stale rows: the poison
    record DEAD_LETTERED, the stale one STALE, the rest COMMITTED."""
    await _pg_seed(pg_table, [("s", 10, "newer")])
    records = [{"id": f"x{i:02}", "v": 1, "note": "fresh"} for i in range(size)]
    records[1] = {"id": "p", "v": 1, "note": "poison"}
    records[-1] = {"id": "s", "v": 3, "note": "older"}
    outcomes, (stats, events) = await _one_batch(_pg_sink(pg_table, driver, method), records)
    want = [OC.COMMITTED] * size
    want[1], want[-1] = OC.DEAD_LETTERED, OC.STALE
    assert outcomes == want
    assert stats.splits >= 1, stats
    assert stats.dead_lettered == 1, stats
    assert stats.stale == 1, stats
    assert stats.committed == size - 1, stats
    assert sum(e.stale for e in events) == 1
    _check_conserved(stats)
    assert (await _pg_rows(pg_table))["s"] == (10, "newer")


async def test_pg_direct_writes_report_stale(pg_table: str) -> None:
    """``when_full="direct"``: a record written alone, past a full buffer, still says STALE."""
    await _pg_seed(pg_table, [("a", 10, "newer")])
    async with wb.AsyncBatcher(
        _pg_sink(pg_table), key="id", version="v", max_batch=1, max_pending=1, linger=60,
        when_full="direct",
    ) as b:  # fmt: skip
        first = await b.add({"id": "z", "v": 1, "note": "fills the buffer"})
        direct = await b.add({"id": "a", "v": 2, "note": "older, written directly"})
        assert await direct is OC.STALE
        await b.flush()
        assert await first is OC.COMMITTED
        stats = b.stats()
    assert stats.stale == 1, stats
    assert stats.committed == 2, stats
    _check_conserved(stats)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pg_duplicates_in_one_batch_leave_the_older_stale(pg_table: str, driver: str) -> None:
    """Used behind a batcher that does not coalesce (no key), a batch may hold one key twice:
    PostgreSQL writes only the newest, and the older one changed nothing: STALE."""
    sink = _pg_sink(pg_table, driver)
    async with wb.AsyncBatcher(sink, linger=60) as b:
        r = [await b.add({"id": "a", "v": v, "note": f"v{v}"}) for v in (1, 3, 2)]
        r += [await b.add({"id": f"x{i}", "v": 1, "note": "fresh"}) for i in range(20)]
        await b.flush()
        assert [await x for x in r[:3]] == [OC.STALE, OC.COMMITTED, OC.STALE]
        assert b.stats().stale == 2
    assert (await _pg_rows(pg_table))["a"] == (3, "v3")


async def test_pg_report_stale_is_off_by_default(pg_table: str) -> None:
    """Without ``report_stale=True`` the sink reports nothing: a skipped row reads
    COMMITTED (the documented default: reporting costs throughput)."""
    await _pg_seed(pg_table, [("a", 10, "kept")])
    sink = wb.PostgresSink(DSN, table=pg_table, key="id", version="v")
    assert sink.reports_stale is False
    outcomes, (stats, _) = await _one_batch(sink, [{"id": "a", "v": 5, "note": "older"}])
    assert outcomes == [OC.COMMITTED]
    assert stats.stale == 0
    assert (await _pg_rows(pg_table))["a"] == (10, "kept")


async def test_pg_records_of_several_shapes_map_back_to_their_receipts(pg_table: str) -> None:
    """Records with different fields are written one statement per shape; the stale ones
    are still found at their place in the batch."""
    await _pg_seed(pg_table, [("a", 10, "kept"), ("c", 10, "kept")])
    records: list[dict[str, Any]] = [
        {"id": "a", "v": 1},
        {"id": "b", "v": 1, "note": "fresh"},
        {"id": "c", "v": 2, "note": "older"},
        {"id": "d", "v": 1},
    ]
    outcomes, (stats, _) = await _one_batch(_pg_sink(pg_table), records)
    assert outcomes == [OC.STALE, OC.COMMITTED, OC.STALE, OC.COMMITTED]
    assert stats.stale == 2


# -- SQLite ---------------------------------------------------------------------------------


def _sq_sink(path: Path, **kw: Any) -> wb.SQLiteSink:
    kw.setdefault("report_stale", True)
    return wb.SQLiteSink(path, table="t", key="id", version="v", **kw)


async def test_sqlite_an_older_version_after_a_newer_one_is_stale(sqlite_db: Path) -> None:
    """One batcher writes v10, then v5 of the same key: STALE, the row keeps v10."""
    async with wb.AsyncBatcher(_sq_sink(sqlite_db), key="id", version="v", linger=60) as b:
        newer = await b.add({"id": "a", "v": 10, "note": "newer"})
        await b.flush()
        older = await b.add({"id": "a", "v": 5, "note": "older"})
        await b.flush()
        assert (await newer, await older) == (OC.COMMITTED, OC.STALE)
        assert older.result() is OC.STALE  # the receipt's own answer, once settled
        stats = b.stats()
    assert stats.stale == 1, stats
    assert stats.committed == 2, stats
    _check_conserved(stats)
    assert _sq_rows(sqlite_db)["a"] == (10, "newer")


async def test_sqlite_an_equal_version_overwrites_and_is_committed(sqlite_db: Path) -> None:
    _sq_seed(sqlite_db, [("a", 10, "before")])
    outcomes, (stats, _) = await _one_batch(
        _sq_sink(sqlite_db), [{"id": "a", "v": 10, "note": "same version"}]
    )
    assert outcomes == [OC.COMMITTED]
    assert stats.stale == 0
    assert _sq_rows(sqlite_db)["a"] == (10, "same version")


async def test_sqlite_a_batch_mixing_fresh_and_stale_rows(sqlite_db: Path) -> None:
    _sq_seed(sqlite_db, [(f"k{i:03}", 100, "newer") for i in range(0, 600, 3)])
    records = [{"id": f"k{i:03}", "v": 50, "note": "batch"} for i in reversed(range(600))]
    outcomes, (stats, events) = await _one_batch(_sq_sink(sqlite_db), records, max_batch=600)
    want = [OC.STALE if int(r["id"][1:]) % 3 == 0 else OC.COMMITTED for r in records]
    assert outcomes == want  # more than one lookup chunk (500 rows) deep
    assert stats.stale == 200 == sum(e.stale for e in events), stats
    rows = _sq_rows(sqlite_db)
    assert rows["k000"] == (100, "newer")
    assert rows["k001"] == (50, "batch")


async def test_sqlite_sync_batcher_reports_stale(sqlite_db: Path) -> None:
    """The README's sync example, as it really goes: the table held agent-1 at a newer
    version, so the add changed nothing."""
    _sq_seed(sqlite_db, [("agent-1", 9, "up")])

    def run() -> tuple[OC, wb.Stats]:
        with wb.Batcher(_sq_sink(sqlite_db), key="id", version="v") as batcher:
            receipt = batcher.add({"id": "agent-1", "v": 7, "note": "down"})
            batcher.flush()
            return receipt.result(timeout=10), batcher.stats()

    outcome, stats = await asyncio.to_thread(run)
    assert outcome is OC.STALE, stats
    assert stats.stale == 1, stats


async def test_sqlite_split_batch_with_a_poison_record_and_a_stale_one(sqlite_db: Path) -> None:
    _sq_seed(sqlite_db, [("s", 10, "newer")])
    records = [{"id": f"x{i}", "v": 1, "note": "fresh"} for i in range(8)]
    records[2] = {"id": "p", "v": 1, "note": "poison"}
    records[6] = {"id": "s", "v": 3, "note": "older"}
    outcomes, (stats, _) = await _one_batch(_sq_sink(sqlite_db), records)
    want = [OC.COMMITTED] * 8
    want[2], want[6] = OC.DEAD_LETTERED, OC.STALE
    assert outcomes == want
    assert stats.splits >= 1, stats
    assert stats.dead_lettered == 1, stats
    assert stats.stale == 1, stats
    _check_conserved(stats)


async def test_sqlite_null_and_converted_versions(tmp_path: Path) -> None:
    """Versions the sink converts (aware datetimes as UTC text) compare as the upsert does:
    an older instant in another offset is stale, a later one is not."""
    import datetime as dt

    path = tmp_path / "ts.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, at TIMESTAMP, note TEXT)")
    sink = wb.SQLiteSink(path, table="t", key="id", version="at", report_stale=True)
    utc = dt.UTC
    plus2 = dt.timezone(dt.timedelta(hours=2))
    async with wb.AsyncBatcher(sink, key="id", version="at", linger=60) as b:
        await b.add({"id": "a", "at": dt.datetime(2026, 1, 1, 12, tzinfo=utc), "note": "noon"})
        await b.flush()
        older = await b.add({"id": "a", "at": dt.datetime(2026, 1, 1, 13, tzinfo=plus2)})
        await b.flush()
        newer = await b.add({"id": "a", "at": dt.datetime(2026, 1, 1, 15, tzinfo=plus2)})
        await b.flush()
        assert (await older, await newer) == (OC.STALE, OC.COMMITTED)


async def test_sqlite_keys_of_another_type_than_the_column_are_found(tmp_path: Path) -> None:
    """An ``int`` key sent to a ``TEXT`` column is stored as text: the lookup of skipped
    rows compares with the column's affinity, as the upsert's conflict did."""
    path = tmp_path / "text_keys.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER, note TEXT)")
        conn.execute("INSERT INTO t VALUES ('1', 10, 'kept')")
    records = [{"id": 1, "v": 5, "note": "older"}, {"id": 2, "v": 1, "note": "new"}]
    outcomes, (stats, _) = await _one_batch(_sq_sink(path), records)
    assert outcomes == [OC.STALE, OC.COMMITTED]
    assert stats.stale == 1, stats
    assert _sq_rows(path) == {"1": (10, "kept"), "2": (1, "new")}


async def test_sqlite_duplicates_in_one_batch_leave_the_older_stale(sqlite_db: Path) -> None:
    """Behind a batcher that does not coalesce, one key three times in a batch: SQLite
    writes them in order and keeps the newest; the older ones changed nothing that stayed,
    so they are STALE, as PostgresSink says of them."""
    async with wb.AsyncBatcher(_sq_sink(sqlite_db), linger=60) as b:
        r = [await b.add({"id": "a", "v": v, "note": f"v{v}"}) for v in (2, 1, 3)]
        r.append(await b.add({"id": "b", "v": 1, "note": "fresh"}))
        await b.flush()
        assert [await x for x in r] == [OC.STALE, OC.STALE, OC.COMMITTED, OC.COMMITTED]
    assert _sq_rows(sqlite_db)["a"] == (3, "v3")


async def test_sqlite_a_wide_batch_is_looked_up_in_chunks(tmp_path: Path) -> None:
    """600 rows of 120 columns, one stale in the second lookup chunk (500 rows each):
    found at its place in the batch."""
    path = tmp_path / "wide.db"
    cols = [f"c{i}" for i in range(118)]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER, {', '.join(cols)})")
        conn.execute("INSERT INTO t (id, v) VALUES ('k0550', 9)")
    records = [{"id": f"k{i:04}", "v": 1, **dict.fromkeys(cols, i)} for i in range(600)]
    outcomes, (stats, _) = await _one_batch(_sq_sink(path), records, max_batch=600)
    assert outcomes == [OC.STALE if i == 550 else OC.COMMITTED for i in range(600)]
    assert stats.stale == 1, stats


async def test_sqlite_report_stale_is_off_by_default(sqlite_db: Path) -> None:
    _sq_seed(sqlite_db, [("a", 10, "kept")])
    sink = wb.SQLiteSink(sqlite_db, table="t", key="id", version="v")
    assert sink.reports_stale is False
    outcomes, (stats, _) = await _one_batch(sink, [{"id": "a", "v": 5, "note": "older"}])
    assert outcomes == [OC.COMMITTED]
    assert stats.stale == 0


# -- sinks that report nothing, and the protocol ---------------------------------------------


@pytest.mark.parametrize("returns", [None, 3, "ok", [0], {"stale": [0]}])
async def test_a_user_callable_still_reads_committed(returns: Any) -> None:
    """A callable sink returning anything but a ``WriteResult`` (None, a row count, ...)
    keeps its records COMMITTED."""
    seen: list[list[Any]] = []

    def write(batch: list[Any]) -> Any:
        seen.append(batch)
        return returns

    outcomes, (stats, _) = await _one_batch(
        wb.CallableSink(write), [{"id": "a", "v": 1}, {"id": "b", "v": 1}]
    )
    assert outcomes == [OC.COMMITTED, OC.COMMITTED]
    assert stats.stale == 0
    assert len(seen) == 1


async def test_a_custom_sink_names_its_stale_records_and_bad_indexes_are_ignored() -> None:
    """A sink of the user's may return ``wb.WriteResult``: indexes outside the batch, or
    repeated, are ignored; the named ones are STALE."""

    class Sink:
        async def write(self, batch: list[Any]) -> wb.WriteResult:
            return wb.WriteResult(stale=[2, 2, 7, -1, 0])

    records = [{"id": k, "v": 1} for k in "abcd"]
    outcomes, (stats, events) = await _one_batch(Sink(), records)
    assert outcomes == [OC.STALE, OC.COMMITTED, OC.STALE, OC.COMMITTED]
    assert stats.stale == 2
    assert stats.committed == 4
    assert [e.stale for e in events] == [2]


async def test_a_callable_sink_may_return_a_write_result() -> None:
    async def write(batch: list[Any]) -> wb.WriteResult:
        return wb.WriteResult(stale=[i for i, r in enumerate(batch) if r["v"] < 0])

    outcomes, _ = await _one_batch(
        wb.CallableSink(write), [{"id": "a", "v": -1}, {"id": "b", "v": 1}]
    )
    assert outcomes == [OC.STALE, OC.COMMITTED]


async def test_a_record_superseded_by_a_stale_one_is_coalesced() -> None:
    """Coalesced in the buffer into a record the sink then reports stale: COALESCED (its
    data travelled in the successor, which was written and changed nothing)."""

    class Sink:
        async def write(self, batch: list[Any]) -> wb.WriteResult:
            return wb.WriteResult(stale=range(len(batch)))

    async with wb.AsyncBatcher(Sink(), key="id", version="v", linger=60) as b:
        first = await b.add({"id": "a", "v": 1})
        second = await b.add({"id": "a", "v": 2})
        await b.flush()
        assert (await first, await second) == (OC.COALESCED, OC.STALE)
        s = b.stats()
    assert (s.committed, s.stale, s.coalesced) == (1, 1, 1), s
    _check_conserved(s)


def test_write_result_is_frozen() -> None:
    result = wb.WriteResult(stale=(1, 2))
    with pytest.raises(AttributeError):
        result.stale = ()  # type: ignore[misc]
    assert wb.WriteResult().stale == ()
