"""SQLiteSink against real SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import os
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import writebehind as wb
from writebehind._errors import SinkMisconfigured  # not exported (yet)

from .conftest import Open, rows


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("table", 'agents"; DROP TABLE agents; --'),
        ("table", "agents; DROP TABLE x"),
        ("table", "a" * 64),
        ("table", "1agents"),
        ("table", ""),
        ("key", "id) DO NOTHING; --"),
        ("key", ("id", "x y")),
        ("version", "updated_at >= 0 OR 1=1"),
    ],
)
def test_injection_shaped_names_are_rejected(tmp_path: Path, arg: str, value: Any) -> None:
    """Table and column names that are not plain identifiers raise ConfigError at once."""
    kwargs: dict[str, Any] = {"table": "agents", "key": "id", "version": "updated_at"}
    kwargs[arg] = value
    with pytest.raises(wb.ConfigError, match=arg):
        wb.SQLiteSink(tmp_path / "x.db", **kwargs)


async def test_missing_table_is_found_at_start(tmp_path: Path) -> None:
    """A table that does not exist raises ConfigError when the batcher starts."""
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    sink = wb.SQLiteSink(path, table="nope", key="id")
    with pytest.raises(wb.ConfigError, match="'nope' does not exist"):
        async with wb.AsyncBatcher(sink, key="id"):
            pass


@pytest.mark.parametrize("where", ["missing-dir", "missing-file", "proc"])
async def test_a_mistyped_path_is_a_config_error_that_creates_nothing(
    tmp_path: Path, where: str
) -> None:
    """A path whose directory or file does not exist (or that cannot hold a file, like
    /proc/x.db) raises ConfigError at start naming the path, and no file is created."""
    path = {
        "missing-dir": tmp_path / "no_such_dir" / "x.db",
        "missing-file": tmp_path / "hearbeats.db",  # a typo of an existing file's name
        "proc": Path("/proc/x.db"),
    }[where]
    before = set(os.listdir(tmp_path))
    sink = wb.SQLiteSink(path, table="agents", key="id")
    with pytest.raises(wb.ConfigError, match="does not exist") as info:
        async with wb.AsyncBatcher(sink, key="id"):
            pass
    assert str(path) in str(info.value)
    assert "nothing was created" in str(info.value)
    assert not path.exists()
    assert set(os.listdir(tmp_path)) == before


async def test_missing_column_is_found_at_start(heartbeat_db: Path) -> None:
    """A key or version column the table lacks raises ConfigError naming it."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="seen_at")
    with pytest.raises(wb.ConfigError, match="'seen_at'"):
        async with wb.AsyncBatcher(sink, key="id", version="seen_at"):
            pass


async def test_key_needs_a_unique_index(tmp_path: Path) -> None:
    """Upserting on a key without a PRIMARY KEY or UNIQUE index is a ConfigError at start;
    with a UNIQUE index (and no primary key) the upsert works on it: a second write of a
    key updates its row, a new key inserts one."""
    path = tmp_path / "x.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (id TEXT, v INTEGER)")
    with pytest.raises(wb.ConfigError, match="UNIQUE"):
        async with wb.AsyncBatcher(wb.SQLiteSink(path, table="t", key="id"), key="id"):
            pass
    with contextlib.closing(sqlite3.connect(path)) as c:
        assert c.execute("SELECT count(*) FROM t").fetchone() == (0,)
        c.execute("CREATE UNIQUE INDEX t_id ON t (id)")
        c.commit()
    async with wb.AsyncBatcher(wb.SQLiteSink(path, table="t", key="id"), key="id") as b:
        first = b.add_nowait({"id": "a", "v": 1})
        await b.flush()
        second = [b.add_nowait({"id": "a", "v": 2}), b.add_nowait({"id": "b", "v": 1})]
        await b.flush()
    assert [first.outcome, *(r.outcome for r in second)] == [wb.Outcome.COMMITTED] * 3
    with contextlib.closing(sqlite3.connect(path)) as c:
        assert c.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [("a", 2), ("b", 1)]


