"""PostgresSink against the real PostgreSQL on this machine."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import sys
import textwrap
import uuid
from typing import Any

import asyncpg
import pytest

import writebehind as wb

from .conftest import assert_conserved
from .pg import DSN
from .replays import WriteLog, unexplained_duplicates

pytestmark = pytest.mark.server

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def heartbeat(agent: uuid.UUID, second: int, note: str = "") -> dict[str, Any]:
    return {
        "id": agent,
        "first_connected_at": T0,
        "last_connected_at": T0 + dt.timedelta(seconds=second),
        "replica_id": None,
        "disconnected_at": None,
        "updated_at": T0 + dt.timedelta(seconds=second),
        "note": note,
    }


def sink_for(table: str, **kw: Any) -> wb.PostgresSink:
    return wb.PostgresSink(DSN, table=table, key="id", version="updated_at", **kw)


async def test_round_trip_of_common_types(pg: asyncpg.Connection) -> None:
    """uuid, timestamptz, text, int, bigint, numeric, jsonb, bool, bytea, arrays and NULLs
    come back as they went in."""
    name = f"types_{uuid.uuid4().hex[:10]}"
    await pg.execute(
        f"CREATE TABLE {name} (id uuid PRIMARY KEY, at timestamptz, t text, i int, b bigint, "
        "n numeric(12,3), j jsonb, ok bool, raw bytea, tags text[], nums int[], v int)"
    )
    try:
        record = {
            "id": uuid.uuid4(),
            "at": T0,
            "t": "héllo 'quoted'",
            "i": -7,
            "b": 2**40,
            "n": decimal.Decimal("1234.500"),
            "j": {"k": [1, "two", None]},
            "ok": True,
            "raw": b"\x00\xff",
            "tags": ["a", "b"],
            "nums": [1, 2, 3],
            "v": 1,
        }
        empty = {k: None for k in record} | {"id": uuid.uuid4(), "v": 1}
        sink = wb.PostgresSink(DSN, table=name, key="id", version="v")
        assert sink.method == "auto"
        async with wb.AsyncBatcher(sink, key="id", version="v") as b:
            b.add_nowait(record)
            b.add_nowait(empty)
        assert b.stats().committed == 2
        got = dict(await pg.fetchrow(f"SELECT * FROM {name} WHERE id = $1", record["id"]))
        got["j"] = __import__("json").loads(got["j"])
        assert got == record
        nulls = dict(await pg.fetchrow(f"SELECT * FROM {name} WHERE id = $1", empty["id"]))
        assert nulls == empty
    finally:
        await pg.execute(f"DROP TABLE {name}")


@pytest.mark.parametrize("method", ["unnest", "copy"])
async def test_older_version_in_a_later_batch_loses(
    pg: asyncpg.Connection, table: str, method: str
) -> None:
    """An older version arriving in a later batch does not overwrite; an equal one does."""
    agent = uuid.uuid4()
    async with wb.AsyncBatcher(sink_for(table, method=method), key="id", version="updated_at") as b:
        b.add_nowait(heartbeat(agent, 10, "new"))
        await b.flush()
        b.add_nowait(heartbeat(agent, 9, "old"))
        await b.flush()
        assert await pg.fetchval(f"SELECT note FROM {table}") == "new"
        b.add_nowait(heartbeat(agent, 10, "replay"))
        await b.flush()
        assert await pg.fetchval(f"SELECT note FROM {table}") == "replay"


async def test_duplicate_keys_in_one_batch(pg: asyncpg.Connection, table: str) -> None:
    """Given duplicate keys in one batch, the sink keeps the newest (a tie: the later)."""
    agent, other = uuid.uuid4(), uuid.uuid4()
    sink = sink_for(table)
    await sink.start()
    try:
        await sink.write(
            [
                heartbeat(agent, 2, "b"),
                heartbeat(agent, 3, "c"),
                heartbeat(other, 1, "x"),
                heartbeat(agent, 1, "a"),
                heartbeat(agent, 3, "c2"),
            ]
        )
    finally:
        await sink.close()
    got = {r["id"]: r["note"] for r in await pg.fetch(f"SELECT id, note FROM {table}")}
    assert got == {agent: "c2", other: "x"}


async def test_append_only_table_by_copy(pg: asyncpg.Connection) -> None:
    """Without a key, records are appended (COPY); none coalesce."""
    name = f"events_{uuid.uuid4().hex[:10]}"
    await pg.execute(f"CREATE TABLE {name} (seq bigint, kind text, at timestamptz)")
    try:
        sink = wb.PostgresSink(DSN, table=name, pool_size=3)
        async with wb.AsyncBatcher(sink, max_batch=300, max_in_flight=3) as b:
            for i in range(1000):
                b.add_nowait({"seq": i, "kind": "login", "at": T0})
                if i % 300 == 0:
                    await asyncio.sleep(0)
        total, distinct = await pg.fetchrow(f"SELECT count(*), count(DISTINCT seq) FROM {name}")
        assert (total, distinct) == (1000, 1000)  # each record once: none lost, none twice
    finally:
        await pg.execute(f"DROP TABLE {name}")


async def test_overlapping_batches_commit_in_any_order(pg: asyncpg.Connection, table: str) -> None:
    """With several batches in flight on separate connections, the order in which they
    commit does not change the result: every key ends at its newest version."""
    agents = [uuid.uuid4() for _ in range(200)]
    sink = sink_for(table, pool_size=4)
    await sink.start()
    try:
        batches = [[heartbeat(a, v, f"v{v}") for a in agents] for v in range(8)]
        # write newest first, oldest last, all at once on four connections
        await asyncio.gather(*(sink.write(b) for b in reversed(batches)))
    finally:
        await sink.close()
    notes = {r["note"] for r in await pg.fetch(f"SELECT note FROM {table}")}
    assert notes == {"v7"}


async def test_overlapping_batches_in_opposite_orders_do_not_deadlock(
    pg: asyncpg.Connection, table: str
) -> None:
    """Two concurrent writes of the same 5,000 keys, in opposite orders, both commit at once:
    the upsert takes row locks in key order."""
    agents = [uuid.uuid4() for _ in range(5000)]
    sink = sink_for(table, pool_size=2)
    await sink.start()
    try:
        await sink.write([heartbeat(a, 0, "zero") for a in agents])  # rows exist: updates
        for attempt in range(3):
            forward = [heartbeat(a, 2 * attempt + 1, "one") for a in agents]
            backward = [heartbeat(a, 2 * attempt + 2, "two") for a in reversed(agents)]
            await asyncio.gather(sink.write(forward), sink.write(backward))
    finally:
        await sink.close()
    assert {r["note"] for r in await pg.fetch(f"SELECT note FROM {table}")} == {"two"}


async def test_mixed_record_shapes_on_the_copy_path(pg: asyncpg.Connection, table: str) -> None:
    """Records of two shapes in one batch each get their own staging table (no split)."""
    agents = [uuid.uuid4() for _ in range(100)]
    sink = sink_for(table, method="copy")
    await sink.start()
    try:
        batch: list[dict[str, Any]] = []
        for i, a in enumerate(agents):
            row = heartbeat(a, 1, "x")
            if i % 2:
                del row["note"]
            batch.append(row)
        await sink.write(batch)
    finally:
        await sink.close()
    assert await pg.fetchval(f"SELECT count(*) FROM {table}") == 100
    assert sink.statements == 2


async def test_max_in_flight_through_the_engine(pg: asyncpg.Connection, table: str) -> None:
    """The engine keeps several batches in flight; newest still wins for every key."""
    agents = [uuid.uuid4() for _ in range(500)]
    async with wb.AsyncBatcher(
        sink_for(table, pool_size=3),
        key="id",
        version="updated_at",
        max_batch=100,
        max_in_flight=3,
        linger=0.01,
    ) as b:
        for second in range(10):
            for a in agents:
                await b.add(heartbeat(a, second, str(second)))
    assert_conserved(b.stats())
    rows = await pg.fetch(f"SELECT note, count(*) FROM {table} GROUP BY note")
    assert [tuple(r) for r in rows] == [("9", 500)]


TWO_PROCESS_WRITER = textwrap.dedent(
    """
    import asyncio, datetime as dt, sys, uuid
    import asyncpg
    import writebehind as wb
    dsn, table, parity = sys.argv[1], sys.argv[2], int(sys.argv[3])
    agents = [uuid.UUID(int=i + 1) for i in range(300)]
    T0 = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)
    async def main():
        watch = await asyncpg.connect(dsn)
        sink = wb.PostgresSink(dsn, table=table, key="id", version="updated_at")
        async with wb.AsyncBatcher(sink, key="id", version="updated_at", max_batch=50,
                                   linger=0.01) as b:
            for v in range(40):
                if v % 2 != parity:
                    continue
                if parity == 0:  # the barrier: the older version goes after the newer landed
                    newer = T0 + dt.timedelta(seconds=v + 1)
                    async with asyncio.timeout(20):
                        while await watch.fetchval(
                            f"SELECT count(*) FROM {table} WHERE updated_at >= $1", newer
                        ) < len(agents):
                            await asyncio.sleep(0.005)
                for a in agents:
                    await b.add({"id": a, "updated_at": T0 + dt.timedelta(seconds=v),
                                 "note": f"p{parity}-v{v}"})
                await b.flush()
        await watch.close()
        assert b.stats().lost == 0
    asyncio.run(main())
    """
)


async def test_two_processes_write_the_same_keys(pg: asyncpg.Connection, table: str) -> None:
    """Two batchers in two processes write interleaved versions of the same keys, the odd
    (newer) ones in one, the even in the other; a barrier holds each even version until the
    next odd one has landed, so the older version is always written last. Every row ends at
    the newest version, whichever process wrote it."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", TWO_PROCESS_WRITER, DSN, table, str(parity)
        )
        for parity in (0, 1)
    ]
    assert [await p.wait() for p in procs] == [0, 0]
    rows = await pg.fetch(f"SELECT note, count(*) FROM {table} GROUP BY note")
    assert [tuple(r) for r in rows] == [("p1-v39", 300)]


