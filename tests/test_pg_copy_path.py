"""PostgresSink's psycopg path (driver="psycopg", or a psycopg_pool pool): binary COPY into a
per-connection temporary table and one ordered merge, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import psycopg
import psycopg_pool
import pytest

import writebehind as wb
from writebehind.sinks import _pg_copy

from .conftest import assert_conserved
from .pg import DSN

pytestmark = pytest.mark.server

T0 = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
BIG = 200  # records per write: above COPY_MIN, so method="auto" takes COPY
SMALL = 3  # below it: one unnest statement


def sink_for(table: str, **kw: Any) -> wb.PostgresSink:
    kw.setdefault("driver", "psycopg")
    return wb.PostgresSink(DSN, table=table, key="id", version="updated_at", **kw)


def beat(agent: uuid.UUID, second: int, note: str = "") -> dict[str, Any]:
    at = T0 + dt.timedelta(seconds=second)
    return {"id": agent, "last_connected_at": at, "updated_at": at, "note": note}


async def rows(pg: asyncpg.Connection, table: str) -> dict[uuid.UUID, tuple[Any, str]]:
    got = await pg.fetch(f"SELECT id, updated_at, note FROM {table}")
    return {r["id"]: (r["updated_at"], r["note"]) for r in got}


@pytest.fixture
async def psy_pool() -> AsyncIterator[psycopg_pool.AsyncConnectionPool]:
    pool = psycopg_pool.AsyncConnectionPool(DSN, min_size=1, max_size=2, open=False)
    try:
        await pool.open(wait=True, timeout=5)
    except psycopg_pool.PoolTimeout as exc:
        pytest.fail(f"PostgreSQL is required at {DSN} and is not reachable: {exc!r}")
    yield pool
    await pool.close()


def test_copy_min_is_between_the_measured_sizes() -> None:
    """docs/postgres.md: one statement won at 8 records per write, COPY + merge at 32."""
    assert 8 < _pg_copy.COPY_MIN <= 32


def test_driver_options_are_checked() -> None:
    with pytest.raises(wb.ConfigError, match="driver: must be one of"):
        wb.PostgresSink(DSN, table="t", driver="pg8000")
    with pytest.raises(wb.ConfigError, match="asyncpg's options"):
        wb.PostgresSink(DSN, table="t", driver="psycopg", connect_kwargs={"ssl": False})
    # a libpq option asyncpg cannot honour is fine for psycopg, which is libpq
    sink = wb.PostgresSink(DSN.replace("/test", "/test?keepalives=1"), table="t", driver="psycopg")
    assert sink.driver == "psycopg"


@pytest.mark.parametrize("method", ["auto", "copy", "unnest"])
async def test_newest_wins_whatever_order_batches_land(
    pg: asyncpg.Connection, table: str, method: str
) -> None:
    """The newer batch lands first, the older one after: the rows keep the newer versions;
    an equal version (a replay) rewrites the same values."""
    agents = [uuid.uuid4() for _ in range(BIG)]
    sink = sink_for(table, method=method)
    await sink.start()
    try:
        await sink.write([beat(a, 10, "new") for a in agents])
        await sink.write([beat(a, 5, "old") for a in agents])
        await sink.write([beat(a, 10, "new") for a in agents[:SMALL]])  # a replay
    finally:
        await sink.close()
    got = await rows(pg, table)
    assert got == {a: (T0 + dt.timedelta(seconds=10), "new") for a in agents}
    assert sink.statements == 3


@pytest.mark.parametrize("size", [SMALL, BIG])
async def test_duplicate_keys_in_one_write_keep_the_newest(
    pg: asyncpg.Connection, table: str, size: int
) -> None:
    """A direct caller may send one key several times in one write. The sink's contract
    (the same as the asyncpg path's): the greatest version wins; on a tie, the later record
    in the write; a NULL version loses to any version. Decided by the merge's DISTINCT ON,
    on the COPY path and the statement path alike."""
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    filler = [beat(uuid.uuid4(), 1) for _ in range(size)]
    batch = [
        beat(a, 5, "a5"), beat(a, 9, "a9-first"), beat(a, 7, "a7"), beat(a, 9, "a9-last"),
        beat(b, 3, "b3"), beat(b, 2, "b2"),
        *filler,
    ]  # fmt: skip
    sink = sink_for(table)
    await sink.start()
    try:
        await sink.write(batch)
        # NULL versions: a nullable version column on a table of its own
        name = f"nv_{uuid.uuid4().hex[:8]}"
        await pg.execute(f"CREATE TABLE {name} (id uuid PRIMARY KEY, v int, note text)")
        try:
            nsink = wb.PostgresSink(DSN, table=name, key="id", version="v", driver="psycopg")
            await nsink.start()
            try:
                more = [{"id": uuid.uuid4(), "v": 1, "note": "x"} for _ in range(size)]
                await nsink.write(
                    [{"id": c, "v": 4, "note": "v4"}, {"id": c, "v": None, "note": "null"}, *more]
                )
            finally:
                await nsink.close()
            assert await pg.fetchval(f"SELECT note FROM {name} WHERE id = $1", c) == "v4"
        finally:
            await pg.execute(f"DROP TABLE {name}")
    finally:
        await sink.close()
    got = await rows(pg, table)
    assert got[a] == (T0 + dt.timedelta(seconds=9), "a9-last")
    assert got[b] == (T0 + dt.timedelta(seconds=3), "b3")
    assert len(got) == 2 + size


async def test_without_a_version_the_later_duplicate_wins(pg: asyncpg.Connection) -> None:
    name = f"nov_{uuid.uuid4().hex[:8]}"
    await pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, note text)")
    try:
        for size in (SMALL, BIG):
            sink = wb.PostgresSink(DSN, table=name, key="id", driver="psycopg")
            await sink.start()
            try:
                batch = [{"id": i % size, "note": f"{size}-{i}"} for i in range(2 * size)]
                await sink.write(batch)
            finally:
                await sink.close()
            got = dict(await pg.fetch(f"SELECT id, note FROM {name} WHERE id < $1", size))
            assert got == {i: f"{size}-{i + size}" for i in range(size)}
    finally:
        await pg.execute(f"DROP TABLE {name}")


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Inner:
    x: int
    when: dt.datetime


@pytest.mark.parametrize("method", ["copy", "auto"])
async def test_every_column_type_round_trips(pg: asyncpg.Connection, method: str) -> None:
    """The types the unnest path takes (uuid, timestamptz, date, text, int, bigint, numeric,
    float, jsonb, json, bool, bytea, arrays, an enum type, a domain) and NULLs come back as
    they went in, through COPY (method="copy") and through one statement (method="auto"
    with a two-record write)."""
    name = f"types_{uuid.uuid4().hex[:10]}"
    mood = f"mood_{uuid.uuid4().hex[:6]}"
    posint = f"posint_{uuid.uuid4().hex[:6]}"
    await pg.execute(f"CREATE TYPE {mood} AS ENUM ('ok', 'sad')")
    await pg.execute(f"CREATE DOMAIN {posint} AS int CHECK (VALUE > 0)")
    await pg.execute(
        f"CREATE TABLE {name} (id uuid PRIMARY KEY, at timestamptz, d date, t text, i int, "
        "b bigint, n numeric(12,3), f double precision, j jsonb, js json, ok bool, raw bytea, "
        f"tags text[], nums int[], m {mood}, p {posint}, v int)"
    )
    try:
        record = {
            "id": uuid.uuid4(),
            "at": T0,
            "d": dt.date(2026, 12, 3),
            "t": "héllo 'quoted' \\ \t tab",
            "i": -7,
            "b": 2**40,
            "n": decimal.Decimal("1234.500"),
            "f": 1.5,
            "j": {"k": [1, "two", None], "inner": Inner(3, T0), "c": Color.RED},
            "js": [1, 2],
            "ok": True,
            "raw": b"\x00\xff",
            "tags": ["a", "b", None],
            "nums": [1, 2, 3],
            "m": "sad",
            "p": 5,
            "v": 1,
        }
        empty = {k: None for k in record} | {"id": uuid.uuid4(), "v": 1}
        sink = wb.PostgresSink(DSN, table=name, key="id", version="v", driver="psycopg",
                               method=method)  # fmt: skip
        async with wb.AsyncBatcher(sink, key="id", version="v") as b:
            b.add_nowait(record)
            b.add_nowait(empty)
        assert b.stats().committed == 2, b.stats()
        got = dict(await pg.fetchrow(f"SELECT * FROM {name} WHERE id = $1", record["id"]))
        assert json.loads(got.pop("j")) == {
            "k": [1, "two", None],
            "inner": {"x": 3, "when": T0.isoformat()},
            "c": "red",
        }
        assert json.loads(got.pop("js")) == [1, 2]
        want = {k: v for k, v in record.items() if k not in ("j", "js")}
        assert got == want
        nulls = dict(await pg.fetchrow(f"SELECT * FROM {name} WHERE id = $1", empty["id"]))
        assert nulls == empty
    finally:
        await pg.execute(f"DROP TABLE {name}")
        await pg.execute(f"DROP TYPE {mood}")
        await pg.execute(f"DROP DOMAIN {posint}")


async def test_json_text_and_the_json_dumps_hook(pg: asyncpg.Connection) -> None:
    """A str for a json column is JSON text already (sent as is); other values go through
    json_dumps= when given; NULL stays NULL (not the JSON null)."""
    name = f"js_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, j jsonb)")
    calls: list[Any] = []

    def dumps(obj: Any) -> bytes:
        calls.append(obj)
        return json.dumps({"wrapped": obj}).encode()

    try:
        sink = wb.PostgresSink(DSN, table=name, key="id", driver="psycopg", json_dumps=dumps)
        await sink.start()
        try:
            batch = [{"id": i, "j": {"n": i}} for i in range(BIG)]
            batch[0] = {"id": 0, "j": '{"already": "json"}'}
            batch[1] = {"id": 1, "j": None}
            await sink.write(batch)
        finally:
            await sink.close()
        got = {r["id"]: r["j"] for r in await pg.fetch(f"SELECT id, j FROM {name}")}
    finally:
        await pg.execute(f"DROP TABLE {name}")
    assert json.loads(got[0]) == {"already": "json"}
    assert got[1] is None
    assert json.loads(got[7]) == {"wrapped": {"n": 7}}
    assert len(calls) == BIG - 2


async def test_mixed_record_shapes_in_one_write(pg: asyncpg.Connection, table: str) -> None:
    """Two shapes in one write: each is COPYed and merged in turn, in one transaction, and
    the second merge does not see the first shape's rows again."""
    first = [beat(uuid.uuid4(), 1, "with note") for _ in range(BIG)]
    second = [{"id": uuid.uuid4(), "updated_at": T0} for _ in range(BIG)]
    sink = sink_for(table)
    await sink.start()
    try:
        await sink.write(first + second)
    finally:
        await sink.close()
    got = await rows(pg, table)
    assert len(got) == 2 * BIG
    assert {got[r["id"]][1] for r in second} == {None}
    assert sink.statements == 2


async def test_a_poison_record_is_isolated_by_bisection(pg: asyncpg.Connection) -> None:
    """A CHECK violation (SQLSTATE 23514, permanent) in one record of 500: the batcher
    splits the batch until that record is alone, dead-letters it, commits the other 499.
    The one-record write's error names the record's key."""
    name = f"poison_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int CHECK (v >= 0))")
    dead: list[wb.DeadLetterEntry] = []
    try:
        sink = wb.PostgresSink(DSN, table=name, key="id", version="v", driver="psycopg")
        async with wb.AsyncBatcher(
            sink, key="id", version="v", max_batch=500, dead_letter=dead.extend
        ) as b:
            for i in range(500):
                b.add_nowait({"id": i, "v": -1 if i == 137 else i})
        s = b.stats()
        assert_conserved(s)
        assert (s.committed, s.dead_lettered, s.lost) == (499, 1, 0), s
        assert await pg.fetchval(f"SELECT count(*) FROM {name}") == 499
    finally:
        await pg.execute(f"DROP TABLE {name}")
    assert [e.record["id"] for e in dead] == [137]
    assert "23514" in dead[0].message, dead[0].message
    assert "id=137" in dead[0].message, dead[0].message