async def test_unknown_field_is_dead_lettered_by_name(api: Open, heartbeat_db: Path) -> None:
    """A record with a field the table lacks fails alone, with an error naming the field."""
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    async with api(sink, key="id", version="updated_at", dead_letter=letters.extend) as b:
        good = b.add_nowait({"id": "a", "name": "x", "updated_at": 1})
        bad = b.add_nowait({"id": "b", "name": "y", "updated_at": 1, "colour": "red"})
        await b.flush()
        assert await b.outcome(good) is wb.Outcome.COMMITTED
        assert await b.outcome(bad) is wb.Outcome.DEAD_LETTERED
    assert "'colour'" in letters[0].message
    assert set(rows(heartbeat_db)) == {"a"}


async def test_older_version_in_a_later_batch_does_not_overwrite(
    api: Open, heartbeat_db: Path
) -> None:
    """The upsert is conditional on the version: an older record never overwrites a newer
    row, and an equal version overwrites (a replay writes identical data)."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    async with api(sink, key="id", version="updated_at") as b:
        b.add_nowait({"id": "a", "name": "new", "updated_at": 10})
        await b.flush()
        b.add_nowait({"id": "a", "name": "old", "updated_at": 9})
        await b.flush()
        assert rows(heartbeat_db)["a"] == ("new", 10)
        b.add_nowait({"id": "a", "name": "same", "updated_at": 10})
        await b.flush()
        assert rows(heartbeat_db)["a"] == ("same", 10)


async def test_duplicate_keys_in_one_batch_are_safe(heartbeat_db: Path) -> None:
    """Given duplicate keys (no coalescing), the sink still leaves the newest version."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        await sink.write(
            [
                {"id": "a", "name": "v2", "updated_at": 2},
                {"id": "a", "name": "v3", "updated_at": 3},
                {"id": "a", "name": "v1", "updated_at": 1},
            ]
        )
    finally:
        await sink.close()
    assert rows(heartbeat_db)["a"] == ("v3", 3)


async def test_append_only_table_without_key(tmp_path: Path) -> None:
    """Without a key, records are inserted, none coalesced."""
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE events (kind TEXT, at TEXT)")
    async with wb.AsyncBatcher(wb.SQLiteSink(path, table="events"), max_batch=50) as b:
        for i in range(120):
            b.add_nowait({"kind": "login", "at": str(i)})
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*) FROM events").fetchone() == (120,)


@dataclass
class Heartbeat:
    id: uuid.UUID
    seen: dt.datetime
    meta: dict[str, Any]


async def test_dataclass_records_and_adapted_types(tmp_path: Path) -> None:
    """Dataclass records work; UUIDs, datetimes and dicts are stored as text and JSON (a
    datetime version as fixed-width UTC text, so that text order is time order)."""
    path = tmp_path / "hb.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE hb (id TEXT PRIMARY KEY, seen TEXT, meta TEXT)")
    agent = uuid.uuid4()
    t0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    sink = wb.SQLiteSink(path, table="hb", key="id", version="seen")
    async with wb.AsyncBatcher(sink, key="id", version="seen") as b:
        for i in range(3):
            b.add_nowait(Heartbeat(agent, t0 + dt.timedelta(seconds=i), {"i": i}))
    stored = rows(path, "hb")
    assert stored == {str(agent): ("2026-11-23T12:00:02.000000+00:00", '{"i": 2}')}


