"""PostgreSQL restarts and outages, on a private cluster (never the shared server): nothing
is lost or duplicated, writing resumes promptly, and the batcher does not storm the server."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from ..conftest import assert_conserved
from ..replays import WriteLog, unexplained_duplicates
from .cluster import Cluster
from .conftest import Recorder

pytestmark = pytest.mark.server

KEYS = 2000


@pytest.fixture
async def tables(
    cluster: Cluster, private_pg: asyncpg.Connection
) -> AsyncIterator[tuple[str, str]]:
    """A keyed table (upserts) and an append-only log (COPY) whose ``rid`` is unique per
    record but not constrained, so that a duplicate would show."""
    suffix = uuid.uuid4().hex[:10]
    kv, log = f"kv_{suffix}", f"log_{suffix}"
    await private_pg.execute(
        f"CREATE TABLE {kv} (k int PRIMARY KEY, v bigint NOT NULL, payload text);"
        f"CREATE TABLE {log} (rid bigint NOT NULL, k int NOT NULL, v bigint NOT NULL)"
    )
    yield kv, log
    conn = await asyncpg.connect(cluster.dsn, timeout=10)  # the test restarted the server
    await conn.execute(f"DROP TABLE IF EXISTS {kv}; DROP TABLE IF EXISTS {log}")
    await conn.close()


class ConnectCounter:
    """Wraps ``asyncpg.connection.connect`` (what a new pool calls) to time each attempt
    (``time.time()``, the clock of ``event.at``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[float] = []
        real = asyncpg.connection.connect

        async def connect(*args: Any, **kwargs: Any) -> Any:
            self.attempts.append(time.time())
            return await real(*args, **kwargs)

        monkeypatch.setattr(asyncpg.connection, "connect", connect)

    def between(self, a: float, b: float) -> int:
        return sum(a <= t < b for t in self.attempts)


async def check_rows(cluster: Cluster, kv: str, newest: dict[int, int]) -> None:
    """Every key is in the table, exactly once, at its newest version."""
    conn = await asyncpg.connect(cluster.dsn, timeout=10)
    try:
        rows = {r["k"]: r["v"] for r in await conn.fetch(f"SELECT k, v FROM {kv}")}
    finally:
        await conn.close()
    assert rows == newest


async def test_immediate_restart_mid_run(
    cluster: Cluster, private_pg: asyncpg.Connection, tables: tuple[str, str]
) -> None:
    """``pg_ctl restart -m immediate`` while 50,000 records are being added: 0 lost, 0
    dead-lettered; the keyed table holds each key once at its newest version; the append
    log holds every record (duplicates, if a commit's outcome was unknown, are counted)."""
    kv, log = tables
    retry = wb.RetryPolicy(base=0.05, cap=0.5, max_attempts=10_000)
    opts: dict[str, Any] = dict(max_batch=500, linger=0.05, max_in_flight=2, retry=retry,
                                write_timeout=10)  # fmt: skip
    upsert = wb.AsyncBatcher(
        wb.PostgresSink(cluster.dsn, table=kv, key="k", version="v"), key="k", version="v",
        **opts,
    )  # fmt: skip
    log_sink = WriteLog(wb.PostgresSink(cluster.dsn, table=log))
    append = wb.AsyncBatcher(log_sink, **opts)
    recs = {"upsert": Recorder(), "append": Recorder()}
    n = 50_000
    async with upsert, append:
        recs["upsert"].start(upsert)
        recs["append"].start(append)

        async def produce() -> None:
            for i in range(n):
                await upsert.add({"k": i % KEYS, "v": i, "payload": f"p{i}"})
                await append.add({"rid": i, "k": i % KEYS, "v": i})
                if i % 100 == 99:
                    await asyncio.sleep(0.008)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(1.5)
        began = time.monotonic()
        await asyncio.to_thread(cluster.restart, "immediate")
        restart = time.monotonic() - began
        await producer
        await upsert.flush()
        await append.flush()
    for b in (upsert, append):
        s = b.stats()
        assert_conserved(s)
        assert (s.accepted - s.coalesced, s.dead_lettered, s.lost) == (s.committed, 0, 0), s
    for rec in recs.values():
        await rec.stop()
        assert rec.of(wb.BatchFailed), "the restart must have hit some writes"
    await check_rows(cluster, kv, {k: n - KEYS + k for k in range(KEYS)})
    conn = await asyncpg.connect(cluster.dsn, timeout=10)
    total, distinct = await conn.fetchrow(f"SELECT count(*), count(DISTINCT rid) FROM {log}")
    copies = dict(
        await conn.fetch(f"SELECT rid, count(*) FROM {log} GROUP BY rid HAVING count(*) > 1")
    )
    await conn.close()
    assert distinct == n
    assert sum(copies.values()) - len(copies) == total - distinct
    failed = {name: len(rec.of(wb.BatchFailed)) for name, rec in recs.items()}
    assert len(log_sink.failed()) == failed["append"], "every failed write is an event"
    assert sorted(log_sink.committed()) == list(range(n)), "each record committed by one write"
    print(f"\nrestart took {restart:.2f} s; failed writes {failed}; append duplicates "
          f"{total - distinct} (rids {len(copies)})")  # fmt: skip
    # A duplicate can only come from replaying a write whose COMMIT did reach the server:
    # then the whole batch is there twice. Documented in docs/reliability.md.
    assert unexplained_duplicates(copies, log_sink.tries) == []


@pytest.mark.parametrize("max_in_flight", [1, 4])
async def test_outage_resumes_within_backoff_cap(
    cluster: Cluster,
    private_pg: asyncpg.Connection,
    tables: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    max_in_flight: int,
) -> None:
    """Stop the server (immediate) for ~3 s while records keep coming: writing resumes within
    the backoff cap + 1 s of ``pg_isready`` succeeding, nothing is dead-lettered or lost, and
    during the outage there is at most one connection attempt per write attempt, with the
    write attempts after the first failures spaced by at least the backoff base."""
    kv, _ = tables
    connects = ConnectCounter(monkeypatch)
    retry = wb.RetryPolicy(base=0.1, cap=1.0, max_attempts=100_000)
    sink = wb.PostgresSink(cluster.dsn, table=kv, key="k", version="v", pool_size=4)
    rec = Recorder()
    newest: dict[int, int] = {}
    stop = asyncio.Event()
    async with wb.AsyncBatcher(
        sink, key="k", version="v", max_batch=100, linger=0.02, max_in_flight=max_in_flight,
        retry=retry, write_timeout=5, max_pending=5000,
    ) as b:  # fmt: skip
        rec.start(b)

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                newest[i % KEYS] = i
                await b.add({"k": i % KEYS, "v": i, "payload": "x"})
                i += 1
                if i % 20 == 0:
                    await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(1.0)
        down = time.time()  # event.at's clock: every time below is wall-clock seconds
        await asyncio.to_thread(cluster.stop, "immediate")
        await asyncio.sleep(3.0)
        await asyncio.to_thread(cluster.start, wait=False)
        ready_monotonic = await asyncio.to_thread(cluster.wait_ready)
        ready = time.time() - (time.monotonic() - ready_monotonic)
        async with asyncio.timeout(retry.cap + 5):
            while not rec.of(wb.BatchCommitted, after=ready):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        resumed = rec.of(wb.BatchCommitted, after=ready)[0][0]
        await asyncio.sleep(0.5)
        stop.set()
        await producer
        await b.flush()
    await rec.stop()
    s = b.stats()
    assert_conserved(s)
    assert (s.dead_lettered, s.lost) == (0, 0), s
    await check_rows(cluster, kv, newest)

    latency = resumed - ready
    failures = [t for t, _ in rec.of(wb.BatchFailed, after=down) if t < resumed]
    steps = len([e for t, e in rec.of(wb.RetryScheduled, after=down) if t < resumed])
    attempts = connects.between(down, resumed)
    burst = [t for t in failures if t - failures[0] < 0.05]  # the writes the stop cut off
    later = failures[len(burst) :]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    print(f"\nmax_in_flight={max_in_flight}: resumed {latency:.3f} s after pg_isready; "
          f"outage {ready - down:.2f} s; failed writes {len(failures)} (first burst "
          f"{len(burst)}), backoff steps {steps}, connection attempts {attempts}, "
          f"smallest gap {min(gaps, default=0):.3f} s")  # fmt: skip
    assert latency <= retry.cap + 1.0
    assert failures, "the outage must have failed some writes"
    assert attempts <= len(failures) + 1  # + the attempt that succeeded
    assert len(burst) <= max_in_flight
    assert all(g >= retry.base * 0.9 for g in gaps), gaps


def test_the_duplicate_rule_is_exact() -> None:
    """``unexplained_duplicates`` admits exactly the replays of failed tries: a short batch
    replayed (which ``% max_batch`` refused) passes; duplicates of rids no failed try held,
    or part of a failed batch, or more copies than failed tries (which ``% max_batch``
    admitted when they added up to a batch) do not."""
    full, short = frozenset(range(500)), frozenset(range(500, 537))
    tries = [(full, True), (short, False), (short, True)]
    assert unexplained_duplicates({}, tries) == []
    assert unexplained_duplicates(dict.fromkeys(short, 2), tries) == []
    assert unexplained_duplicates(dict.fromkeys(full, 2), tries)  # 500 rids, none replayed
    assert unexplained_duplicates(dict.fromkeys(range(500, 530), 2), tries)  # part of one
    assert unexplained_duplicates(dict.fromkeys(short, 3), tries)  # one failed try, two extra
    twice = [(short, False), (short, False), (short, True)]
    assert unexplained_duplicates(dict.fromkeys(short, 3), twice) == []