async def test_terminated_backends_lose_and_duplicate_nothing(
    pg: asyncpg.Connection, table: str
) -> None:
    """Backends killed with pg_terminate_backend mid-run, under two batchers: one upserting
    into the keyed table, one appending the same records into a log with no key. Every
    record is committed exactly once: each key at its newest note, and the log holds every
    record, with count(*) against count(DISTINCT seq) (a primary key would make a duplicate
    impossible to see); a duplicate is allowed only as a whole batch whose write was killed
    after its COMMIT reached the server, and then replayed (tests/replays.py)."""
    app = f"wbkill{uuid.uuid4().hex[:8]}"
    log = f"{table}_log"
    await pg.execute(f"CREATE TABLE {log} (seq bigint NOT NULL, id uuid NOT NULL, note text)")
    agents = [uuid.uuid4() for _ in range(3000)]
    dsn = f"{DSN}?application_name={app}"
    sink = wb.PostgresSink(dsn, table=table, key="id", version="updated_at", pool_size=2)
    log_sink = WriteLog(wb.PostgresSink(dsn, table=log, pool_size=2), field="seq")
    policy = wb.RetryPolicy(base=0.01, cap=0.2, max_attempts=50)
    killed = 0
    done = asyncio.Event()

    async def killer() -> None:  # up to 25 kills, about one every 50 ms, while writing
        nonlocal killed
        while killed < 25 and not done.is_set():
            killed += await pg.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                app,
            )
            await asyncio.sleep(0.05)

    opts: dict[str, Any] = dict(max_batch=200, max_in_flight=2, linger=0.005, retry=policy)
    try:
        async with (
            wb.AsyncBatcher(sink, key="id", version="updated_at", **opts) as b,
            wb.AsyncBatcher(log_sink, **opts) as appender,
        ):
            task = asyncio.create_task(killer())
            receipts = []
            seq = 0
            for second in range(4):
                for a in agents:
                    receipts.append(await b.add(heartbeat(a, second, str(second))))
                    await appender.add({"seq": seq, "id": a, "note": str(second)})
                    seq += 1
            await b.flush()
            await appender.flush()
            done.set()  # the pool keeps no idle minimum: after the run there may be none
            await task
        total, distinct = await pg.fetchrow(f"SELECT count(*), count(DISTINCT seq) FROM {log}")
        copies = dict(
            await pg.fetch(f"SELECT seq, count(*) FROM {log} GROUP BY seq HAVING count(*) > 1")
        )
    finally:
        await pg.execute(f"DROP TABLE IF EXISTS {log}")
    s, sa = b.stats(), appender.stats()
    print(f"\nkilled {killed}; retried: upsert {s.retried}, append {sa.retried}; "
          f"append duplicates {total - distinct}")  # fmt: skip
    assert killed >= 5, killed
    assert s.retried > 0  # both batchers were hit
    assert sa.retried > 0
    assert s.lost == s.dead_lettered == sa.lost == sa.dead_lettered == 0
    assert all(r.outcome in (wb.Outcome.COMMITTED, wb.Outcome.COALESCED) for r in receipts)
    stored = {r["id"]: r["note"] for r in await pg.fetch(f"SELECT id, note FROM {table}")}
    assert stored == {a: "3" for a in agents}
    assert distinct == seq == sa.committed == len(agents) * 4
    assert sorted(log_sink.committed()) == list(range(seq))
    assert total - distinct == sum(copies.values()) - len(copies)
    assert unexplained_duplicates(copies, log_sink.tries) == []


