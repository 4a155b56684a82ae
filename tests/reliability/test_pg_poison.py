"""Poison records in PostgreSQL batches: one bad record is isolated by bisection and
dead-lettered, the others commit, in a bounded number of statements."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from ..conftest import assert_conserved
from ..pg import DSN
from .cluster import Cluster
from .conftest import CountingSink, DeadLetters, Recorder

pytestmark = pytest.mark.server

BATCH = 5000
POISONS: dict[str, tuple[dict[str, Any], str]] = {
    # kind: (fields that make a record bad, the SQLSTATE the server answers)
    "check": ({"amount": -1}, "23514"),
    "not_null": ({"label": None}, "23502"),
    "nul_byte": ({"note": "bad\x00byte"}, "22021"),
}


def record(i: int, version: int = 1, **bad: Any) -> dict[str, Any]:
    return {"id": i, "v": version, "amount": i, "label": f"r{i}", "note": f"n{i}"} | bad


async def make_table(conn: asyncpg.Connection) -> str:
    name = f"poison_{uuid.uuid4().hex[:10]}"
    await conn.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL, "
        "amount int CHECK (amount >= 0), label text NOT NULL, note text)"
    )
    return name


@pytest.fixture
async def poison_table(pg: asyncpg.Connection) -> AsyncIterator[str]:
    name = await make_table(pg)
    yield name
    await pg.execute(f"DROP TABLE IF EXISTS {name}")


def max_writes(n: int, bad: int) -> int:
    """Bisection writes for ``n`` records with ``bad`` poisons: the first write, then two per
    level for each poison's path down to a single record."""
    return 1 + 2 * bad * math.ceil(math.log2(n))


async def run_batch(
    table: str, records: list[dict[str, Any]], dsn: str = DSN
) -> tuple[CountingSink, DeadLetters, Recorder, wb.Stats]:
    inner = wb.PostgresSink(dsn, table=table, key="id", version="v")
    sink, dead, rec = CountingSink(inner), DeadLetters(), Recorder()
    async with wb.AsyncBatcher(
        sink, key="id", version="v", max_batch=BATCH, linger=60, dead_letter=dead
    ) as b:
        rec.start(b)
        for r in records:
            b.add_nowait(r)
        await b.flush()
        first = b.stats()
        assert_conserved(first)
        # a following batch is not held up: one clean write, committed
        before = sink.writes
        for i in range(len(records), len(records) + 100):
            b.add_nowait(record(i))
        await b.flush()
        assert sink.writes == before + 1
        assert b.stats().committed == first.committed + 100
    await rec.stop()
    assert_conserved(b.stats())
    assert b.stats().lost == 0
    assert not rec.of(wb.RetryScheduled), "a permanent error must not be retried"
    return sink, dead, rec, first


async def check_table(conn: asyncpg.Connection, table: str, good: list[dict[str, Any]]) -> None:
    rows = {r["id"]: dict(r) for r in await conn.fetch(f"SELECT * FROM {table}")}
    expected = {r["id"]: r for r in good}
    assert set(rows) >= set(expected)
    assert all(rows[k] == v for k, v in expected.items())


@pytest.mark.parametrize("kind", list(POISONS))
async def test_one_poison_in_5000_is_isolated(
    pg: asyncpg.Connection, poison_table: str, kind: str
) -> None:
    """A batch of 5,000 with one CHECK / NOT NULL / NUL-byte poison commits 4,999 (each at its
    version), dead-letters the one with its error class and SQLSTATE, in at most 26 writes
    beyond the first."""
    fields, sqlstate = POISONS[kind]
    at = 3217
    records = [record(i, version=i % 7 + 1, **(fields if i == at else {})) for i in range(BATCH)]
    sink, dead, rec, stats = await run_batch(poison_table, records)
    assert stats.committed == BATCH - 1
    assert stats.dead_lettered == 1
    assert dead.records == [records[at]]
    (entry,) = dead.entries
    assert entry.error == "PermanentSinkError"
    assert f"SQLSTATE {sqlstate}" in entry.message
    extra = sink.writes - 2  # less the first write and the following batch's one
    assert extra <= max_writes(BATCH, 1) - 1 == 26
    assert rec.of(wb.BatchFailed)[-1][1].attempt == 1
    await check_table(pg, poison_table, [r for i, r in enumerate(records) if i != at])
    print(f"\n{kind}: {sink.writes - 1} writes for the poison batch ({extra} beyond the first)")


async def test_two_poisons_in_one_batch(pg: asyncpg.Connection, poison_table: str) -> None:
    """Two poisons of different kinds in one batch of 5,000: both dead-lettered, 4,998
    committed, within twice the one-poison bound."""
    bad = {100: POISONS["check"][0], 4000: POISONS["nul_byte"][0]}
    records = [record(i, **bad.get(i, {})) for i in range(BATCH)]
    sink, dead, _, stats = await run_batch(poison_table, records)
    assert stats.committed == BATCH - 2
    assert sorted(r["id"] for r in dead.records) == sorted(bad)
    assert sink.writes - 1 <= max_writes(BATCH, 2)
    await check_table(pg, poison_table, [r for r in records if r["id"] not in bad])
    print(f"\ntwo poisons: {sink.writes - 1} writes for the poison batch")


async def test_all_poison_batch(pg: asyncpg.Connection, poison_table: str) -> None:
    """A batch of 64 records that are all bad: all 64 dead-lettered, each alone, in exactly
    127 writes (every node of the bisection tree), nothing in the table."""
    records = [record(i, amount=-i - 1) for i in range(64)]
    sink, dead, _, stats = await run_batch(poison_table, records)
    assert stats.committed == 0
    assert stats.dead_lettered == 64
    assert sorted(r["id"] for r in dead.records) == list(range(64))
    assert sink.writes - 1 == 2 * 64 - 1
    ids = {r["id"] for r in await pg.fetch(f"SELECT id FROM {poison_table}")}
    assert ids.isdisjoint(range(64))


async def test_one_write_is_one_statement(cluster: Cluster, private_pg: asyncpg.Connection) -> None:
    """Checked by the server (pg_stat_statements, private cluster): every committed
    PostgresSink.write of a keyed table ran exactly one INSERT and no BEGIN/COMMIT."""
    await private_pg.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    table = await make_table(private_pg)
    await private_pg.execute("SELECT pg_stat_statements_reset()")
    records = [record(i, **(POISONS["check"][0] if i == 777 else {})) for i in range(BATCH)]
    sink, _, rec, _ = await run_batch(table, records, dsn=cluster.dsn)
    committed_writes = len(rec.of(wb.BatchCommitted))
    assert committed_writes == sink.writes - len(rec.of(wb.BatchFailed))
    calls = {
        r["query"].split()[0].upper(): r["calls"]
        for r in await private_pg.fetch(
            "SELECT query, calls FROM pg_stat_statements WHERE query ILIKE $1 "
            "OR query IN ('BEGIN', 'COMMIT', 'ROLLBACK')",
            f"%{table}%",
        )
    }
    assert calls.get("INSERT") == committed_writes == sink.inner.statements
    assert "BEGIN" not in calls
    assert "COMMIT" not in calls
    await private_pg.execute(f"DROP TABLE {table}")
