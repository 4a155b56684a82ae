"""Dead-letter stores: the SQLite and PostgreSQL stores and replay (the codec: test_codec.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import writebehind as wb
from writebehind._deadletter import DeadLetterEntry, scrub_secrets
from writebehind.dlq import (
    EntriesNotStored,
    PostgresDeadLetter,
    RecordNotReplayable,
    SQLiteDeadLetter,
    StoredEntry,
)
from writebehind.testing import FlakySink, MemorySink

from .pg import DSN
from .test_codec import ANY_TEXT

CANARY = "canary-pw-7f3a9"
AWARE = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def entry(record: Any, **kw: Any) -> DeadLetterEntry:
    fields: dict[str, Any] = {
        "error": "PermanentSinkError",
        "message": "boom",
        "sink": "MemorySink()",
        "batcher": "hb",
        "attempts": 1,
        "at": time.time(),
    }
    fields.update(kw)
    return DeadLetterEntry(record=record, **fields)


# -- both stores -----------------------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.server)])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SQLiteDeadLetter | PostgresDeadLetter]:
    """A fresh, empty store of each kind (the PostgreSQL table is dropped afterwards)."""
    if request.param == "sqlite":
        s: SQLiteDeadLetter | PostgresDeadLetter = SQLiteDeadLetter(tmp_path / "dl.db")
        yield s
        await s.close()
        return
    table = f"dl_{uuid.uuid4().hex[:12]}"
    s = PostgresDeadLetter(DSN, table=table)
    yield s
    await s.close()
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()


async def test_store_put_list_get_count(store: Any) -> None:
    """Entries come back whole, oldest first, filtered by batcher and error, paged by id."""
    t0 = time.time()
    await store.put([entry({"id": 1}, at=t0), entry({"id": 2}, at=t0, batcher="other")])
    await store.put([entry((1, AWARE), error="RetriableSinkError", attempts=6, at=t0 + 1)])
    assert await store.count() == 3
    entries = await store.list()
    assert [e.record() for e in entries] == [{"id": 1}, {"id": 2}, (1, AWARE)]
    first = entries[0]
    assert isinstance(first, StoredEntry)
    assert (first.batcher, first.sink, first.error, first.message, first.attempts) == (
        "hb",
        "MemorySink()",
        "PermanentSinkError",
        "boom",
        1,
    )
    assert first.at == pytest.approx(t0, abs=1e-3)
    assert entries[2].record_type == "tuple"
    assert [e.record() for e in await store.list(batcher="other")] == [{"id": 2}]
    assert [e.attempts for e in await store.list(error="RetriableSinkError")] == [6]
    assert [e.id for e in await store.list(after=first.id, limit=1)] == [entries[1].id]
    assert await store.get(entries[1].id) == entries[1]
    assert await store.get(10**9) is None


async def test_store_delete_and_purge(store: Any) -> None:
    """delete removes by id; purge removes by age or everything, and says how many."""
    now = time.time()
    await store.put([entry({"i": i}, at=now - 100 * i) for i in range(5)])
    ids = [e.id for e in await store.list()]
    assert await store.delete([ids[0], ids[0], 10**9]) == 1
    assert await store.count() == 4
    assert await store.purge(before=now - 250) == 2  # the entries 300 and 400 s old
    assert await store.purge(before=dt.datetime.fromtimestamp(now - 150, dt.UTC)) == 1
    assert [e.record() for e in await store.list()] == [{"i": 1}]
    with pytest.raises(wb.ConfigError, match="exactly one"):
        await store.purge()
    assert await store.purge(all=True) == 1
    assert await store.count() == 0


async def test_store_keeps_unencodable_records_and_refuses_to_replay_them(store: Any) -> None:
    """A set is stored as its repr, shown, and refused (and kept) by replay."""
    await store.put([entry({"tags": {"a"}}), entry({"ok": 1})])
    bad, good = await store.list()
    assert (bad.encoding, bad.replayable, good.replayable) == ("repr", False, True)
    assert "{'a'}" in bad.to_dict()["record"]
    with pytest.raises(RecordNotReplayable):
        bad.record()
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, dead_letter=store) as batcher:
        report = await store.replay(batcher)
    assert (report.refused, report.committed, report.refused_ids) == (1, 1, [bad.id])
    assert sink.records == [{"ok": 1}]
    assert [e.id for e in await store.list()] == [bad.id]


async def test_store_replay_commits_and_deletes(store: Any) -> None:
    """Replayed records that commit leave the store; a superseded one counts as coalesced."""
    records = [{"id": 1, "v": 1}, {"id": 2, "v": 1}, {"id": 1, "v": 2}]
    await store.put([entry(r) for r in records])
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", version="v", dead_letter=store) as batcher:
        report = await store.replay(batcher)
    assert sorted(sink.records, key=lambda r: r["id"]) == records[1:][::-1]
    assert (report.selected, report.committed, report.coalesced) == (3, 2, 1)
    assert (report.deleted, report.kept) == (3, 0)
    assert await store.count() == 0


async def test_store_replay_into_a_refusing_sink_keeps_one_entry_per_record(store: Any) -> None:
    """When the sink still refuses, the engine writes a fresh entry and the old one goes:
    exactly one entry per record, with new ids; the good record commits."""
    await store.put([entry({"id": i}) for i in range(4)])
    old_ids = {e.id for e in await store.list()}
    sink = FlakySink(poison=lambda r: r["id"] % 2 == 0)
    async with wb.AsyncBatcher(sink, key="id", dead_letter=store, name="again") as batcher:
        report = await store.replay(batcher)
    left = await store.list()
    assert sorted(e.record()["id"] for e in left) == [0, 2]
    assert not old_ids & {e.id for e in left}
    assert {e.batcher for e in left} == {"again"}
    assert (report.committed, report.dead_lettered, report.deleted) == (2, 2, 4)
    assert sorted(r["id"] for r in sink.records) == [1, 3]


async def test_store_replay_keeps_dead_letters_that_have_nowhere_else_to_go(store: Any) -> None:
    """Replaying into a batcher without a dead-letter store keeps refused records' entries."""
    await store.put([entry({"id": 0}), entry({"id": 1})])
    sink = FlakySink(poison=lambda r: r["id"] == 0)
    async with wb.AsyncBatcher(sink, key="id", dead_letter=None) as batcher:
        report = await store.replay(batcher)
    assert (report.dead_lettered, report.deleted, report.kept) == (1, 1, 1)
    assert [e.record() for e in await store.list()] == [{"id": 0}]


