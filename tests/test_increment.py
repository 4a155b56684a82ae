"""``increment=`` on both SQL sinks (issue 17): the upsert adds the merged deltas instead of
overwriting, on every statement path (asyncpg ``unnest`` and COPY staging; psycopg one
statement and COPY + merge; SQLite), whatever the versions; against the real PostgreSQL,
a real SQLite file, and two processes incrementing the same counters at once."""

from __future__ import annotations

import decimal
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

import writebehind as wb
from writebehind.sinks import _pg_copy
from writebehind.sinks._increment import sum_per_key
from writebehind.sinks._upsert import on_conflict

from .conftest import assert_conserved
from .pg import DSN

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "increment_worker.py"
pytestmark = pytest.mark.server  # PostgreSQL (the SQLite tests are here too: one file)
BIG = 200  # records per write: above COPY_MIN, so the psycopg path takes COPY + merge
SMALL = 3  # below it: one unnest statement

# (driver, method, records per write): every statement path of PostgresSink
PATHS = {
    "asyncpg-unnest": ("asyncpg", "auto", SMALL),
    "asyncpg-copy": ("asyncpg", "copy", BIG),
    "psycopg-statement": ("psycopg", "auto", SMALL),
    "psycopg-copy": ("psycopg", "auto", BIG),
}


@pytest.fixture
async def counters(pg: asyncpg.Connection) -> AsyncIterator[str]:
    """A fresh counters table: page text key, views bigint, title text, v int."""
    name = f"ctr_{uuid.uuid4().hex[:12]}"
    await pg.execute(
        f"CREATE TABLE {name} (page text PRIMARY KEY, views bigint, title text, v int)"
    )
    yield name
    await pg.execute(f"DROP TABLE IF EXISTS {name}")


def pg_sink(table: str, path: str, **kw: Any) -> wb.PostgresSink:
    driver, method, _ = PATHS[path]
    kw.setdefault("increment", ("views",))
    return wb.PostgresSink(DSN, table=table, key="page", driver=driver, method=method, **kw)


async def pg_views(pg: asyncpg.Connection, table: str) -> dict[str, Any]:
    return {r["page"]: r["views"] for r in await pg.fetch(f"SELECT page, views FROM {table}")}


# -- the statement --------------------------------------------------------------------------
def test_the_conflict_clause_adds_and_moves_the_version_condition_into_the_others() -> None:
    names = ("page", "views", "title", "v")
    assert on_conflict(names, ("page",), None, "t", ("views",)) == (
        ' ON CONFLICT ("page") DO UPDATE SET '
        '"views" = COALESCE(t."views", 0) + COALESCE(excluded."views", 0), '
        '"title" = excluded."title", "v" = excluded."v"'
    )
    newer = 't."v" IS NULL OR excluded."v" >= t."v"'
    assert on_conflict(names, ("page",), "v", "t", ("views",)) == (
        ' ON CONFLICT ("page") DO UPDATE SET '
        '"views" = COALESCE(t."views", 0) + COALESCE(excluded."views", 0), '
        f'"title" = CASE WHEN {newer} THEN excluded."title" ELSE t."title" END, '
        f'"v" = CASE WHEN {newer} THEN excluded."v" ELSE t."v" END'
    )  # no WHERE: the increment always applies
    # a record shape without the increment column: the plain conditional upsert
    assert on_conflict(("page", "title", "v"), ("page",), "v", "t", ("views",)) == (
        on_conflict(("page", "title", "v"), ("page",), "v", "t")
    )


def test_sum_per_key_keeps_the_newest_row_with_the_increments_summed() -> None:
    names = ("page", "views", "title", "v")
    rows = [("a", 1, "a1", 1), ("b", 5, "b", 1), ("a", 2, "a3", 3), ("a", None, "a2", 2)]
    assert sum_per_key(names, rows, ("page",), "v", ("views",)) == [
        ("a", 3, "a3", 3),
        ("b", 5, "b", 1),
    ]
    assert sum_per_key(names, rows, ("page",), None, ("views",))[0] == ("a", 3, "a2", 2)
    unique = rows[:2]
    assert sum_per_key(names, unique, ("page",), "v", ("views",)) is unique
    with pytest.raises(wb.PermanentSinkError, match="increment column 'views'"):
        sum_per_key(names, [("a", 1, "", 1), ("a", "x", "", 1)], ("page",), "v", ("views",))


# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("make", ["pg", "sqlite"])
def test_increment_is_checked_when_the_sink_is_made(make: str, tmp_path: Path) -> None:
    def sink(**kw: Any) -> Any:
        if make == "pg":
            return wb.PostgresSink(DSN, table="t", **kw)
        return wb.SQLiteSink(tmp_path / "x.db", table="t", **kw)

    with pytest.raises(wb.ConfigError, match=r"increment=\('views',\)"):
        sink(key="page", increment="views")  # a str: a tuple was meant
    with pytest.raises(wb.ConfigError, match="increment: 'page' is a key column"):
        sink(key="page", increment=("page",))
    with pytest.raises(wb.ConfigError, match="increment: 'v' is the version column"):
        sink(key="page", version="v", increment=("v",))
    with pytest.raises(wb.ConfigError, match="increment: needs key"):
        sink(increment=("views",))
    with pytest.raises(wb.ConfigError, match="report_stale: cannot be combined with increment"):
        sink(key="page", version="v", increment=("views",), report_stale=True)
    with pytest.raises(wb.ConfigError, match="increment: 'views;' is not an allowed name"):
        sink(key="page", increment=("views;",))
    with pytest.raises(wb.ConfigError, match="takes a tuple of column names"):
        sink(key="page", increment=5)
    assert sink(key="page", increment=["views", "views"]).increment == ("views",)
    assert sink(key="page").increment == ()


async def test_pg_increment_columns_are_checked_at_start(pg: asyncpg.Connection) -> None:
    name = f"ctr_{uuid.uuid4().hex[:12]}"
    await pg.execute(
        f"CREATE TABLE {name} (page text PRIMARY KEY, a smallint, b integer, c bigint, "
        "d numeric(12, 2), e real, f double precision, title text, at timestamptz)"
    )
    try:
        await starts_and_refuses(
            name,
            tuple("abcdef"),
            [
                ("title", "is text, which cannot be added to"),
                ("at", "is timestamp with time zone"),
                ("nope", "column 'nope' is not in table"),
            ],
        )
    finally:
        await pg.execute(f"DROP TABLE {name}")


async def starts_and_refuses(
    table: str, counters: tuple[str, ...], refused: list[tuple[str, str]]
) -> None:
    """On both drivers: a sink with ``increment=counters`` starts; one with each column of
    ``refused`` fails to start with a ConfigError matching its message."""
    for driver in ("asyncpg", "psycopg"):
        ok = wb.PostgresSink(DSN, table=table, key="page", driver=driver, increment=counters)
        await ok.start()
        await ok.close()
        for column, why in refused:
            bad = wb.PostgresSink(DSN, table=table, key="page", driver=driver, increment=(column,))
            with pytest.raises(wb.ConfigError, match=why):
                await bad.start()


async def test_pg_a_domain_counts_by_its_base_type_at_start(pg: asyncpg.Connection) -> None:
    """A column whose type is a DOMAIN is checked by the type under it, however many
    domains deep: over bigint or numeric accepted, over text or an array refused."""
    tag = uuid.uuid4().hex[:8]
    domains = {
        f"d1_{tag}": "bigint CHECK (VALUE >= 0)",
        f"d2_{tag}": f"d1_{tag}",  # a domain over a domain
        f"dn_{tag}": "numeric(12, 2)",
        f"dt_{tag}": "text",
        f"dt2_{tag}": f"dt_{tag}",
        f"da_{tag}": "bigint[]",
    }
    for domain, over in domains.items():
        await pg.execute(f"CREATE DOMAIN {domain} AS {over}")
    name = f"ctr_{uuid.uuid4().hex[:12]}"
    await pg.execute(
        f"CREATE TABLE {name} (page text PRIMARY KEY, a d1_{tag}, b d2_{tag}, c dn_{tag}, "
        f"t dt_{tag}, t2 dt2_{tag}, arr da_{tag}, arr2 d1_{tag}[])"
    )
    try:
        await starts_and_refuses(
            name,
            tuple("abc"),
            [
                ("t", rf"is dt_{tag} \(a domain over text\), which cannot be added to"),
                ("t2", rf"is dt2_{tag} \(a domain over text\), which cannot be added to"),
                ("arr", rf"is da_{tag} \(a domain over bigint\[\]\), which cannot"),
                ("arr2", rf"is d1_{tag}\[\], which cannot be added to"),
            ],
        )
    finally:
        await pg.execute(f"DROP TABLE {name}")
        for domain in reversed(domains):
            await pg.execute(f"DROP DOMAIN {domain}")