async def test_errors_are_mapped_retriable_or_permanent(pg: asyncpg.Connection) -> None:
    """A lock not available (55P03, lock_timeout) is retriable; a value the column cannot
    take is permanent and names the column's record; a server that is not there is
    retriable (psycopg's OperationalError has no SQLSTATE)."""
    name = f"err_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int, note text)")
    try:
        dsn = f"{DSN}?options=-c%20lock_timeout%3D100"
        sink = wb.PostgresSink(dsn, table=name, key="id", version="v", driver="psycopg")
        await sink.start()
        try:
            async with pg.transaction():
                await pg.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(wb.RetriableSinkError, match="55P03"):
                    await sink.write([{"id": i, "v": 1, "note": "x"} for i in range(BIG)])
            with pytest.raises(wb.PermanentSinkError) as bad:
                await sink.write([{"id": 1, "v": "not a number", "note": "x"}])
            assert not isinstance(bad.value, wb.RetriableSinkError)
            assert "id=1" in str(bad.value)
            await sink.write([{"id": i, "v": 2, "note": "y"} for i in range(BIG)])  # still fine
        finally:
            await sink.close()
        assert await pg.fetchval(f"SELECT count(*) FROM {name} WHERE v = 2") == BIG
    finally:
        await pg.execute(f"DROP TABLE {name}")
    down = wb.PostgresSink(
        "postgresql://root:s3cret-canary@127.0.0.1:1/test", table=name, driver="psycopg"
    )
    with pytest.raises(wb.RetriableSinkError) as gone:
        await down.start()
    assert "s3cret-canary" not in str(gone.value)