async def test_store_replay_by_ids_limit_and_dry_run(store: Any) -> None:
    """ids and limit select; a dry run changes nothing; absent ids count as missing."""
    await store.put([entry({"id": i}) for i in range(5)])
    ids = [e.id for e in await store.list()]
    dry = await store.replay(None, dry_run=True, limit=3)
    assert (dry.selected, dry.replayable, dry.dry_run) == (3, 3, True)
    assert await store.count() == 5
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, dead_letter=store) as batcher:
        by_id = await store.replay(batcher, ids=[ids[4], 10**9])
        first_two = await store.replay(batcher, limit=2)
    assert (by_id.selected, by_id.missing, by_id.committed) == (2, 1, 1)
    assert first_two.committed == 2
    assert sink.records == [{"id": 4}, {"id": 0}, {"id": 1}]
    assert [e.record() for e in await store.list()] == [{"id": 2}, {"id": 3}]


async def test_store_replay_through_the_sync_batcher(store: Any) -> None:
    """A sync Batcher works as the replay target (its calls run in a worker thread)."""
    await store.put([entry({"id": i}) for i in range(3)])
    sink = MemorySink()
    batcher = wb.Batcher(sink, key="id")
    await asyncio.to_thread(batcher.start)
    try:
        report = await store.replay(batcher)
    finally:
        await asyncio.to_thread(batcher.close)
    assert report.committed == 3
    assert await store.count() == 0


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.server)])
async def test_store_does_not_add_secrets(kind: str, tmp_path: Path) -> None:
    """The store's own configuration carries the canary (the PostgreSQL DSN's password, the
    SQLite file's directory name), and so does the message before the engine scrubs it:
    none of the stored bytes (every file of the SQLite store, every column of every
    PostgreSQL row) holds it, nor does any entry's repr."""
    message = scrub_secrets(f"could not connect to postgresql://u:{CANARY}@db/x")
    assert CANARY not in message
    table = f"dl_{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        folder = tmp_path / f"dir-{CANARY}"
        folder.mkdir()
        store: SQLiteDeadLetter | PostgresDeadLetter = SQLiteDeadLetter(folder / "dl.db")
    else:
        store = PostgresDeadLetter(_with_password(DSN, CANARY), table=table)
    try:
        named = repr(store) if kind == "postgres" else "sink"  # a path is no secret
        await store.put([entry({"id": 1}, message=message, sink=named)])
        (stored,) = await store.list()
        assert stored.message == message
        assert CANARY not in repr(stored)
        if isinstance(store, PostgresDeadLetter):
            conn = await asyncpg.connect(DSN, timeout=5)
            try:
                text = await conn.fetchval(f"SELECT string_agg({table}::text, '') FROM {table}")
            finally:
                await conn.close()
            assert text is not None
            assert CANARY not in text
    finally:
        await store.close()
        if kind == "postgres":
            conn = await asyncpg.connect(DSN, timeout=5)
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.close()
    if kind == "sqlite":
        files = list(folder.iterdir())
        assert files
        for path in files:
            assert CANARY.encode() not in path.read_bytes(), path


