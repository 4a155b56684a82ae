"""Hostile review of ``increment=`` (issue 17) and ``from_model`` (issue 15): the defects
found, each a test that failed before its fix; those not fixed yet are marked
``xfail(strict=True)`` with the diagnosis. Against the real PostgreSQL (tests/pg.py) and
real SQLite files."""

from __future__ import annotations

import decimal
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import writebehind as wb

from .pg import DSN

pytestmark = pytest.mark.server


@pytest.fixture
async def counters(pg: asyncpg.Connection) -> AsyncIterator[str]:
    """A fresh counters table (page text key, views bigint) with page 'a' at 10 views."""
    name = f"hx_{uuid.uuid4().hex[:12]}"
    await pg.execute(f"CREATE TABLE {name} (page text PRIMARY KEY, views bigint, title text)")
    await pg.execute(f"INSERT INTO {name} VALUES ('a', 10, 'x')")
    yield name
    await pg.execute(f"DROP TABLE IF EXISTS {name}")


async def write_once(table: str, driver: str, batch: list[Any]) -> Exception | None:
    sink = wb.PostgresSink(DSN, table=table, key="page", driver=driver, increment=("views",))
    await sink.start()
    try:
        await sink.write(batch)
    except Exception as exc:  # the outcome under test
        return exc
    finally:
        await sink.close()
    return None


async def views(pg: asyncpg.Connection, table: str) -> Any:
    return await pg.fetchval(f"SELECT views FROM {table} WHERE page = 'a'")


async def test_psycopg_two_str_deltas_of_one_key_are_concatenated_not_added(
    pg: asyncpg.Connection, counters: str
) -> None:
    """Shown: views 10 + '1' + '2' ends at 22 with driver='psycopg' (the strings were
    concatenated before the sum). Expected: a PermanentSinkError (as asyncpg gives) or 13,
    never a silent 22."""
    error = await write_once(
        counters, "psycopg", [{"page": "a", "views": "1"}, {"page": "a", "views": "2"}]
    )
    got = await views(pg, counters)
    assert got != 22, "the two str deltas were concatenated into '12' and added"
    assert isinstance(error, wb.PermanentSinkError) or got == 13


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_fractional_delta_into_an_integer_counter_is_not_silently_cut(
    pg: asyncpg.Connection, counters: str, driver: str
) -> None:
    """Shown: views 10 + Decimal('1.5') ends at 11 (asyncpg) or 12 (psycopg), and
    10 + 0.4 + 0.4 at 10 (asyncpg): the fraction is lost with no error. Expected: the
    record refused (PermanentSinkError) and the counter left at 10."""
    error = await write_once(counters, driver, [{"page": "a", "views": decimal.Decimal("1.5")}])
    assert isinstance(error, wb.PermanentSinkError)
    assert await views(pg, counters) == 10


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_bool_delta_is_refused_not_counted_as_one(
    pg: asyncpg.Connection, counters: str, driver: str
) -> None:
    """Shown: two records {'views': True} of one key add 2 to the counter on both drivers
    (and one alone adds 1 with asyncpg, is refused with psycopg). Expected: refused
    (PermanentSinkError), the counter left at 10, the same on both drivers."""
    error = await write_once(
        counters, driver, [{"page": "a", "views": True}, {"page": "a", "views": True}]
    )
    assert isinstance(error, wb.PermanentSinkError)
    assert await views(pg, counters) == 10


async def sqlite_write(tmp_path: Path, batch: list[Any]) -> tuple[Exception | None, Any]:
    """Write ``batch`` to a SQLite counters table with page 'a' at 10; (error, views)."""
    path = str(tmp_path / "c.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE c (page TEXT PRIMARY KEY, views INTEGER, title TEXT)")
        db.execute("INSERT INTO c VALUES ('a', 10, 'x')")
    sink = wb.SQLiteSink(path, table="c", key="page", increment=("views",))
    await sink.start()
    error: Exception | None = None
    try:
        await sink.write(batch)
    except Exception as exc:  # the outcome under test
        error = exc
    finally:
        await sink.close()
    db = sqlite3.connect(path)
    try:
        return error, db.execute("SELECT views FROM c WHERE page = 'a'").fetchone()[0]
    finally:
        db.close()