# -- PostgreSQL: every statement path ---------------------------------------------------------
@pytest.mark.parametrize("path", list(PATHS))
async def test_pg_sums_are_exact_across_batches(
    pg: asyncpg.Connection, counters: str, path: str
) -> None:
    """Five writes of the same pages (one with each key twice in it) add up exactly; a page
    first seen inserts its delta as the value; a NULL already in the table counts as 0."""
    size = PATHS[path][2]
    pages = [f"p{i}" for i in range(size)]
    await pg.execute(f"INSERT INTO {counters} (page, views) VALUES ('p0', NULL)")
    sink = pg_sink(counters, path)
    await sink.start()
    expected = dict.fromkeys(pages, 0)
    try:
        for n in range(1, 5):
            await sink.write([{"page": p, "views": n, "title": f"t{n}"} for p in pages])
            for p in pages:
                expected[p] += n
        # one key twice in one write: both deltas land (one row per key, summed)
        await sink.write([{"page": p, "views": 10, "title": "x"} for p in pages] * 2)
        for p in pages:
            expected[p] += 20
        await sink.write([{"page": "new", "views": 7, "title": "n"}])
        expected["new"] = 7
    finally:
        await sink.close()
    assert await pg_views(pg, counters) == expected
    assert await pg.fetchval(f"SELECT count(DISTINCT title) FROM {counters}") == 2


@pytest.mark.parametrize("path", list(PATHS))
async def test_pg_increments_apply_whatever_the_version(
    pg: asyncpg.Connection, counters: str, path: str
) -> None:
    """The version rule: an increment always applies (it is an amount, not a state); the
    other columns, the version included, only take a record's values when its version is
    newer or equal (a NULL version never overwrites)."""
    size = PATHS[path][2]
    pages = [f"p{i}" for i in range(size)]
    sink = pg_sink(counters, path, version="v")
    await sink.start()
    try:
        await sink.write([{"page": p, "views": 10, "title": "v5", "v": 5} for p in pages])
        await sink.write([{"page": p, "views": 3, "title": "v3", "v": 3} for p in pages])
        await sink.write([{"page": p, "views": 1, "title": "null", "v": None} for p in pages])
        # the same key twice in one write, the newer first: its title wins, views add up
        await sink.write(
            [{"page": p, "views": 2, "title": "v7", "v": 7} for p in pages]
            + [{"page": p, "views": 4, "title": "v6", "v": 6} for p in pages]
        )
    finally:
        await sink.close()
    got = await pg.fetch(f"SELECT page, views, title, v FROM {counters}")
    assert {r["page"]: (r["views"], r["title"], r["v"]) for r in got} == {
        p: (20, "v7", 7) for p in pages
    }