async def test_wal_and_synchronous_settings(heartbeat_db: Path) -> None:
    """The sink's connection runs in WAL mode with the synchronous level asked for."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", synchronous="NORMAL")
    await sink.start()
    try:
        assert sink._conn is not None
        conn = sink._conn
        assert sink._pool is not None
        mode = await sink._pool.run(lambda: conn.execute("PRAGMA journal_mode").fetchone())
        level = await sink._pool.run(lambda: conn.execute("PRAGMA synchronous").fetchone())
    finally:
        await sink.close()
    assert mode == ("wal",)
    assert level == (1,)  # NORMAL


def test_bad_synchronous_is_a_config_error(tmp_path: Path) -> None:
    """An unknown synchronous level is refused, naming the allowed ones."""
    with pytest.raises(wb.ConfigError, match="FULL"):
        wb.SQLiteSink(tmp_path / "x.db", table="t", synchronous="sometimes")


async def test_locked_database_is_retried(heartbeat_db: Path) -> None:
    """A database locked by another connection is a retriable error; the write lands once
    the lock is released."""
    blocker = sqlite3.connect(heartbeat_db, isolation_level=None)
    blocker.execute("PRAGMA journal_mode=WAL")
    blocker.execute("BEGIN IMMEDIATE")
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", busy_timeout=0.05)
    policy = wb.RetryPolicy(base=0.05, cap=0.1, max_attempts=50)
    async with wb.AsyncBatcher(sink, key="id", max_batch=1, retry=policy) as b:
        receipt = b.add_nowait({"id": "a", "name": "x", "updated_at": 1})
        async with asyncio.timeout(20):  # fails instead of hanging if it is never retried
            while b.stats().retried < 2:  # noqa: ASYNC110 - waits on the sink's thread
                await asyncio.sleep(0.01)
        blocker.execute("COMMIT")
        assert await receipt is wb.Outcome.COMMITTED
    blocker.close()
    assert rows(heartbeat_db)["a"] == ("x", 1)


@dataclass
class Beat:
    id: str
    name: str
    updated_at: int


@dataclass
class BeatWithNote(Beat):
    note: str


async def test_records_of_different_shapes_keep_every_field(api: Open, tmp_path: Path) -> None:
    """A dataclass and its subclass with an extra field, in one batch, both write every
    field (issue 9, item 2: the extra field was dropped while reported committed)."""
    path = tmp_path / "shapes.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT, updated_at, note TEXT)")
    sink = wb.SQLiteSink(path, table="agents", key="id", version="updated_at")
    async with api(sink, key="id", version="updated_at") as b:
        plain = b.add_nowait(Beat("a", "x", 1))
        noted = b.add_nowait(BeatWithNote("b", "y", 1, "hello"))
        await b.flush()
        assert await b.outcome(plain) is wb.Outcome.COMMITTED
        assert await b.outcome(noted) is wb.Outcome.COMMITTED
    assert rows(path) == {"a": ("x", 1, None), "b": ("y", 1, "hello")}


# -- versions: SQLite must order them as Python does (issue 9, item 3) ------------------------
_OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)
_YEARS = {"min_value": dt.datetime(2, 1, 1), "max_value": dt.datetime(9998, 12, 31)}
_VERSIONS: dict[str, tuple[st.SearchStrategy[Any], tuple[str, ...]]] = {
    "int": (st.integers(-(2**63), 2**63 - 1), ("INTEGER", "")),
    "float": (st.floats(allow_nan=False), ("REAL", "")),
    "aware datetime": (
        st.datetimes(**_YEARS, timezones=_OFFSETS),  # type: ignore[arg-type]
        ("TEXT", "TIMESTAMP", ""),
    ),
    "naive datetime": (st.datetimes(), ("TEXT", "")),
    "date": (st.dates(), ("DATE", "")),
    "Decimal": (
        st.one_of(
            st.decimals(-(10**12), 10**12, places=3),
            st.integers(-(2**63), 2**63 - 1).map(decimal.Decimal),
        ),
        ("NUMERIC", ""),
    ),
    "str": (st.text(st.characters(codec="utf-8"), max_size=6), ("TEXT", "")),
}


class _VersionTable:
    """A table ``t (id, v <declared>, seq)`` and a started sink on it, reused by every
    example of a Hypothesis test (``check`` empties the table first)."""

    def __init__(self, declared: str) -> None:
        self.declared = declared

    def __enter__(self) -> _VersionTable:
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "v.db"
        with sqlite3.connect(self.path) as c:
            c.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, v {self.declared}, seq INTEGER)")
        self.loop = asyncio.new_event_loop()
        self.sink = wb.SQLiteSink(self.path, table="t", key="id", version="v")
        self.loop.run_until_complete(self.sink.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.run_until_complete(self.sink.close())
        self.loop.close()
        self.tmp.cleanup()

    def check(self, batches: list[list[tuple[int, Any]]]) -> None:
        """Write ``batches`` of (key, version); each key's row must hold the record that a
        plain-dict "newest wins, a tie goes to the later" model keeps."""
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as c:
            c.execute("DELETE FROM t")
        model: dict[int, tuple[Any, int]] = {}
        seq = 0
        for batch in batches:
            out = []
            for key, version in batch:
                seq += 1
                out.append({"id": key, "v": version, "seq": seq})
                if key not in model or version >= model[key][0]:
                    model[key] = (version, seq)
            self.loop.run_until_complete(self.sink.write(out))
        stored = {k: r[1] for k, r in rows(self.path, "t").items()}
        assert stored == {k: s for k, (_, s) in model.items()}


@pytest.mark.parametrize(
    ("kind", "declared"), [(k, d) for k, (_, types) in _VERSIONS.items() for d in types]
)
def test_newest_version_wins_per_type(kind: str, declared: str) -> None:
    """For every supported version type, in a column of the natural type and in an untyped
    one, the row left for each key is the newest record's, as Python orders the versions
    (aware datetimes across offsets, Decimals as numbers)."""
    pairs = st.tuples(st.integers(0, 3), _VERSIONS[kind][0])
    with _VersionTable(declared) as table:

        @settings(max_examples=100, deadline=None)
        @given(st.lists(st.lists(pairs, min_size=1, max_size=6), min_size=1, max_size=4))
        def check(batches: list[list[tuple[int, Any]]]) -> None:
            table.check(batches)

        check()


def test_aware_datetimes_with_offsets_and_decimals_order_as_values() -> None:
    """The cases from the issue: 10:00+05:00 (05:00Z) does not overwrite 06:00Z, and
    Decimal("9") does not overwrite Decimal("10")."""
    six_utc = dt.datetime(2026, 1, 1, 6, 0, tzinfo=dt.UTC)
    ten_plus5 = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    with _VersionTable("TEXT") as table:
        table.check([[(1, six_utc)], [(1, ten_plus5)]])
    with _VersionTable("") as table:
        table.check([[(1, decimal.Decimal("10"))], [(1, decimal.Decimal("9"))]])


@pytest.mark.parametrize(
    ("declared", "first", "then", "match"),
    [
        ("TEXT", dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "aware"),
        ("TEXT", dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2), "naive"),
        ("", 1, "2", "str version after numbers"),
        ("", dt.date(2026, 1, 1), dt.datetime(2026, 1, 1), "datetime"),
        ("INTEGER", 1, float("nan"), "NaN"),
        ("NUMERIC", 1, decimal.Decimal("1.0000000000000001"), "significant digits"),
        ("TEXT", None, 5, "TEXT affinity"),
        ("INTEGER", None, "v2", "NUMERIC|INTEGER"),
        ("REAL", None, 2**60, "2\\*\\*53"),
        ("NUMERIC", None, decimal.Decimal(2**64), "64 bits"),
        ("", None, (1, 2), "tuple"),
    ],
)
async def test_versions_sqlite_cannot_order_are_refused(
    tmp_path: Path, declared: str, first: Any, then: Any, match: str
) -> None:
    """A version SQLite would order differently from Python (mixed kinds, NaN, a Decimal
    too precise for a float, numbers in a TEXT column, ...) is refused with a
    PermanentSinkError naming the column, and nothing of its batch is written."""
    path = tmp_path / "v.db"
    with sqlite3.connect(path) as c:
        c.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, v {declared})")
    sink = wb.SQLiteSink(path, table="t", key="id", version="v")
    await sink.start()
    try:
        if first is not None:
            await sink.write([{"id": 1, "v": first}])
        with pytest.raises(wb.PermanentSinkError, match=match) as info:
            await sink.write([{"id": 2, "v": then}])
        assert "'v'" in str(info.value)
    finally:
        await sink.close()
    assert 2 not in rows(path, "t")


async def test_aware_and_naive_in_one_batch_are_refused(tmp_path: Path) -> None:
    """Aware and naive datetimes in one batch cannot both be ordered: refused."""
    path = tmp_path / "v.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    sink = wb.SQLiteSink(path, table="t", key="id", version="v")
    await sink.start()
    try:
        batch = [{"id": 1, "v": dt.datetime(2026, 1, 1)}, {"id": 2, "v": dt.datetime.now(dt.UTC)}]
        with pytest.raises(wb.PermanentSinkError, match="aware datetime version after naive"):
            await sink.write(batch)
    finally:
        await sink.close()
    assert rows(path, "t") == {}


async def test_values_sqlite_cannot_bind_are_permanent_errors(heartbeat_db: Path) -> None:
    """An int beyond 64 bits, or a str with a lone surrogate, is a PermanentSinkError (the
    record is isolated and dead-lettered), not a bare OverflowError or UnicodeEncodeError."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        with pytest.raises(wb.PermanentSinkError, match="too large"):
            await sink.write([{"id": "a", "name": "x", "updated_at": 2**64}])
        with pytest.raises(wb.PermanentSinkError, match="surrogate"):
            await sink.write([{"id": "a", "name": "\udce9", "updated_at": 1}])
    finally:
        await sink.close()
    assert rows(heartbeat_db) == {}