async def test_sqlite_a_non_numeric_str_delta_is_not_silently_added_as_zero(
    tmp_path: Path,
) -> None:
    """Shown: write([{'page': 'a', 'views': 'abc'}]) succeeds and the counter stays 10 (the
    delta was taken as 0). Expected: PermanentSinkError (dead-lettered), as asyncpg gives."""
    error, got = await sqlite_write(tmp_path, [{"page": "a", "views": "abc"}])
    assert isinstance(error, wb.PermanentSinkError), (error, got)


async def test_sqlite_a_counter_overflowing_int64_is_refused_not_turned_into_a_float(
    tmp_path: Path,
) -> None:
    """Shown: 10 + (2**63 - 1) is written as 9.223372036854776e+18 (a REAL). Expected: an
    error (dead-lettered) and the counter left at 10, as with PostgreSQL's bigint."""
    error, got = await sqlite_write(tmp_path, [{"page": "a", "views": 2**63 - 1}])
    assert isinstance(got, int), f"the counter became {got!r}"
    assert isinstance(error, wb.PermanentSinkError)
    assert got == 10


async def test_from_model_sink_refuses_an_instance_of_another_model(tmp_path: Path) -> None:
    """Shown: SQLiteSink.from_model(Page) writes an Invoice instance (table 'invoices')
    into 'pages' as a row. Expected: the record refused, the 'pages' table left empty."""

    class Base(DeclarativeBase):
        pass

    class Page(Base):
        __tablename__ = "pages"
        id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
        title: Mapped[str | None] = mapped_column(sa.String)

    class Invoice(Base):
        __tablename__ = "invoices"
        id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
        title: Mapped[str | None] = mapped_column(sa.String)

    path = str(tmp_path / "m.db")
    Base.metadata.create_all(sa.create_engine(f"sqlite:///{path}"))
    sink = wb.SQLiteSink.from_model(Page, path)
    await sink.start()
    error: Exception | None = None
    try:
        await sink.write([Invoice(id=9, title="an invoice")])
    except Exception as exc:  # the outcome under test
        error = exc
    finally:
        await sink.close()
    written = fetch(path, "SELECT id, title FROM pages")
    assert written == [], f"an Invoice was written into pages: {written}"
    assert isinstance(error, wb.PermanentSinkError | wb.ConfigError)


async def test_an_increment_sink_behind_a_batcher_without_merge_loses_no_delta(
    tmp_path: Path,
) -> None:
    """Shown: three +1 deltas of one key through AsyncBatcher(sink, key='page') (no merge)
    leave the counter at 11, not 13. Expected: a ConfigError when the batcher starts, or
    13."""
    path = str(tmp_path / "c.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE c (page TEXT PRIMARY KEY, views INTEGER)")
        db.execute("INSERT INTO c VALUES ('a', 10)")
    sink = wb.SQLiteSink(path, table="c", key="page", increment=("views",))
    try:
        async with wb.AsyncBatcher(sink, key="page", linger=5) as batcher:
            for _ in range(3):
                await batcher.add({"page": "a", "views": 1})
    except wb.ConfigError:
        return  # refused at start: acceptable
    db = sqlite3.connect(path)
    try:
        got = db.execute("SELECT views FROM c WHERE page = 'a'").fetchone()[0]
    finally:
        db.close()
    assert got == 13