@pytest.mark.parametrize("path", list(PATHS))
async def test_pg_domain_counters_add_on_every_path(pg: asyncpg.Connection, path: str) -> None:
    """Counters typed as a DOMAIN over bigint and a domain over that domain add up on every
    statement path, and the domain's CHECK still holds (a sum below 0 is refused)."""
    tag = uuid.uuid4().hex[:8]
    await pg.execute(f"CREATE DOMAIN d1_{tag} AS bigint CHECK (VALUE >= 0)")
    await pg.execute(f"CREATE DOMAIN d2_{tag} AS d1_{tag} CHECK (VALUE < 1000000)")
    name = f"ctr_{uuid.uuid4().hex[:12]}"
    await pg.execute(f"CREATE TABLE {name} (page text PRIMARY KEY, views d1_{tag}, hits d2_{tag})")
    pages = [f"p{i}" for i in range(PATHS[path][2])]
    sink = pg_sink(name, path, increment=("views", "hits"))
    try:
        await sink.start()
        for n in (1, 2, 3):
            await sink.write([{"page": p, "views": n, "hits": 10 * n} for p in pages])
        with pytest.raises(wb.PermanentSinkError, match="d1_"):
            await sink.write([{"page": p, "views": -100, "hits": 0} for p in pages])
        await sink.close()
        got = await pg.fetch(f"SELECT page, views, hits FROM {name}")
        assert {r["page"]: (r["views"], r["hits"]) for r in got} == dict.fromkeys(pages, (6, 60))
    finally:
        await sink.close()
        await pg.execute(f"DROP TABLE {name}")
        await pg.execute(f"DROP DOMAIN d2_{tag}")
        await pg.execute(f"DROP DOMAIN d1_{tag}")


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pg_numeric_and_float_counters(pg: asyncpg.Connection, driver: str) -> None:
    name = f"ctr_{uuid.uuid4().hex[:12]}"
    await pg.execute(
        f"CREATE TABLE {name} (page text PRIMARY KEY, amount numeric(12, 2), rate float8)"
    )
    try:
        sink = wb.PostgresSink(
            DSN, table=name, key="page", driver=driver, increment=("amount", "rate")
        )
        await sink.start()
        try:
            for _ in range(3):
                await sink.write(
                    [{"page": f"p{i}", "amount": decimal.Decimal("0.10"), "rate": 0.5}
                     for i in range(BIG)]
                )  # fmt: skip
        finally:
            await sink.close()
        got = await pg.fetch(f"SELECT amount, rate FROM {name}")
        assert {(r["amount"], r["rate"]) for r in got} == {(decimal.Decimal("0.30"), 1.5)}
        assert len(got) == BIG
    finally:
        await pg.execute(f"DROP TABLE {name}")


async def add_views(batcher: wb.AsyncBatcher) -> None:
    """10,000 views of 1 over 30 pages (p0-p9 get 334, the others 333), flushed every 1,000."""
    for i in range(10_000):
        batcher.add_nowait({"page": f"p{i % 30}", "views": 1})
        if i % 1_000 == 999:
            await batcher.flush()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pg_through_a_merging_batcher(
    pg: asyncpg.Connection, counters: str, driver: str
) -> None:
    """merge=sum_fields lands the pending deltas as one record per page; the sink adds it
    to what earlier batches wrote. 10,000 views over 30 pages, in several batches."""
    sink = wb.PostgresSink(DSN, table=counters, key="page", driver=driver, increment=("views",))
    merge = wb.merge.sum_fields("views")
    async with wb.AsyncBatcher(sink, key="page", merge=merge, linger=60) as batcher:
        await add_views(batcher)
    s = batcher.stats()
    assert_conserved(s)
    assert (s.committed, s.coalesced, s.lost) == (300, 9_700, 0)
    views = await pg_views(pg, counters)
    assert sum(views.values()) == 10_000
    assert views == {f"p{i}": 334 if i < 10 else 333 for i in range(30)}


# -- SQLite -------------------------------------------------------------------------------------
def make_db(tmp_path: Path, ddl: str) -> Path:
    path = tmp_path / "counters.db"
    with sqlite3.connect(path) as conn:
        conn.execute(ddl)
    return path