async def _backend_gone(pg: asyncpg.Connection, pid: int) -> bool:
    for _ in range(100):
        if not await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_cancelled_write_blocked_on_a_lock_ends_its_backend_and_never_commits(
    pg: asyncpg.Connection, table: str
) -> None:
    """The merge waits on a row lock; the write is cancelled (as write_timeout and the close
    deadline do). Its connection is closed and its backend ended; when the lock is released
    nothing of the write commits late."""
    agents = [uuid.uuid4() for _ in range(BIG)]
    await pg.execute(
        f"INSERT INTO {table} (id, updated_at, note) VALUES ($1, $2, 'before')", agents[0], T0
    )
    app = f"wb_cancel_{uuid.uuid4().hex[:8]}"
    sink = wb.PostgresSink(f"{DSN}?application_name={app}", table=table, key="id",
                           version="updated_at", driver="psycopg", pool_size=1)  # fmt: skip
    await sink.start()
    locker = await asyncpg.connect(DSN)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(f"SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE", agents[0])
        write = asyncio.create_task(sink.write([beat(a, 50, "late") for a in agents]))
        pid = None
        async with asyncio.timeout(5):
            while pid is None:
                pid = await pg.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
                    "AND wait_event_type = 'Lock'",
                    app,
                )
                await asyncio.sleep(0.01)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert await _backend_gone(pg, pid), "the abandoned write's backend still runs"
        await tx.rollback()
        await asyncio.sleep(0.2)
        got = await rows(pg, table)
        assert got == {agents[0]: (T0, "before")}, "a cancelled write committed"
    finally:
        await locker.close()
        await sink.close()


