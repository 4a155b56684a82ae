"""Records of one key in one batch, in different record shapes: the newest is written, in
both SQL sinks (docs/guide.md, "Did the row change?"). The shapes' statements run one
after another, so before ``sinks/_newest`` the shape written last won whatever its age: a
tie on the version (or no version) went to the earlier record."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from .pg import DSN, connect

PAD = 40  # records of other keys: above the psycopg path's COPY_MIN, so COPY + merge runs


def tie(v: int | None = 5) -> list[dict[str, Any]]:
    """One key three times, two shapes, one version: the third is the newest."""
    return [
        {"id": "a", "name": "first", "v": v, "extra": 1},
        {"id": "a", "name": "second", "v": v},
        {"id": "a", "name": "third", "v": v, "extra": 3},
    ]


def padded(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "name": "p", "v": 0} for i in range(PAD)] + batch


# -- SQLite -----------------------------------------------------------------------------------
def sqlite_table(tmp_path: Path, increment: bool = False) -> Path:
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as c:
        c.execute(
            "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, v INTEGER, extra INTEGER"
            + (", views INTEGER" if increment else "")
            + ")"
        )
    return path


def sqlite_row(path: Path, key: str = "a") -> tuple[Any, ...]:
    with sqlite3.connect(path) as c:
        row = c.execute("SELECT name, v, extra FROM t WHERE id = ?", (key,)).fetchone()
    assert row is not None
    return tuple(row)


async def sqlite_write(path: Path, batch: list[dict[str, Any]], **kw: Any) -> Any:
    kw.setdefault("version", "v")
    sink = wb.SQLiteSink(path, table="t", key="id", **kw)
    await sink.start()
    try:
        return await sink.write(batch)
    finally:
        await sink.close()


async def test_sqlite_a_tie_across_shapes_goes_to_the_later_record(tmp_path: Path) -> None:
    path = sqlite_table(tmp_path)
    await sqlite_write(path, tie())
    assert sqlite_row(path) == ("third", 5, 3)  # it was ("second", 5, 1)


async def test_sqlite_without_a_version_the_later_record_wins(tmp_path: Path) -> None:
    path = sqlite_table(tmp_path)
    await sqlite_write(path, [{k: v for k, v in r.items() if k != "v"} for r in tie()],
                       version=None)  # fmt: skip
    assert sqlite_row(path) == ("third", None, 3)


async def test_sqlite_the_greatest_version_wins_whatever_its_shape(tmp_path: Path) -> None:
    path = sqlite_table(tmp_path)
    batch = tie()
    batch[1]["v"] = 9  # the middle record, alone in its shape, is the newest
    await sqlite_write(path, batch)
    assert sqlite_row(path) == ("second", 9, None)


async def test_sqlite_report_stale_names_the_older_records(tmp_path: Path) -> None:
    path = sqlite_table(tmp_path)
    result = await sqlite_write(path, padded(tie()), report_stale=True)
    assert result is not None
    assert result.stale == [PAD, PAD + 1]
    assert sqlite_row(path) == ("third", 5, 3)


async def test_sqlite_increment_adds_every_shape(tmp_path: Path) -> None:
    """With increment=, every delta adds, whatever its shape: none is left out."""
    path = sqlite_table(tmp_path, increment=True)
    batch = [{"id": "a", "views": 1}, {"id": "a", "views": 2, "name": "x"}, {"id": "a", "views": 4}]
    await sqlite_write(path, batch, version=None, increment=("views",))
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT views FROM t WHERE id = 'a'").fetchone() == (7,)


async def test_a_batcher_without_the_key_writes_the_newest(tmp_path: Path) -> None:
    """Behind a batcher that does not coalesce by the sink's key; with report_stale, the
    older records resolve STALE."""
    path = sqlite_table(tmp_path)
    sink = wb.SQLiteSink(path, table="t", key="id", version="v", report_stale=True)
    async with wb.AsyncBatcher(sink, max_batch=10, linger=3600) as b:
        receipts = [b.add_nowait(r) for r in tie()]
    assert [r.outcome for r in receipts] == [
        wb.Outcome.STALE, wb.Outcome.STALE, wb.Outcome.COMMITTED,
    ]  # fmt: skip
    assert sqlite_row(path) == ("third", 5, 3)


# -- PostgreSQL -------------------------------------------------------------------------------
@pytest.fixture
async def pg_table() -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    conn = await connect()
    name = f"nw_{uuid.uuid4().hex[:12]}"
    await conn.execute(
        f"CREATE TABLE {name} (id text PRIMARY KEY, name text, v integer, extra integer)"
    )
    yield conn, name
    await conn.execute(f"DROP TABLE IF EXISTS {name}")
    await conn.close()


async def pg_write(table: str, batch: list[dict[str, Any]], driver: str, **kw: Any) -> Any:
    sink = wb.PostgresSink(DSN, table=table, key="id", version="v", driver=driver, **kw)
    await sink.start()
    try:
        return await sink.write(batch)
    finally:
        await sink.close()


@pytest.mark.server
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("pad", [False, True], ids=["small", "copy"])
async def test_postgres_a_tie_across_shapes_goes_to_the_later_record(
    pg_table: tuple[asyncpg.Connection, str], driver: str, pad: bool
) -> None:
    conn, table = pg_table
    await pg_write(table, padded(tie()) if pad else tie(), driver)
    row = await conn.fetchrow(f"SELECT name, v, extra FROM {table} WHERE id = 'a'")
    assert tuple(row) == ("third", 5, 3)


@pytest.mark.server
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_postgres_report_stale_names_the_older_records(
    pg_table: tuple[asyncpg.Connection, str], driver: str
) -> None:
    conn, table = pg_table
    result = await pg_write(table, padded(tie()), driver, report_stale=True)
    assert result is not None
    assert result.stale == [PAD, PAD + 1]
    row = await conn.fetchrow(f"SELECT name, v, extra FROM {table} WHERE id = 'a'")
    assert tuple(row) == ("third", 5, 3)