FILE_NAME = os.fsdecode(b"report-\xe9t\xe9.txt")  # lone surrogates: not UTF-8 on disk


async def test_store_keeps_a_batch_that_holds_a_lone_surrogate(store: Any) -> None:
    """One record with a lone surrogate (a file name that is not UTF-8) no longer makes the
    store refuse the whole put: all 100 are stored, that one round-trips exactly (replayable),
    and a message quoting it is stored with the surrogate escaped."""
    records = [{"id": i, "path": f"file-{i}.txt"} for i in range(100)]
    records[37]["path"] = FILE_NAME
    message = f"PermanentSinkError: cannot write {FILE_NAME}\x00"
    await store.put([entry(r, message=message if r["id"] == 37 else "boom") for r in records])
    stored = await store.list(limit=None)
    assert len(stored) == 100
    odd = stored[37]
    assert odd.replayable
    assert odd.record() == {"id": 37, "path": FILE_NAME}
    assert odd.message == "PermanentSinkError: cannot write report-\\udce9t\\udce9.txt\\x00"


async def test_engine_dead_letters_a_batch_with_a_surrogate_record_whole(store: Any) -> None:
    """Through the engine, a batch of 100 dead-lettered whole (retries used up) with one
    surrogate record among them: 100 stored (it was 0), none in dead_letter_errors."""
    sink = FlakySink(fail_first=10**9)
    retry = wb.RetryPolicy(max_attempts=1)
    async with wb.AsyncBatcher(sink, dead_letter=store, max_batch=100, retry=retry) as batcher:
        for i in range(100):
            batcher.add_nowait({"id": i, "path": FILE_NAME if i == 5 else "ok"})
        await batcher.flush()
    assert batcher.stats().dead_lettered == 100
    assert batcher.stats().dead_letter_errors == 0
    assert await store.count() == 100


