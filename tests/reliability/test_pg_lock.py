"""A table locked by another session: writes hang, and ``close(timeout=5)`` still returns on
time, counts the unwritten records as lost, and leaves no thread, task or connection behind.

Shape: one test per API; each holds ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` in an open
transaction for ten rounds of open batcher -> add 250 -> a write blocks on the lock -> close.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from ..conftest import assert_conserved
from ..pg import DSN, connect

pytestmark = pytest.mark.server

ROUNDS = 10
RECORDS = 250
CLOSE_TIMEOUT = 5.0
SLACK = 0.5


async def backends(pg: asyncpg.Connection, app: str) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE application_name = $1",
        app,
    )


async def wait_until_blocked(pg: asyncpg.Connection, app: str) -> None:
    """Until one of the sink's statements waits on the lock."""
    async with asyncio.timeout(5):
        while True:
            if any(r["wait_event_type"] == "Lock" for r in await backends(pg, app)):
                return
            await asyncio.sleep(0.01)


async def wait_no_backends(pg: asyncpg.Connection, app: str) -> list[asyncpg.Record]:
    """The sink's server connections, after giving exiting backends a moment to go."""
    for _ in range(50):
        left = await backends(pg, app)
        if not left:
            break
        await asyncio.sleep(0.02)
    return left


async def one_round(api: str, table: str, pg: asyncpg.Connection) -> float:
    app = f"wb_lock_{uuid.uuid4().hex[:8]}"
    sink = wb.PostgresSink(f"{DSN}?application_name={app}", table=table, key="id", version="v")
    opts: dict[str, Any] = dict(key="id", version="v", max_batch=100, linger=0.01)
    receipts: list[wb.Receipt] = []
    if api == "async":
        b: Any = wb.AsyncBatcher(sink, **opts)
        await b.start()
        receipts = [b.add_nowait({"id": i, "v": 1}) for i in range(RECORDS)]
        await wait_until_blocked(pg, app)
        began = time.monotonic()
        report = await b.close(timeout=CLOSE_TIMEOUT)
    else:
        b = wb.Batcher(sink, **opts)
        await asyncio.to_thread(b.start)
        receipts = [b.add_nowait({"id": i, "v": 1}) for i in range(RECORDS)]
        await wait_until_blocked(pg, app)
        began = time.monotonic()
        report = await asyncio.to_thread(b.close, CLOSE_TIMEOUT)
    took = time.monotonic() - began
    assert took <= CLOSE_TIMEOUT + SLACK
    assert report.timed_out
    assert report.lost == RECORDS == report.stats.lost
    assert_conserved(report.stats)
    assert {r.outcome for r in receipts} == {wb.Outcome.LOST}
    assert sink._pool is None, "the sink's own pool must be gone after close"
    assert await wait_no_backends(pg, app) == []
    return took


@pytest.mark.parametrize("api", ["async", "sync"])
async def test_close_on_time_while_a_lock_blocks_writes(pg: asyncpg.Connection, api: str) -> None:
    """Ten rounds in a row: close(timeout=5) returns within 5.5 s, all 250 records LOST and
    counted, the sink's pool and server connections gone, no thread or task left over;
    nothing was written while the lock was held."""
    table = f"locked_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
    locker = await connect()
    tx = locker.transaction()
    await tx.start()
    await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    await asyncio.to_thread(lambda: None)  # the default executor's worker exists from now on
    threads = set(threading.enumerate())
    tasks = asyncio.all_tasks()
    durations: list[float] = []
    try:
        for _ in range(ROUNDS):
            durations.append(await one_round(api, table, pg))
            assert set(threading.enumerate()) <= threads
            assert asyncio.all_tasks() == tasks
    finally:
        await tx.rollback()
        await locker.close()
    print(f"\n{api}: close took {min(durations):.3f}-{max(durations):.3f} s over {ROUNDS} rounds")
    assert await pg.fetchval(f"SELECT count(*) FROM {table}") == 0
    await pg.execute(f"DROP TABLE {table}")


async def test_timed_out_writes_do_not_pile_up_on_the_server(pg: asyncpg.Connection) -> None:
    """With ``write_timeout`` shorter than the lock, every timed-out attempt's statement is
    ended on the server (not left queued on the lock), and once the lock goes the records
    commit."""
    table = f"locked_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
    app = f"wb_lock_{uuid.uuid4().hex[:8]}"
    sink = wb.PostgresSink(f"{DSN}?application_name={app}", table=table, key="id", version="v")
    locker = await connect()
    tx = locker.transaction()
    await tx.start()
    await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    retry = wb.RetryPolicy(base=0.05, cap=0.1, max_attempts=1000)
    most, locked = 0, True
    try:
        async with wb.AsyncBatcher(
            sink, key="id", version="v", linger=0.01, write_timeout=0.2, retry=retry
        ) as b:
            for i in range(RECORDS):
                b.add_nowait({"id": i, "v": 1})
            ended = time.monotonic() + 2.0
            while time.monotonic() < ended:
                most = max(most, len(await backends(pg, app)))
                await asyncio.sleep(0.02)
            timeouts = b.stats().timeouts
            await tx.rollback()
            locked = False
            await b.flush(timeout=10)
    finally:
        if locked:
            await tx.rollback()
        await locker.close()
    print(f"\n{timeouts} timed-out writes in 2 s; at most {most} server connections")
    assert timeouts >= 3
    assert most <= 2  # the blocked write's, and the one ending the previous attempt's
    assert b.stats().committed == RECORDS
    assert await pg.fetchval(f"SELECT count(*) FROM {table}") == RECORDS
    await pg.execute(f"DROP TABLE {table}")