def fetch(path: str, sql: str) -> list[Any]:
    """The rows ``sql`` reads from the SQLite file at ``path``."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def counter_model(tmp_path: Path, table: str, key: str, key_type: Any) -> tuple[Any, str]:
    """A fresh declarative model of ``table`` (``key`` the primary key, of ``key_type``, and
    an integer ``views``) and a SQLite file holding its table."""

    class Base(DeclarativeBase):
        pass

    model = type(
        table.title(),
        (Base,),
        {
            "__tablename__": table,
            key: mapped_column(key_type, primary_key=True),
            "views": mapped_column(sa.Integer),
        },
    )
    path = str(tmp_path / f"{table}.db")
    Base.metadata.create_all(sa.create_engine(f"sqlite:///{path}"))
    return model, path


async def test_from_model_orm_instances_can_be_summed_for_an_increment_sink(
    tmp_path: Path,
) -> None:
    """Shown: from_model(Page, increment=('views',)) with merge=sum_fields('views'): the
    second add of a pending key raises RecordError. Expected: the deltas summed (views 3)."""

    Page, path = counter_model(tmp_path, "pages", "page", sa.String)
    sink = wb.SQLiteSink.from_model(Page, path, increment=("views",))
    async with wb.AsyncBatcher(
        sink, key=sink.record_key, merge=wb.merge.sum_fields("views"), linger=5
    ) as batcher:
        await batcher.add(Page(page="a", views=1))
        await batcher.add(Page(page="a", views=2))
    assert fetch(path, "SELECT views FROM pages WHERE page = 'a'") == [(3,)]


async def test_sqlite_an_orm_instance_with_a_none_key_is_refused_not_a_new_row(
    tmp_path: Path,
) -> None:
    """Shown: SQLiteSink.from_model(Counter, increment=('views',)).write of Counter(id=None,
    views=1) twice succeeds and makes rows (1, 1) and (2, 1). Expected: PermanentSinkError
    (the record has no key to add to), no row, as the PostgreSQL sink gives."""

    Counter, path = counter_model(tmp_path, "counters", "id", sa.Integer)
    sink = wb.SQLiteSink.from_model(Counter, path, increment=("views",))
    await sink.start()
    errors: list[Exception] = []
    try:
        for _ in range(2):
            try:
                await sink.write([Counter(id=None, views=1)])
            except Exception as exc:  # the outcome under test
                errors.append(exc)
    finally:
        await sink.close()
    written = fetch(path, "SELECT id, views FROM counters ORDER BY id")
    assert written == [], f"a None key made new rows: {written}"
    assert len(errors) == 2
    assert all(isinstance(e, wb.PermanentSinkError) for e in errors)


@pytest.mark.parametrize("column_type", ["double precision", "numeric"])
async def test_pg_a_nan_delta_does_not_poison_the_counter(
    pg: asyncpg.Connection, column_type: str
) -> None:
    """Shown: a float('nan') delta to a double precision/numeric counter at 10 is written
    without error and the counter is NaN from then on (a later +1 leaves NaN). Expected: the
    NaN record refused, the counter 11 after the +1."""
    name = f"hx_{uuid.uuid4().hex[:12]}"
    await pg.execute(f"CREATE TABLE {name} (page text PRIMARY KEY, views {column_type})")
    try:
        await pg.execute(f"INSERT INTO {name} VALUES ('a', 10)")
        sink = wb.PostgresSink(DSN, table=name, key="page", increment=("views",))
        await sink.start()
        error: Exception | None = None
        try:
            try:
                await sink.write([{"page": "a", "views": float("nan")}])
            except Exception as exc:  # the outcome under test
                error = exc
            await sink.write([{"page": "a", "views": 1}])
        finally:
            await sink.close()
        got = await pg.fetchval(f"SELECT views::float8 FROM {name} WHERE page = 'a'")
        assert got == 11, f"the counter is {got!r} after a NaN delta and a +1"
        assert isinstance(error, wb.PermanentSinkError)
    finally:
        await pg.execute(f"DROP TABLE {name}")


class _CounterBase(DeclarativeBase):
    pass


class _Hits(_CounterBase):
    __tablename__ = "hits"
    page: Mapped[str] = mapped_column(sa.String, primary_key=True)
    views: Mapped[int | None] = mapped_column(sa.Integer)
    v: Mapped[int | None] = mapped_column(sa.Integer)


@pytest.mark.parametrize("make", ["sqlite", "postgres"])
@pytest.mark.parametrize("bad", ["views", 42])
def test_from_model_increment_given_a_str_or_a_number_is_the_constructors_config_error(
    tmp_path: Path, make: str, bad: Any
) -> None:
    """Shown: from_model(model, increment='views') raises "increment: 'i' is not a column"
    (the 'v' already matched a column), and increment=42 a TypeError. Expected: the
    ConfigError the sink's constructor gives, naming the fix ('takes a tuple')."""
    cls: Any = wb.SQLiteSink if make == "sqlite" else wb.PostgresSink
    target = str(tmp_path / "h.db") if make == "sqlite" else DSN
    with pytest.raises(wb.ConfigError, match="takes a tuple"):
        cls.from_model(_Hits, target, increment=bad)