async def test_one_entry_the_store_refuses_does_not_sink_the_others(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry whose row the store refuses (an attempts count no integer column holds) is
    kept in its plainest form, its record as a repr (logged); the others are stored as they
    were."""
    good = [entry({"id": i}) for i in range(5)]
    odd = entry({"id": 99}, attempts=2**70)
    await store.put([*good[:2], odd, *good[2:]])
    stored = await store.list()
    assert [e.record() for e in stored if e.replayable] == [{"id": i} for i in range(5)]
    (kept,) = [e for e in stored if not e.replayable]
    assert "99" in kept.to_dict()["record"]
    assert kept.attempts == 2**31 - 1
    assert "refused 1 of 6 entries as written" in caplog.text


async def test_entries_not_stored_in_any_form_are_counted_and_reported(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry refused as written and as a repr is counted (store.unstored) and reported by
    EntriesNotStored, raised after the others are stored."""
    insert = store._insert

    async def refusing(sql: str, rows: list[tuple[Any, ...]]) -> None:
        if any("poison" in str(row) for row in rows):
            raise wb.PermanentSinkError("refused")
        await insert(sql, rows)

    monkeypatch.setattr(store, "_insert", refusing)
    with pytest.raises(EntriesNotStored) as info:
        await store.put([entry({"id": 1}), entry({"id": 2}, message="poison"), entry({"id": 3})])
    assert (info.value.stored, info.value.unstored, store.unstored) == (2, 1, 1)
    assert "1 of 3 entries could not be stored" in str(info.value)
    assert [e.record() for e in await store.list()] == [{"id": 1}, {"id": 3}]


@pytest.mark.usefixtures("_drop_any_text_table")
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.server)])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the store is per example
)
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=4))
def test_both_stores_round_trip_any_text(kind: str, tmp_path: Path, texts: list[str]) -> None:
    """Any str (lone surrogates, NUL) stored in either store comes back exactly, as a value
    and as a dict key, and a message holding it is stored (escaped)."""
    record = {"texts": texts, "keyed": {t: i for i, t in enumerate(texts)}}

    async def go() -> Any:
        if kind == "sqlite":
            s: Any = SQLiteDeadLetter(tmp_path / "any.db")
        else:
            _ANY_TEXT_TABLE_USED.append(True)
            s = PostgresDeadLetter(DSN, table=_ANY_TEXT_TABLE)
        try:
            await s.put([entry(record, message=texts[0])])
            return await s.get(await s.max_id())
        finally:
            await s.close()

    stored = asyncio.run(go())
    assert stored.record() == record


_ANY_TEXT_TABLE = f"dl_any_{uuid.uuid4().hex[:10]}"
_ANY_TEXT_TABLE_USED: list[bool] = []


@pytest.fixture(scope="module")
def _drop_any_text_table() -> Iterator[None]:
    yield
    if not _ANY_TEXT_TABLE_USED:
        return

    async def drop() -> None:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {_ANY_TEXT_TABLE}")
        finally:
            await conn.close()

    asyncio.run(drop())


async def test_end_to_end_engine_writes_entries_into_a_sqlite_path(tmp_path: Path) -> None:
    """AsyncBatcher(dead_letter=path) keeps each poisoned record with its error class,
    message, attempts, sink and batcher name, in a 0600 file."""
    path = tmp_path / "dl.db"
    sink = FlakySink(poison=lambda r: r["id"] in (3, 5))
    async with wb.AsyncBatcher(sink, key="id", dead_letter=path, name="agents") as batcher:
        receipts = [await batcher.add({"id": i, "at": AWARE}) for i in range(8)]
        await batcher.flush()
        outcomes = [await r for r in receipts]
        store = batcher.dead_letter
    assert isinstance(store, SQLiteDeadLetter)
    try:
        entries = await store.list()
    finally:
        await store.close()
    assert [o is wb.Outcome.DEAD_LETTERED for o in outcomes].count(True) == 2
    assert [e.record() for e in entries] == [{"id": 3, "at": AWARE}, {"id": 5, "at": AWARE}]
    for e in entries:
        assert e.error == "PermanentSinkError"
        assert "poison" in e.message
        assert e.attempts == 1  # isolated by splitting: its own delivery tried it once
        assert e.sink == repr(sink)
        assert e.batcher == "agents"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- SQLite only -----------------------------------------------------------------------