async def test_cancelled_mid_copy_ends_the_backend_and_commits_nothing(
    pg: asyncpg.Connection, table: str
) -> None:
    """A write of 300,000 records is cancelled while its rows stream in (the COPY): its
    backend is ended and the table stays empty."""
    app = f"wb_midcopy_{uuid.uuid4().hex[:8]}"
    sink = wb.PostgresSink(f"{DSN}?application_name={app}", table=table, key="id",
                           version="updated_at", driver="psycopg", method="copy")  # fmt: skip
    await sink.start()
    try:
        batch = [beat(uuid.uuid4(), 1) for _ in range(300_000)]
        write = asyncio.create_task(sink.write(batch))
        seen = None
        async with asyncio.timeout(10):
            while seen is None:
                seen = await pg.fetchrow(
                    "SELECT pid, query FROM pg_stat_activity WHERE application_name = $1 "
                    "AND query LIKE 'COPY%' AND state = 'active'",
                    app,
                )
                await asyncio.sleep(0.001)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert await _backend_gone(pg, seen["pid"])
        await asyncio.sleep(0.2)
        assert await pg.fetchval(f"SELECT count(*) FROM {table}") == 0
        # the sink goes on: a fresh connection, a fresh staging table
        await sink.write([beat(uuid.uuid4(), 2) for _ in range(BIG)])
        assert await pg.fetchval(f"SELECT count(*) FROM {table}") == BIG
    finally:
        await sink.close()