@pytest.mark.parametrize("column_type", ["integer[]", "bigint[]", "numeric(5,2)[]"])
async def test_pg_an_array_column_in_increment_is_refused_at_start(
    pg: asyncpg.Connection, column_type: str
) -> None:
    """Shown: increment=('views',) on a views integer[] column starts. Expected: start()
    raises ConfigError ('cannot be added to'), as for interval or money."""
    name = f"hx_{uuid.uuid4().hex[:12]}"
    await pg.execute(f"CREATE TABLE {name} (page text PRIMARY KEY, views {column_type})")
    sink = wb.PostgresSink(DSN, table=name, key="page", increment=("views",))
    try:
        with pytest.raises(wb.ConfigError, match="cannot be added to"):
            await sink.start()
    finally:
        await sink.close()
        await pg.execute(f"DROP TABLE {name}")


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_pg_a_domain_over_bigint_is_accepted_as_a_counter(
    pg: asyncpg.Connection, driver: str
) -> None:
    """Shown: start() raises ConfigError "... is cnt_..., which cannot be added to". Expected:
    it starts and a +2 then +3 leave the counter at 5."""
    domain = f"cnt_{uuid.uuid4().hex[:8]}"
    name = f"hx_{uuid.uuid4().hex[:12]}"
    await pg.execute(f"CREATE DOMAIN {domain} AS bigint CHECK (VALUE >= 0)")
    await pg.execute(f"CREATE TABLE {name} (page text PRIMARY KEY, views {domain})")
    sink = wb.PostgresSink(DSN, table=name, key="page", driver=driver, increment=("views",))
    try:
        await sink.start()
        await sink.write([{"page": "a", "views": 2}])
        await sink.write([{"page": "a", "views": 3}])
        assert await pg.fetchval(f"SELECT views FROM {name}") == 5
    finally:
        await sink.close()
        await pg.execute(f"DROP TABLE {name}")
        await pg.execute(f"DROP DOMAIN {domain}")


@pytest.fixture(params=["domain", "domain over a domain"])
async def domain_counters(pg: asyncpg.Connection, request: Any) -> AsyncIterator[str]:
    """A counters table like ``counters``, views a DOMAIN over bigint (or a domain over
    such a domain), page 'a' at 10."""
    tag = uuid.uuid4().hex[:8]
    inner, outer, name = f"cnt_{tag}", f"cnt2_{tag}", f"hx_{tag}"
    await pg.execute(f"CREATE DOMAIN {inner} AS bigint CHECK (VALUE >= 0)")
    await pg.execute(f"CREATE DOMAIN {outer} AS {inner} CHECK (VALUE < 1000000)")
    views = inner if request.param == "domain" else outer
    await pg.execute(f"CREATE TABLE {name} (page text PRIMARY KEY, views {views}, title text)")
    await pg.execute(f"INSERT INTO {name} VALUES ('a', 10, 'x')")
    yield name
    await pg.execute(f"DROP TABLE IF EXISTS {name}")
    await pg.execute(f"DROP DOMAIN {outer}")
    await pg.execute(f"DROP DOMAIN {inner}")


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_fractional_delta_into_a_domain_over_bigint_is_not_silently_cut(
    pg: asyncpg.Connection, domain_counters: str, driver: str
) -> None:
    """Shown (once a domain over bigint was accepted as a counter): views 10 +
    Decimal('1.5') ends at 11 (asyncpg) or 12 (psycopg), the whole-number check looking at
    the domain's name, not its base type. Expected: as for a bigint column, the record
    refused (PermanentSinkError naming the column) and the counter left at 10; a whole
    delta still adds."""
    error = await write_once(
        domain_counters, driver, [{"page": "a", "views": decimal.Decimal("1.5")}]
    )
    assert isinstance(error, wb.PermanentSinkError)
    assert "'views'" in str(error)
    assert "whole number" in str(error)
    assert await views(pg, domain_counters) == 10
    assert await write_once(domain_counters, driver, [{"page": "a", "views": 2.0}]) is None
    assert await views(pg, domain_counters) == 12