async def test_sqlite_store_is_lazy_and_private(tmp_path: Path) -> None:
    """Constructing does no I/O; the first put creates the file and its WAL files 0600,
    whatever the umask."""
    path = tmp_path / "sub" / "dl.db"
    store = SQLiteDeadLetter(path)
    assert not path.parent.exists()
    path.parent.mkdir()
    assert list(path.parent.iterdir()) == []
    old = os.umask(0)
    try:
        await store.put([entry({"id": 1})])
        files = sorted(p.name for p in path.parent.iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(old)
        await store.close()
    assert "dl.db" in files
    assert set(modes.values()) == {0o600}, modes
    with sqlite3.connect(path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(dead_letters)")]
    for col in ("id", "at", "batcher", "sink", "error", "message", "attempts", "record"):
        assert col in cols
    assert "encoding" in cols


async def test_sqlite_store_path_is_required_and_unopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path must be named (no file appears where the process runs by default); the
    file is created on first use only."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError):
        SQLiteDeadLetter()  # type: ignore[call-arg]
    store = SQLiteDeadLetter("dead_letters.db")
    assert store.path == "dead_letters.db"
    assert not (tmp_path / "dead_letters.db").exists()
    assert await store.count() == 0  # counting an absent store creates nothing
    assert not (tmp_path / "dead_letters.db").exists()
    assert await store.list() == []  # any other use opens (and creates) it
    await store.close()
    assert (tmp_path / "dead_letters.db").exists()


async def test_sqlite_store_read_only_mode_refuses_a_missing_file(tmp_path: Path) -> None:
    """With create=False, a missing file or table is a ConfigError and nothing is created."""
    store = SQLiteDeadLetter(tmp_path / "nope.db", create=False)
    with pytest.raises(wb.ConfigError, match="no dead-letter file"):
        await store.count()
    await store.close()
    assert not (tmp_path / "nope.db").exists()
    sqlite3.connect(tmp_path / "other.db").close()
    other = SQLiteDeadLetter(tmp_path / "other.db", create=False)
    with pytest.raises(wb.ConfigError, match="no dead-letter table"):
        await other.count()
    await other.close()


async def _fill_up(store: SQLiteDeadLetter) -> None:
    """Make the store's file full: one entry in, then no page more than it holds now."""
    await store.put([entry({"id": 0})])
    pages = await store._run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store._run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))


async def test_sqlite_store_reports_a_full_disk_as_what_it_is(tmp_path: Path) -> None:
    """A full disk is reported as "database or disk is full" (retriable: no entry causes
    it), not as the "cannot rollback" of a ROLLBACK SQLite had already done; the store keeps
    working once there is room again."""
    store = SQLiteDeadLetter(tmp_path / "dl.db")
    try:
        await _fill_up(store)
        with pytest.raises(wb.RetriableSinkError) as info:
            await store.put([entry({"id": i, "pad": "x" * 5000}) for i in range(50)])
        assert "database or disk is full" in str(info.value)
        assert "cannot rollback" not in str(info.value)
        assert "database or disk is full" in str(info.value.__cause__)
        await store._run(lambda c: c.execute("PRAGMA max_page_count = 1000000"))
        await store.put([entry({"id": 1})])  # not left inside a transaction
        assert [e.record() for e in await store.list()] == [{"id": 0}, {"id": 1}]
    finally:
        await store.close()


