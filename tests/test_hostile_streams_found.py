"""Defects a hostile review of the Redis Streams hand-off and ``RedisSink`` found (issue 16).

Each test failed before its fix; its docstring says what it showed and what is expected.
Against the real Redis (a private ``redis-server`` where one is killed); never skipped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

import writebehind as wb
from tests.redis_server import SHARED_URL, private_redis, shared_redis
from writebehind.testing import MemorySink

pytestmark = pytest.mark.server

FAST = {"max_batch": 50, "linger": 0.01}


@pytest.fixture
async def stream() -> AsyncIterator[str]:
    shared_redis().close()  # fails (never skips) without the server
    name = f"wb-hostile-{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.Redis.from_url(SHARED_URL)
    keys = await client.keys(f"{name}*")
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def r() -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(SHARED_URL)
    yield client
    await client.aclose()


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            value = cond()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.02)


def start(url: Any, stream: str, into: wb.AsyncBatcher, **kw: Any) -> asyncio.Future[Any]:
    return asyncio.ensure_future(
        wb.consume_stream(url, stream=stream, group="g", consumer="c", into=into, block=0.1, **kw)
    )


# -- consume_stream ------------------------------------------------------------------------------
async def test_a_stream_deleted_mid_run_is_recreated_and_reading_goes_on(
    stream: str, r: Any
) -> None:
    """Showed: deleting the stream while a consumer blocks in XREADGROUP made consume_stream
    raise PermanentSinkError ("UNBLOCKED the stream key no longer exists"; then NOGROUP):
    the NOGROUP branch that recreates the group was unreachable, since every ResponseError
    maps to a permanent error first. Expected: the group is created again and entries
    written to the new stream are read and written."""
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, **FAST) as flusher:
        task = start(SHARED_URL, stream, flusher)
        await r.xadd(stream, {"r": '{"id": 1}'})
        await until(lambda: len(sink.records) == 1)
        await asyncio.sleep(0.15)  # blocked in XREADGROUP again
        await r.delete(stream)
        await asyncio.sleep(0.3)
        assert not task.done(), task.exception()
        await r.xadd(stream, {"r": '{"id": 2}'})
        await until(lambda: len(sink.records) == 2 or task.done())
        assert not task.done(), task.exception()
    report = await asyncio.wait_for(task, 5)
    assert [x["id"] for x in sink.records] == [1, 2]
    assert report.added == 2


async def test_redis_restarted_without_persistence_the_group_is_created_again() -> None:
    """Showed: a private Redis (no persistence) SIGKILLed and restarted under a running
    consumer: consume_stream died with PermanentSinkError (NOGROUP), although
    docs/scaling.md promises "consume_stream creates the group again". Expected: it rides
    out the outage, creates the group, and reads what is written after the restart."""
    with private_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        for i in range(5):
            await client.xadd("s", {"r": f'{{"id": {i}}}'})
        sink = MemorySink()
        async with wb.AsyncBatcher(sink, **FAST) as flusher:
            task = start(server.url, "s", flusher)
            await until(lambda: len(sink.records) == 5)
            await client.aclose()
            server.kill()
            await asyncio.sleep(0.2)
            server.start()
            client = aioredis.Redis.from_url(server.url)
            await client.xadd("s", {"r": '{"id": 5}'})
            await until(lambda: len(sink.records) == 6 or task.done(), timeout=5)
            assert not task.done(), task.exception()
        report = await asyncio.wait_for(task, 5)
        assert report.added == 6
        await client.aclose()


async def test_claim_after_and_block_beyond_what_redis_takes_are_config_errors(
    stream: str,
) -> None:
    """Showed: claim_after=1e17 started and then died with PermanentSinkError ("Invalid
    min-idle-time argument for XAUTOCLAIM"); claim_after=1e308 died with an OverflowError
    wrapped as PermanentSinkError; block=1e308 raised a bare OverflowError. Expected: a
    ConfigError at the call, like the other bad arguments."""
    async with wb.AsyncBatcher(MemorySink()) as b:
        for bad in ({"claim_after": 1e17}, {"claim_after": 1e308}, {"block": 1e308}):
            kw: dict[str, Any] = {"block": 0.1, **bad}
            with pytest.raises(wb.ConfigError):
                await asyncio.wait_for(
                    wb.consume_stream(
                        SHARED_URL, stream=stream, group="g", consumer="c", into=b, **kw
                    ),
                    2,
                )


async def test_a_non_utf8_entry_read_through_a_decode_responses_client_is_dead_lettered(
    stream: str, r: Any
) -> None:
    """Showed: with a client of the user's made with decode_responses=True, an entry
    written by something else holding bytes that are not UTF-8 made every XREADGROUP fail
    with UnicodeDecodeError, raised as PermanentSinkError: consume_stream died, and would
    die again on that entry at every restart (a poison entry). Expected: the entry is
    dead-lettered raw like any undecodable one, and the good entry is written."""
    await r.xadd(stream, {"r": b"\xff\xfe not utf-8"})
    await r.xadd(stream, {"r": '{"id": 1}'})
    client = aioredis.Redis.from_url(SHARED_URL, decode_responses=True)
    sink = MemorySink()
    kept: list[wb.DeadLetterEntry] = []
    async with wb.AsyncBatcher(sink, dead_letter=kept.extend, **FAST) as flusher:
        task = start(client, stream, flusher)
        await until(lambda: len(sink.records) == 1 or task.done())
        assert not task.done(), task.exception()
    report = await asyncio.wait_for(task, 5)
    assert report.dead_lettered == 1
    assert len(kept) == 1
    assert await r.xlen(stream) == 0
    assert await client.ping()  # the user's client is left open
    await client.aclose()


async def test_entries_dead_lettered_raw_are_counted_logged_and_evented(
    stream: str, r: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Showed: two undecodable entries dead-lettered into the batcher's store appeared in
    StreamReport.dead_lettered only: no log line (with a store) and no event, and not in
    stats() (they were never accepted, so the conservation identity cannot count them).
    Expected: a WARNING naming the count and the stream, and a RecordsDeadLettered event
    (attempts=0) on the batcher's event stream; stats() stays an identity over accepted
    records."""
    await r.xadd(stream, {"r": b"\xff not json"})
    await r.xadd(stream, {"other": "x"})
    await r.xadd(stream, {"r": '{"id": 1}'})
    store = wb.SQLiteDeadLetter(tmp_path / "dead.db")
    sink = MemorySink()
    caplog.set_level(logging.WARNING, logger="writebehind")
    async with wb.AsyncBatcher(sink, key="id", dead_letter=store, **FAST) as flusher:
        events = flusher.events(since=1)
        task = start(SHARED_URL, stream, flusher)
        await until(lambda: len(sink.records) == 1)
        await until(lambda: flusher.stats().committed == 1)
        await asyncio.sleep(0.1)
    report = await asyncio.wait_for(task, 5)
    seen = [e async for e in events]
    dead = [e for e in seen if isinstance(e, wb.RecordsDeadLettered)]
    assert sum(e.count for e in dead) == 2, seen
    assert all(e.attempts == 0 for e in dead)
    assert report.dead_lettered == 2
    lines = [x.getMessage() for x in caplog.records if "dead-lettered" in x.getMessage()]
    assert any(stream in line and "2 " in line for line in lines), lines
    stats = flusher.stats()
    assert stats.accepted == 1
    assert stats.dead_lettered == 0
    await store.close()


# -- RedisSink -----------------------------------------------------------------------------------
async def test_a_record_whose_key_holds_another_type_is_isolated(stream: str, r: Any) -> None:
    """Showed: one record whose hash key already held a string (WRONGTYPE inside the
    script) was mapped to SinkMisconfigured for the whole batch: all 6 records of the
    batch were dead-lettered, 5 of them fine. Expected: that record alone is
    dead-lettered; the others are committed."""
    prefix = f"{stream}:"
    await r.set(f"{prefix}3", "a string someone else wrote")
    sink = wb.RedisSink(SHARED_URL, kind="hash", key="id", version="v", prefix=prefix)
    async with wb.AsyncBatcher(sink, key="id", version="v", **FAST) as b:
        receipts = [await b.add({"id": i, "v": 1}) for i in range(6)]
    outcomes = [await x for x in receipts]
    assert outcomes[3] is wb.Outcome.DEAD_LETTERED
    assert [o for i, o in enumerate(outcomes) if i != 3] == [wb.Outcome.COMMITTED] * 5
    assert await r.hget(f"{prefix}0", "v") == b"1"


async def test_a_hash_record_with_ten_thousand_fields_is_written(stream: str, r: Any) -> None:
    """Showed: a record of 10,000 fields failed in the hash script with "too many results
    to unpack" (one HSET of every field through Lua's unpack) and was dead-lettered.
    Expected: it is written (the fields set in chunks)."""
    sink = wb.RedisSink(SHARED_URL, kind="hash", key="id", version="v", prefix=f"{stream}:")
    record = {"id": 1, "v": 1, **{f"f{i}": i for i in range(10_000)}}
    async with wb.AsyncBatcher(sink, key="id", version="v", **FAST) as b:
        receipt = await b.add(record)
    assert await receipt is wb.Outcome.COMMITTED
    assert await r.hlen(f"{stream}:1") == 10_003  # id, v, f0..f9999 and _wb_version
    assert await r.hget(f"{stream}:1", "f9999") == b"9999"


async def test_a_string_record_keyed_like_a_version_key_cannot_poison_another(
    stream: str, r: Any
) -> None:
    """Showed: with kind="string", a record whose key is "1:version" overwrote the version
    key of record "1" with its JSON; every later write of key "1" then failed in the script
    ("attempt to compare nil with number") and was dead-lettered, for good. Expected: such
    a record is refused alone (dead-lettered), and key "1" stays writable."""
    sink = wb.RedisSink(SHARED_URL, kind="string", key="id", version="v", prefix=f"{stream}:")
    async with wb.AsyncBatcher(sink, key="id", version="v", **FAST) as b:
        first = await b.add({"id": "1", "v": 1})
        await b.flush()
        evil = await b.add({"id": "1:version", "v": 9})
        await b.flush()
        later = await b.add({"id": "1", "v": 2})
    assert await first is wb.Outcome.COMMITTED
    assert await evil is wb.Outcome.DEAD_LETTERED
    assert await later is wb.Outcome.COMMITTED
    assert await r.get(f"{stream}:1:version") == b"2"


async def test_versions_a_double_cannot_order_are_refused_not_overwritten(
    stream: str, r: Any
) -> None:
    """Showed: version Decimal("1.00000000000000001") was written, then the older
    Decimal("1.0") overwrote it (both became the double 1.0, so "equal"); likewise two
    datetimes one microsecond apart in the year 9000 (beyond 2**53 microseconds). The
    newest did not win. Expected: a version the script's doubles cannot order exactly is
    refused (PermanentSinkError: dead-lettered), as an int beyond 2**53 already is."""
    sink = wb.RedisSink(SHARED_URL, kind="zset", key="id", version="v", name=stream)
    await sink.start()
    try:
        await sink.write([{"id": "ok", "v": decimal.Decimal("12.34")}])  # exact enough
        with pytest.raises(wb.PermanentSinkError):
            await sink.write([{"id": "d", "v": decimal.Decimal("1.00000000000000001")}])
        with pytest.raises(wb.PermanentSinkError):
            await sink.write([{"id": "t", "v": dt.datetime(9000, 1, 1, 0, 0, 0, 1)}])
        assert await r.zscore(stream, "ok") == 12.34
    finally:
        await sink.close()
