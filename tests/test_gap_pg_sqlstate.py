"""PostgreSQL errors of SQLSTATE classes 40, 53 and 55 are retried: each provoked against the
real server, never faked (issue 18: with those classes mapped permanent, 104 tests passed).

- 55P03 lock not available: the sink's sessions run with ``lock_timeout=50ms`` while another
  session holds the row lock.
- 40P01 deadlock: another session holds row 2 and then asks for row 1, which the sink's
  upsert (rows in key order) holds while it waits for row 2. The sink's sessions have the
  shorter ``deadlock_timeout``, so the server picks the sink's statement as the victim.
- 40001 serialization failure: the sink's sessions run in REPEATABLE READ; another session
  commits an update of the row the sink's upsert is waiting for.
- 53300 too many connections: the sink connects as a role with ``CONNECTION LIMIT 1``
  whose one slot another session takes (the sink's idle connection expired first).

``RetryPolicy.classify`` records the SQLSTATE each failed write carried (and answers None:
the sink's own mapping decides), so each test proves the error really occurred; then the
obstruction is removed and the write must commit, not be dead-lettered.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from .pg import DSN, connect

pytestmark = pytest.mark.server

FAR = 3600.0


class Seen:
    """A ``RetryPolicy.classify`` that records SQLSTATEs and leaves the decision to the sink."""

    def __init__(self) -> None:
        self.codes: list[str] = []

    def __call__(self, exc: BaseException) -> bool | None:
        m = re.search(r"SQLSTATE (\w{5})", str(exc))
        self.codes.append(m.group(1) if m else type(exc).__name__)
        return None


def policy(seen: Seen) -> wb.RetryPolicy:
    return wb.RetryPolicy(base=0.02, cap=0.1, max_attempts=1000, classify=seen)


@pytest.fixture
async def gap_table(pg: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"sqlstate_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL, note text)")
    await pg.execute(f"INSERT INTO {name} VALUES (1, 0, 'seed'), (2, 0, 'seed')")
    yield name
    await pg.execute(f"DROP TABLE IF EXISTS {name}")


async def until(cond: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str) -> None:
    """Poll ``cond`` (sync or async) every 5 ms; fail after 10 s."""
    try:
        async with asyncio.timeout(10):
            while True:
                got = cond()
                if not isinstance(got, bool):
                    got = await got
                if got:
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def lock_waiter(pg: asyncpg.Connection, app: str) -> Callable[[], Awaitable[bool]]:
    async def waiting() -> bool:
        n = await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND wait_event_type = 'Lock'",
            app,
        )
        return bool(n)

    return waiting


async def run_blocked(
    sink: wb.PostgresSink,
    records: list[dict[str, Any]],
    seen: Seen,
    release: Callable[[], Awaitable[None]],
    code: str,
    before: Callable[[], Awaitable[None]] | None = None,
    first: Callable[[], Awaitable[None]] | None = None,
) -> wb.Stats:
    """Write ``records`` through a batcher; once a write failed with ``code`` call
    ``release``; every record must commit. ``first`` runs once the batcher started, before
    the records are added; ``before`` once the flush started."""
    async with wb.AsyncBatcher(
        sink, key="id", version="v", max_batch=10, linger=FAR, retry=policy(seen)
    ) as b:
        if first is not None:
            await first()
        receipts = [b.add_nowait(r) for r in records]
        flushing = asyncio.ensure_future(b.flush())
        try:
            if before is not None:
                await before()
            await until(lambda: code in seen.codes, f"a write failing with {code}")
            await release()
            async with asyncio.timeout(20):
                await flushing
        finally:
            if not flushing.done():
                flushing.cancel()
        outcomes = [r.outcome for r in receipts]
        s = b.stats()
    assert outcomes == [wb.Outcome.COMMITTED] * len(records), (outcomes, seen.codes)
    assert (s.dead_lettered, s.lost) == (0, 0), s
    assert s.retried >= 1, s
    return s


def pg_sink(table: str, dsn: str = DSN, **settings: str) -> wb.PostgresSink:
    return wb.PostgresSink(
        dsn, table=table, key="id", version="v", connect_kwargs={"server_settings": settings}
    )


async def test_lock_not_available_55P03_is_retried(pg: asyncpg.Connection, gap_table: str) -> None:
    """lock_timeout expires while another session holds the row: retried until released."""
    holder = await connect()
    tx = holder.transaction()
    await tx.start()
    await holder.execute(f"SELECT * FROM {gap_table} WHERE id = 1 FOR UPDATE")
    seen = Seen()

    async def release() -> None:
        await until(lambda: seen.codes.count("55P03") >= 2, "a second 55P03")
        await tx.rollback()

    try:
        await run_blocked(
            pg_sink(gap_table, lock_timeout="50ms"), [{"id": 1, "v": 1, "note": "sink"}],
            seen, release, "55P03",
        )  # fmt: skip
    finally:
        await holder.close()
    assert set(seen.codes) == {"55P03"}, seen.codes
    assert await pg.fetchval(f"SELECT note FROM {gap_table} WHERE id = 1") == "sink"


async def test_deadlock_40P01_is_retried(pg: asyncpg.Connection, gap_table: str) -> None:
    """A real deadlock between the sink's upsert and another session: the server aborts
    the sink's statement (40P01), the other session commits, the retry commits.

    The order is forced: another session holds row 2; the sink's upsert locks row 1, then
    a trigger (for the sink's sessions only) holds it there on an advisory lock, the
    gate, while the other session asks for row 1; then the gate opens and the sink asks
    for row 2, closing the cycle. Its ``deadlock_timeout`` (100 ms) is the shorter, so its
    statement is the one aborted."""
    app = f"wbdl{uuid.uuid4().hex[:8]}"
    gate_key = uuid.uuid4().int % 2**62
    await pg.execute(
        f"""CREATE FUNCTION {gap_table}_gate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = 1 AND current_setting('application_name') = '{app}' THEN
                PERFORM pg_advisory_xact_lock({gate_key});
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER gate BEFORE UPDATE ON {gap_table}
            FOR EACH ROW EXECUTE FUNCTION {gap_table}_gate()"""
    )
    gate, holder = await connect(), await connect()
    await gate.execute("SELECT pg_advisory_lock($1)", gate_key)
    await holder.execute("SET deadlock_timeout = '20s'")
    tx = holder.transaction()
    await tx.start()
    await holder.execute(f"UPDATE {gap_table} SET note = 'holder' WHERE id = 2")
    holder_pid = holder.get_server_pid()
    seen = Seen()
    second: list[asyncio.Task[str]] = []

    async def waits(where: str, *args: Any) -> bool:
        n = await pg.fetchval(f"SELECT count(*) FROM pg_stat_activity WHERE {where}", *args)
        return bool(n)

    async def close_the_cycle() -> None:
        await until(
            lambda: waits("application_name = $1 AND wait_event = 'advisory'", app),
            "the sink's upsert holding row 1 at the gate",
        )
        second.append(
            asyncio.ensure_future(
                holder.execute(f"UPDATE {gap_table} SET note = 'holder' WHERE id = 1")
            )
        )
        await until(
            lambda: waits("pid = $1 AND wait_event_type = 'Lock'", holder_pid),
            "the other session waiting for row 1",
        )
        await gate.execute("SELECT pg_advisory_unlock($1)", gate_key)

    async def release() -> None:
        async with asyncio.timeout(10):
            await second[0]  # the sink's statement was aborted: row 1 is free
        await tx.commit()

    try:
        await run_blocked(
            pg_sink(gap_table, application_name=app, deadlock_timeout="100ms"),
            [{"id": 1, "v": 1, "note": "sink"}, {"id": 2, "v": 1, "note": "sink"}],
            seen, release, "40P01", before=close_the_cycle,
        )  # fmt: skip
    finally:
        for t in second:
            t.cancel()
        await holder.close()
        await gate.close()
    assert set(seen.codes) == {"40P01"}, seen.codes
    rows = await pg.fetch(f"SELECT id, v, note FROM {gap_table} ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, 1, "sink"), (2, 1, "sink")]
    await pg.execute(f"DROP TABLE {gap_table}; DROP FUNCTION {gap_table}_gate()")


async def test_serialization_failure_40001_is_retried(
    pg: asyncpg.Connection, gap_table: str
) -> None:
    """In REPEATABLE READ, the row the upsert waits for is updated and committed by another
    session: 40001, and the retry (a fresh snapshot) commits."""
    app = f"wbser{uuid.uuid4().hex[:8]}"
    holder = await connect()
    tx = holder.transaction()
    await tx.start()
    await holder.execute(f"UPDATE {gap_table} SET note = 'holder' WHERE id = 1")
    seen = Seen()

    async def commit_under_it() -> None:
        await until(lock_waiter(pg, app), "the sink's upsert waiting for row 1")
        await tx.commit()

    async def release() -> None:
        return None

    try:
        await run_blocked(
            pg_sink(gap_table, application_name=app,
                    default_transaction_isolation="repeatable read"),
            [{"id": 1, "v": 1, "note": "sink"}], seen, release, "40001",
            before=commit_under_it,
        )  # fmt: skip
    finally:
        await holder.close()
    assert set(seen.codes) == {"40001"}, seen.codes
    assert await pg.fetchval(f"SELECT note FROM {gap_table} WHERE id = 1") == "sink"


async def test_too_many_connections_53300_is_retried(
    pg: asyncpg.Connection, gap_table: str
) -> None:
    """The sink's role may hold one connection; another session holds it when the sink
    needs a new one (its idle one expired): 53300, retried until the slot is free."""
    role = f"wbgap_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
    await pg.execute(f"GRANT ALL ON {gap_table} TO {role}")
    dsn = DSN.replace("postgresql://root@", f"postgresql://{role}@")
    assert dsn != DSN
    sink = wb.PostgresSink(
        dsn, table=gap_table, key="id", version="v",
        connect_kwargs={"max_inactive_connection_lifetime": 0.05},
    )  # fmt: skip
    seen = Seen()
    occupier: list[asyncpg.Connection] = []

    async def role_backends() -> int:
        n: int = await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role)
        return n

    async def occupy() -> None:
        await until(lambda: _is(role_backends(), 0), "the sink's idle connection to expire")
        occupier.append(await asyncpg.connect(dsn, timeout=5))

    async def release() -> None:
        await occupier[0].close()

    try:
        await run_blocked(
            sink, [{"id": 1, "v": 1, "note": "sink"}], seen, release, "53300", first=occupy
        )
    finally:
        for c in occupier:
            await c.close()
        await pg.execute(f"DROP TABLE IF EXISTS {gap_table}")
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await pg.execute(f"DROP ROLE IF EXISTS {role}")
    assert "53300" in seen.codes, seen.codes


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
