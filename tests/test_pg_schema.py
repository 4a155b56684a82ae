"""A schema change under a running PostgresSink (table dropped, column dropped or retyped,
privilege revoked) is a configuration problem no record causes: the batcher pauses as
failing and probes once per backoff step instead of bisecting every batch into dead
letters, and everything commits once the schema is repaired."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import writebehind as wb
from writebehind._errors import SinkMisconfigured  # not exported by writebehind yet
from writebehind.sinks._pg import map_error

from .pg import DSN

pytestmark = pytest.mark.server

OUTAGE = 0.8  # seconds the schema stays broken
BASE, CAP = 0.05, 0.2  # the retry policy's backoff: at most OUTAGE / BASE probes in the outage


class Counting:
    """Wraps a sink and counts its writes (every attempt the engine makes)."""

    def __init__(self, inner: wb.PostgresSink) -> None:
        self.inner = inner
        self.writes = 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, batch: list[Any]) -> None:
        self.writes += 1
        await self.inner.write(batch)

    def __repr__(self) -> str:
        return f"Counting({self.inner!r})"


CREATE = "CREATE TABLE {t} (id integer PRIMARY KEY, v integer NOT NULL, note text)"


@pytest.fixture
async def schema_table(pg: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"schema_{uuid.uuid4().hex[:12]}"
    await pg.execute(CREATE.format(t=name))
    yield name
    await pg.execute(f"DROP TABLE IF EXISTS {name}")


def _breakages(t: str) -> dict[str, tuple[str, str]]:
    """Each schema change and the statement that repairs it."""
    return {
        "drop-table": (f"DROP TABLE {t}", CREATE.format(t=t)),
        "drop-column": (
            f"ALTER TABLE {t} DROP COLUMN note",
            f"ALTER TABLE {t} ADD COLUMN note text",
        ),
        "retype-column": (
            f"ALTER TABLE {t} ALTER COLUMN note TYPE integer USING NULL",
            f"ALTER TABLE {t} ALTER COLUMN note TYPE text",
        ),
        "revoke-privilege": (
            f"REVOKE INSERT, UPDATE ON {t} FROM wb_schema_probe",
            f"GRANT INSERT, UPDATE ON {t} TO wb_schema_probe",
        ),
    }


async def _probe_role(pg: asyncpg.Connection, table: str) -> str:
    """A login role that owns nothing, so a privilege can be revoked from it."""
    await pg.execute(
        "DO $$ BEGIN CREATE ROLE wb_schema_probe LOGIN; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )
    await pg.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO wb_schema_probe")
    scheme, rest = DSN.split("://", 1)
    return f"{scheme}://wb_schema_probe@{rest.rsplit('@', 1)[-1]}"


@pytest.mark.parametrize(
    "change", ["drop-table", "drop-column", "retype-column", "revoke-privilege"]
)
async def test_a_schema_change_mid_run_pauses_instead_of_dead_lettering(
    pg: asyncpg.Connection, schema_table: str, change: str
) -> None:
    """A running batcher meets a schema change: while it lasts, writes go down to one probe
    per backoff step (not a bisection of every batch), no record is dead-lettered, and once
    the schema is repaired every record commits."""
    t = schema_table
    dsn = await _probe_role(pg, t) if change == "revoke-privilege" else DSN
    breaking, repair = _breakages(t)[change]
    sink = Counting(wb.PostgresSink(dsn, table=t, key="id", version="v"))
    letters: list[wb.DeadLetterEntry] = []
    retry = wb.RetryPolicy(base=BASE, cap=CAP, max_attempts=1000, deadline=60)
    async with wb.AsyncBatcher(
        sink, key="id", version="v", max_batch=100, max_pending=2000, linger=0.01,
        max_in_flight=2,
        retry=retry, dead_letter=letters.extend,
    ) as b:  # fmt: skip
        for i in range(300):
            b.add_nowait({"id": i, "v": 1, "note": "before"})
        await b.flush()
        await pg.execute(breaking)
        before = (sink.writes, b.stats().write_errors)
        broke_at = time.monotonic()
        receipts = [b.add_nowait({"id": 1000 + i, "v": 1, "note": "during"}) for i in range(1000)]
        await asyncio.sleep(OUTAGE)
        await pg.execute(repair)
        outage = time.monotonic() - broke_at
        await b.flush(timeout=30)
        failed = b.stats().write_errors - before[1]
        writes = sink.writes - before[0]
    outcomes = {await r for r in receipts}
    assert letters == []
    assert b.stats().dead_lettered == 0
    assert outcomes == {wb.Outcome.COMMITTED}
    # one probe at a time, one per backoff step (>= BASE s each): nothing near the
    # 2 x 100 - 1 writes per batch a bisection makes
    assert 1 <= failed <= outage / BASE + 2, (failed, outage)
    assert writes <= failed + 10 + 2  # the 10 batches once each when it works, and slack
    during = await pg.fetchval(f"SELECT count(*) FROM {t} WHERE note = 'during'")
    assert during == 1000


# -- the mapping, without a server ----------------------------------------------------
class _Err(Exception):
    def __init__(self, sqlstate: str, message: str = "boom") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "sqlstate", ["42P01", "42703", "42804", "42501", "3F000", "42883", "42P10"]
)
def test_errors_no_record_can_cause_are_sink_misconfigured(sqlstate: str) -> None:
    """Undefined table, column or function, a column's type mismatch, a lost privilege, a
    missing schema or unique index: SinkMisconfigured (retriable), said to be a
    configuration problem."""
    error = map_error(_Err(sqlstate))
    assert isinstance(error, SinkMisconfigured)
    assert error.retriable
    assert f"SQLSTATE {sqlstate}" in str(error)
    assert "no record can cause" in str(error)


@pytest.mark.parametrize("sqlstate", ["22P02", "22001", "22003", "23505", "23502", "23514"])
def test_record_caused_errors_stay_permanent(sqlstate: str) -> None:
    """Data exceptions (class 22) and integrity violations (class 23) are the record's:
    permanent, so the batch is split to find it."""
    error = map_error(_Err(sqlstate))
    assert type(error) is wb.PermanentSinkError


def test_stale_statement_caches_are_retriable() -> None:
    """asyncpg's InvalidCachedStatementError and OutdatedSchemaCacheError (after an ALTER)
    pass on the next attempt, which prepares afresh."""
    from asyncpg.exceptions import InvalidCachedStatementError, OutdatedSchemaCacheError

    cached = InvalidCachedStatementError("cached plan must not change result type")
    outdated = OutdatedSchemaCacheError("type of column changed")
    for exc in (cached, outdated):
        assert map_error(exc).retriable, exc