async def test_write_timeout_through_the_batcher_is_retried_and_lands(
    pg: asyncpg.Connection, table: str
) -> None:
    """write_timeout cancels a write stuck on a lock; once the lock goes, the retry lands
    and every record is committed exactly once."""
    agents = [uuid.uuid4() for _ in range(BIG)]
    locker = await asyncpg.connect(DSN)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        sink = sink_for(table)
        async with wb.AsyncBatcher(
            sink, key="id", version="updated_at", write_timeout=0.3, max_batch=BIG
        ) as b:
            for a in agents:
                b.add_nowait(beat(a, 1))
            await asyncio.sleep(0.8)
            assert b.stats().timeouts >= 1, b.stats()
            await tx.rollback()
            await b.flush()
        assert b.stats().committed == BIG
    finally:
        await locker.close()
    assert len(await rows(pg, table)) == BIG


async def test_overlapping_writes_in_opposite_orders_do_not_deadlock(
    pg: asyncpg.Connection, table: str
) -> None:
    """Two writes of the same 5,000 keys at once, one in reverse order: the merge takes rows
    in key order, so neither waits for deadlock_timeout (1 s) and both land."""
    agents = [uuid.uuid4() for _ in range(5_000)]
    sink = sink_for(table, pool_size=2)
    await sink.start()
    try:
        for _ in range(3):
            t0 = asyncio.get_running_loop().time()
            await asyncio.gather(
                sink.write([beat(a, 1, "fwd") for a in agents]),
                sink.write([beat(a, 1, "rev") for a in reversed(agents)]),
            )
            assert asyncio.get_running_loop().time() - t0 < 0.9
    finally:
        await sink.close()
    assert len(await rows(pg, table)) == 5_000


async def test_a_psycopg_pool_of_yours(
    pg: asyncpg.Connection, table: str, psy_pool: psycopg_pool.AsyncConnectionPool
) -> None:
    """A psycopg_pool.AsyncConnectionPool (connections not in autocommit, as psycopg makes
    them) is used as is and left open; its connections come back idle, holding the staging
    table with no rows."""
    sink = wb.PostgresSink(psy_pool, table=table, key="id", version="updated_at")
    assert sink.driver == "psycopg"
    agents = [uuid.uuid4() for _ in range(BIG)]
    async with wb.AsyncBatcher(sink, key="id", version="updated_at", max_in_flight=2) as b:
        for second in (1, 2):
            for a in agents:
                await b.add(beat(a, second))
            await b.flush()
        b.add_nowait(beat(agents[0], 3, "small"))  # one statement, in a transaction
    assert b.stats().committed == 2 * BIG + 1
    got = await rows(pg, table)
    assert got[agents[0]] == (T0 + dt.timedelta(seconds=3), "small")
    assert got[agents[1]][0] == T0 + dt.timedelta(seconds=2)
    assert not psy_pool.closed
    async with psy_pool.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cur = await conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'wb_copy_%' AND relpersistence = 't'"
        )
        row = await cur.fetchone()
        assert row is not None
        assert row[0] >= 1
        await conn.rollback()