async def test_datetime_versions_are_stored_in_utc_fixed_width(tmp_path: Path) -> None:
    """An aware datetime version is stored as fixed-width UTC text; a naive one as
    fixed-width text; other datetime columns keep their ISO form with its offset."""
    path = tmp_path / "v.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, at TEXT)")
    plus5 = dt.timezone(dt.timedelta(hours=5))
    at = dt.datetime(2026, 1, 1, 10, 0, tzinfo=plus5)
    sink = wb.SQLiteSink(path, table="t", key="id", version="v")
    await sink.start()
    try:
        await sink.write([{"id": 1, "v": at, "at": at}])
    finally:
        await sink.close()
    assert rows(path, "t") == {1: ("2026-01-01T05:00:00.000000+00:00", at.isoformat())}


# -- the unique index the upsert needs (issue 9, item 14) -------------------------------------
@pytest.mark.parametrize(
    ("index", "why"),
    [
        ("CREATE UNIQUE INDEX t_live ON t (id) WHERE v > 0", "partial"),
        ("CREATE UNIQUE INDEX t_live ON t (lower(id))", "expression"),
    ],
)
async def test_unusable_unique_index_is_refused_at_start(
    tmp_path: Path, index: str, why: str
) -> None:
    """A partial UNIQUE index, or one on an expression, cannot serve ON CONFLICT: refused
    at start with a ConfigError naming the index and how to fix it."""
    path = tmp_path / "x.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (id TEXT, v INTEGER)")
        c.execute(index)
    sink = wb.SQLiteSink(path, table="t", key="id", version="v")
    with pytest.raises(wb.ConfigError, match="UNIQUE") as info:
        async with wb.AsyncBatcher(sink, key="id", version="v"):
            pass
    assert "'t_live'" in str(info.value)
    assert why in str(info.value)
    assert "CREATE UNIQUE INDEX" in str(info.value)


# -- the schema changed while running ---------------------------------------------------------
@pytest.mark.parametrize("change", ["DROP TABLE agents", "ALTER TABLE agents DROP COLUMN name"])
async def test_table_or_column_dropped_while_running_is_misconfigured(
    heartbeat_db: Path, change: str
) -> None:
    """A table or column dropped after start fails the write with SinkMisconfigured (the
    batcher pauses and retries), not a permanent error that bisects the batch."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    await sink.start()
    try:
        await sink.write([{"id": "a", "name": "x", "updated_at": 1}])
        with sqlite3.connect(heartbeat_db) as c:
            c.execute(change)
        with pytest.raises(SinkMisconfigured):
            await sink.write([{"id": "a", "name": "y", "updated_at": 2}])
    finally:
        await sink.close()