async def test_canary_password_never_appears(caplog: pytest.LogCaptureFixture, table: str) -> None:
    """A password planted in the DSN appears in no repr, log line, error, stats or report."""
    canary = "Canary-Pw-7f3a91"
    dsn = DSN.replace("postgresql://root@", f"postgresql://root:{canary}@")
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    sink = wb.PostgresSink(dsn, table=table, key="id", version="updated_at")
    seen.append(repr(sink))
    letters: list[wb.DeadLetterEntry] = []
    async with wb.AsyncBatcher(
        sink, key="id", version="updated_at", dead_letter=letters.extend
    ) as b:
        b.add_nowait({"id": uuid.uuid4(), "updated_at": "not a time"})  # a permanent error
        b.add_nowait({"id": uuid.uuid4(), "updated_at": T0, "nosuch": 1})
        await b.flush()
    seen += [repr(b.stats()), repr(await b.close())]
    assert len(letters) == 2
    seen += [e.message + repr(e) for e in letters]
    down = wb.PostgresSink(f"postgresql://root:{canary}@127.0.0.1:1/test", table="t")
    with pytest.raises(wb.WriteBehindError) as info:
        await down.start()
    seen += [str(info.value), repr(info.value), repr(info.value.__cause__), repr(down)]
    seen.append(caplog.text)
    assert len(letters) == 2
    assert "127.0.0.1" in " ".join(seen)
    for text in seen:
        assert canary not in text


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("table", "agents; DROP TABLE agents"),
        ("schema", 'public"."x'),
        ("key", "id--"),
        ("version", "v OR 1=1"),
    ],
)
def test_injection_shaped_identifiers_rejected(arg: str, value: str) -> None:
    """Identifiers that are not plain names raise ConfigError before anything connects."""
    kwargs: dict[str, Any] = {"table": "agents", "key": "id", "version": "v"} | {arg: value}
    with pytest.raises(wb.ConfigError, match=arg):
        wb.PostgresSink(DSN, **kwargs)


async def test_missing_table_and_column_are_found_at_start(table: str) -> None:
    """A missing table, or a key/version column the table lacks, is a ConfigError at start."""
    with pytest.raises(wb.ConfigError, match="does not exist"):
        async with wb.AsyncBatcher(
            wb.PostgresSink(DSN, table="no_such_table_x", key="id"), key="id"
        ):
            pass
    sink = wb.PostgresSink(DSN, table=table, key="id", version="seen_at")
    with pytest.raises(wb.ConfigError, match="'seen_at'"):
        await wb.AsyncBatcher(sink, key="id", version="seen_at").start()