async def test_a_factory_returning_a_psycopg_pool_is_closed_at_close(
    pg: asyncpg.Connection, table: str
) -> None:
    made: list[psycopg_pool.AsyncConnectionPool] = []

    async def factory() -> psycopg_pool.AsyncConnectionPool:
        pool = psycopg_pool.AsyncConnectionPool(DSN, min_size=0, max_size=2, open=False)
        await pool.open()
        made.append(pool)
        return pool

    sink = wb.PostgresSink(factory, table=table, key="id", version="updated_at")
    async with wb.AsyncBatcher(sink, key="id", version="updated_at") as b:
        for _ in range(BIG):
            b.add_nowait(beat(uuid.uuid4(), 1))
    assert b.stats().committed == BIG
    assert len(made) == 1
    assert made[0].closed


async def test_after_fork_forgets_the_parents_connections(
    pg: asyncpg.Connection, table: str, psy_pool: psycopg_pool.AsyncConnectionPool
) -> None:
    """after_fork() (what a fork child runs) drops the sink's own connections without
    closing them (they are the parent's) and the next start opens its own; a pool of yours
    cannot cross a fork: start() says so."""
    sink = sink_for(table, pool_size=1)
    await sink.start()
    await sink.write([beat(uuid.uuid4(), 1) for _ in range(BIG)])
    assert sink._psy is not None
    assert sink._psy.own is not None
    (inherited,) = sink._psy.own.idle
    sink.after_fork()
    assert not inherited.closed, "the parent's connection must not be closed by the child"
    await sink.start()
    await sink.write([beat(uuid.uuid4(), 1) for _ in range(BIG)])
    assert sink._psy is not None
    assert sink._psy.own is not None
    assert sink._psy.own.idle
    assert sink._psy.own.idle[0] is not inherited
    await sink.close()
    await inherited.close()
    assert len(await rows(pg, table)) == 2 * BIG

    theirs = wb.PostgresSink(psy_pool, table=table, key="id")
    await theirs.start()
    theirs.after_fork()
    with pytest.raises(wb.ConfigError, match=r"before os\.fork"):
        await theirs.start()


async def test_terminated_backends_mid_run_lose_nothing(pg: asyncpg.Connection, table: str) -> None:
    """The sink's backends killed with pg_terminate_backend about every 50 ms while the
    batcher writes 4 rounds of 2,000 agents through COPY (two writes in flight): each kill is
    a retriable error (57P01, or a connection lost mid-COPY), the broken connection is
    dropped, the retry makes a fresh one with a fresh staging table, and every agent ends
    at its newest heartbeat with nothing dead-lettered or lost."""
    app = f"wbcopykill{uuid.uuid4().hex[:8]}"
    agents = [uuid.uuid4() for _ in range(2_000)]
    sink = wb.PostgresSink(f"{DSN}?application_name={app}", table=table, key="id",
                           version="updated_at", driver="psycopg", pool_size=2)  # fmt: skip
    policy = wb.RetryPolicy(base=0.01, cap=0.2, max_attempts=50)
    killed = 0
    done = asyncio.Event()

    async def killer() -> None:
        nonlocal killed
        while killed < 20 and not done.is_set():
            killed += await pg.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                app,
            )
            await asyncio.sleep(0.05)

    async with wb.AsyncBatcher(
        sink, key="id", version="updated_at", max_batch=500, max_in_flight=2, linger=0.005,
        retry=policy,
    ) as b:  # fmt: skip
        task = asyncio.create_task(killer())
        for second in range(4):
            for a in agents:
                await b.add(beat(a, second, f"s{second}"))
            await b.flush()
        done.set()
        await task
    s = b.stats()
    assert_conserved(s)
    assert (s.dead_lettered, s.lost) == (0, 0), s
    assert killed >= 1, "no backend was killed: the test proved nothing"
    assert s.retried >= 1, s
    got = await rows(pg, table)
    assert got == {a: (T0 + dt.timedelta(seconds=3), "s3") for a in agents}