async def test_engine_logs_the_full_disk_of_its_dead_letter_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the engine, the store's real error reaches the log line and the records are
    counted in dead_letter_errors."""
    store = SQLiteDeadLetter(tmp_path / "dl.db")
    await _fill_up(store)
    sink = FlakySink(poison=lambda r: True)
    async with wb.AsyncBatcher(sink, dead_letter=store, max_batch=10) as batcher:
        for i in range(10):
            batcher.add_nowait({"id": i, "pad": "x" * 5000})
        await batcher.flush()
    await store.close()
    assert batcher.stats().dead_letter_errors == 10
    assert "database or disk is full" in caplog.text
    assert "cannot rollback" not in caplog.text


def test_sqlite_store_validates_its_table_name(tmp_path: Path) -> None:
    """A table name that is not a plain identifier is refused at construction."""
    with pytest.raises(wb.ConfigError, match="table"):
        SQLiteDeadLetter(tmp_path / "x.db", table="x; DROP TABLE y")


# -- PostgreSQL only -------------------------------------------------------------------
def _with_password(dsn: str, password: str) -> str:
    scheme, rest = dsn.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:{password}@{host}"


@pytest.mark.server
async def test_pg_store_never_shows_the_password(pg: asyncpg.Connection) -> None:
    """The DSN's password is in no repr, no stored row and no error (a server refusing the
    connection, a schema that does not exist)."""
    table = f"dl_{uuid.uuid4().hex[:12]}"
    store = PostgresDeadLetter(_with_password(DSN, CANARY), table=table)
    assert CANARY not in repr(store)
    try:
        await store.put([entry({"id": 1}, message=scrub_secrets(f"password={CANARY}"))])
        row = await pg.fetchval(f"SELECT string_agg({table}::text, '') FROM {table}")
        assert row is not None
        assert CANARY not in row
    finally:
        await store.close()
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
    closed = PostgresDeadLetter(f"postgresql://u:{CANARY}@127.0.0.1:1/x")
    with pytest.raises(wb.SinkError) as refused:
        await closed.count()
    await closed.close()
    bad_schema = PostgresDeadLetter(_with_password(DSN, CANARY), schema="no_such_schema_x")
    with pytest.raises(wb.SinkError) as missing:
        await bad_schema.count()
    await bad_schema.close()
    for info in (refused, missing):
        text = "".join(str(e) for e in (info.value, info.value.__cause__) if e is not None)
        assert CANARY not in text
        assert "dead-letter store" in str(info.value)


@pytest.mark.server
async def test_pg_store_shares_a_postgres_sinks_server(pg: asyncpg.Connection) -> None:
    """Given a PostgresSink, the store writes to the same server with its own pool; given a
    pool, it uses it and leaves it open."""
    table = f"dl_{uuid.uuid4().hex[:12]}"
    sink = wb.PostgresSink(DSN, table="unused", key="id")
    store = PostgresDeadLetter(sink, table=table)
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=1)
    try:
        await store.put([entry({"id": 1})])
        assert await pg.fetchval(f"SELECT count(*) FROM {table}") == 1
        shared = PostgresDeadLetter(pool, table=table)
        assert await shared.count() == 1
        await shared.close()
        assert await pool.fetchval("SELECT 1") == 1  # still open
        assert (
            await pg.fetchval(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = $1 AND column_name = 'record'",
                table,
            )
            == "jsonb"
        )
    finally:
        await store.close()
        await pool.close()
        await pg.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.server
async def test_pg_store_makes_a_dropped_table_again(pg: asyncpg.Connection) -> None:
    """The store's table dropped while it is in use (an undefined table, no entry's fault)
    is made again, and the put that met it stores its entries."""
    table = f"dl_{uuid.uuid4().hex[:12]}"
    store = PostgresDeadLetter(DSN, table=table)
    try:
        await store.put([entry({"id": 1})])
        await pg.execute(f"DROP TABLE {table}")
        await store.put([entry({"id": 2})])
        assert [e.record() for e in await store.list()] == [{"id": 2}]
    finally:
        await store.close()
        await pg.execute(f"DROP TABLE IF EXISTS {table}")


async def test_pg_store_without_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing driver is a ConfigError that says what to install."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    store = PostgresDeadLetter("postgresql://u@127.0.0.1:1/x")
    with pytest.raises(wb.ConfigError, match=r"pip install 'writebehind\[postgres\]'"):
        await store.count()


def test_pg_store_validates_names_and_source() -> None:
    """Bad identifiers, pool sizes and sources are refused at construction."""
    with pytest.raises(wb.ConfigError, match="schema"):
        PostgresDeadLetter(DSN, schema="a.b")
    with pytest.raises(wb.ConfigError, match="pool_size"):
        PostgresDeadLetter(DSN, pool_size=5)
    with pytest.raises(wb.ConfigError, match="DSN"):
        PostgresDeadLetter(42)


async def test_reading_an_absent_default_store_creates_no_file(tmp_path: Path) -> None:
    """count() on a store nothing was dead-lettered into (a metrics scrape) answers 0
    without creating the file."""
    path = tmp_path / "dead_letters.db"
    store = SQLiteDeadLetter(path)
    assert await store.count() == 0
    assert not path.exists()
    await store.close()