def sq_rows(path: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT * FROM counters")}


SQ_DDL = "CREATE TABLE counters (page TEXT PRIMARY KEY, views INTEGER, title TEXT, v INTEGER)"


async def test_sqlite_sums_are_exact_across_batches(tmp_path: Path) -> None:
    """Through a merging batcher, several flushes, and a NULL start and a duplicate key in
    one direct write."""
    path = make_db(tmp_path, SQ_DDL)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO counters (page, views) VALUES ('p0', NULL)")
    sink = wb.SQLiteSink(path, table="counters", key="page", increment=("views",))
    merge = wb.merge.sum_fields("views")
    async with wb.AsyncBatcher(sink, key="page", merge=merge, linger=60) as batcher:
        await add_views(batcher)
        await batcher.flush()
        await sink.write([{"page": "p0", "views": 5}, {"page": "p0", "views": 6}])
    assert_conserved(batcher.stats())
    views = {p: r[0] for p, r in sq_rows(path).items()}
    assert views == {f"p{i}": (334 if i < 10 else 333) + (11 if i == 0 else 0) for i in range(30)}


async def test_sqlite_increments_apply_whatever_the_version(tmp_path: Path) -> None:
    path = make_db(tmp_path, SQ_DDL)
    sink = wb.SQLiteSink(path, table="counters", key="page", version="v", increment=("views",))
    await sink.start()
    try:
        await sink.write([{"page": "a", "views": 10, "title": "v5", "v": 5}])
        await sink.write([{"page": "a", "views": 3, "title": "v3", "v": 3}])
        await sink.write([{"page": "a", "views": 1, "title": "null", "v": None}])
        await sink.write(
            [
                {"page": "a", "views": 2, "title": "v7", "v": 7},
                {"page": "a", "views": 4, "title": "v6", "v": 6},
            ]
        )
    finally:
        await sink.close()
    assert sq_rows(path) == {"a": (20, "v7", 7)}


@pytest.mark.parametrize(
    "declared", ["INTEGER", "BIGINT", "REAL", "DOUBLE", "NUMERIC", "DECIMAL(10,2)"]
)
async def test_sqlite_accepts_numeric_affinities(tmp_path: Path, declared: str) -> None:
    path = make_db(tmp_path, f"CREATE TABLE counters (page TEXT PRIMARY KEY, views {declared})")
    sink = wb.SQLiteSink(path, table="counters", key="page", increment=("views",))
    await sink.start()
    try:
        await sink.write([{"page": "a", "views": 1.5}])
        await sink.write([{"page": "a", "views": 2}])
    finally:
        await sink.close()
    assert sq_rows(path) == {"a": (3.5,)}


async def test_sqlite_a_sum_past_64_bits_is_refused_naming_the_column(tmp_path: Path) -> None:
    """A sum beyond a 64-bit integer, either way, is refused (PermanentSinkError naming the
    column; SQLite alone would round it to a REAL) and leaves the row; a sum reaching
    2**63 - 1 exactly, and a REAL column beside it, are written."""
    path = make_db(tmp_path, "CREATE TABLE counters (page TEXT PRIMARY KEY, views INTEGER, r REAL)")
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO counters VALUES ('up', 10, 0), ('down', -10, 0), ('max', 1, 0)")
    sink = wb.SQLiteSink(path, table="counters", key="page", increment=("views", "r"))
    await sink.start()
    try:
        for page, delta in (("up", 2**63 - 1), ("down", -(2**63))):
            with pytest.raises(wb.PermanentSinkError, match=r"increment column 'views': the sum"):
                await sink.write([{"page": page, "views": delta, "r": 1.0}])
        await sink.write([{"page": "max", "views": 2**63 - 2, "r": 1.5}])
        await sink.write([{"page": "max", "views": None, "r": 2**63 - 1}])
    finally:
        await sink.close()
    assert sq_rows(path) == {"up": (10, 0.0), "down": (-10, 0.0), "max": (2**63 - 1, 2.0**63)}


async def test_sqlite_a_record_with_a_none_key_is_dead_lettered_alone(tmp_path: Path) -> None:
    """A delta whose key is None (which ON CONFLICT never matches: each write would insert
    a new row) is dead-lettered naming the key field; the batch's other records are added.
    (A batcher with key= refuses it at add; this one does not coalesce.)"""
    path = make_db(tmp_path, "CREATE TABLE counters (id INTEGER PRIMARY KEY, views INTEGER)")
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.SQLiteSink(path, table="counters", key="id", increment=("views",))
    async with wb.AsyncBatcher(sink, linger=60, dead_letter=letters.extend) as batcher:
        good = [batcher.add_nowait({"id": 1, "views": 2}) for _ in range(2)]
        bad = batcher.add_nowait({"id": None, "views": 5})
        await batcher.flush()
        assert [await r for r in good] == [wb.Outcome.COMMITTED] * 2
        assert await bad is wb.Outcome.DEAD_LETTERED
    assert "record key field 'id' is None" in letters[0].message
    assert sq_rows(path) == {1: (4,)}


@pytest.mark.parametrize(
    ("declared", "why"),
    [("TEXT", r"declared 'TEXT' \(TEXT affinity\)"), ("", r"declared '' \(BLOB affinity\)"),
     ("BLOB", "BLOB affinity")],
)  # fmt: skip
async def test_sqlite_refuses_a_column_that_is_not_numeric(
    tmp_path: Path, declared: str, why: str
) -> None:
    path = make_db(tmp_path, f"CREATE TABLE counters (page TEXT PRIMARY KEY, views {declared})")
    sink = wb.SQLiteSink(path, table="counters", key="page", increment=("views",))
    with pytest.raises(wb.ConfigError, match=why + ".*declare it INTEGER, REAL or NUMERIC"):
        await sink.start()
    missing = wb.SQLiteSink(path, table="counters", key="page", increment=("nope",))
    with pytest.raises(wb.ConfigError, match="column 'nope' is not in table 'counters'"):
        await missing.start()


# -- two processes, the same counters ------------------------------------------------------
def run_workers(tmp_path: Path, table: str, drivers: tuple[str, str], adds: int) -> list[Any]:
    """Start one tests/increment_worker.py per driver, adding at the same moment; their
    reports."""
    start_at = time.time() + 3.0  # both start adding together, once imported and started
    outs = [tmp_path / f"w{i}.json" for i in range(len(drivers))]
    logs = [tmp_path / f"w{i}.log" for i in range(len(drivers))]
    procs = []
    try:
        for seed, (out, driver, log) in enumerate(zip(outs, drivers, logs, strict=True)):
            with log.open("wb") as f:
                args = [out, DSN, table, driver, seed, adds, start_at]
                command = [sys.executable, str(WORKER), *map(str, args)]
                procs.append(subprocess.Popen(command, stdout=f, stderr=f, cwd=ROOT))
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [json.loads(out.read_text()) for out in outs]


@pytest.mark.parametrize("drivers", [("asyncpg", "asyncpg"), ("asyncpg", "psycopg")])
def test_two_processes_increment_the_same_counters_exactly(
    tmp_path: Path, drivers: tuple[str, str]
) -> None:
    """The issue's proof: two processes, each a Batcher with merge=sum_fields("views") into
    PostgresSink(increment=("views",)), add 20,000 views each to the same 50 pages at the
    same time, in many batches each. Every page's total is exactly the views both added to
    it. (Without increment=, the same run leaves about 200 of the 40,000.)"""
    name = f"ctr_{uuid.uuid4().hex[:12]}"
    adds = 20_000
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (page text PRIMARY KEY, views bigint)")
        try:
            reports = run_workers(tmp_path, name, drivers, adds)
            views = dict(conn.execute(f"SELECT page, views FROM {name}").fetchall())
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
    expected: dict[str, int] = {}
    for r in reports:
        assert r["accepted"] == r["committed"] + r["coalesced"] == adds, r
        assert r["dead_lettered"] == r["dropped"] == r["lost"] == 0, r
        assert r["statements"] >= 20, r  # many batches each, not one at the end
        for page, n in r["added"].items():
            expected[page] = expected.get(page, 0) + n
    assert len(expected) == 50
    assert sum(views.values()) == 2 * adds
    assert views == expected
    # they really ran at once: their adding overlapped in time
    assert max(r["began"] for r in reports) < min(r["ended"] for r in reports)


def test_copy_min_is_what_this_file_assumes() -> None:
    assert SMALL < _pg_copy.COPY_MIN <= BIG
