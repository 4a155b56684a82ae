"""``RedisSink``: newest wins in Redis (one Lua script per batch), against the real Redis.
Never skipped: a missing server fails. Each test has keys of its own."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

import writebehind as wb
from tests.redis_server import SHARED_URL, shared_redis
from writebehind.sinks.redis import VERSION_FIELD

pytestmark = pytest.mark.server

FAST = {"max_batch": 40, "linger": 0.01}


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    shared_redis().close()  # fails (never skips) without the server
    name = f"wb-test-{uuid.uuid4().hex[:10]}:"
    yield name
    client = aioredis.Redis.from_url(SHARED_URL)
    keys = [k async for k in client.scan_iter(match=f"{name}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def r() -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(SHARED_URL, decode_responses=True)
    yield client
    await client.aclose()


async def started(**kw: Any) -> wb.RedisSink:
    sink = wb.RedisSink(SHARED_URL, **kw)
    await sink.start()
    return sink


async def test_the_script_refuses_an_older_version(prefix: str, r: Any) -> None:
    """hash: v=5 is written, then v=3 is refused (the hash keeps v=5's fields), v=5 again
    overwrites (an equal version is a replay: identical data), v=7 replaces the hash whole
    (a field the newer record lacks is gone)."""
    sink = await started(kind="hash", key="id", version="v", prefix=prefix)
    try:
        await sink.write([{"id": "a", "v": 5, "status": "up", "extra": 1}])
        await sink.write([{"id": "a", "v": 3, "status": "OLD"}])
        assert await r.hgetall(f"{prefix}a") == {
            "id": "a",
            "v": "5",
            "status": "up",
            "extra": "1",
            VERSION_FIELD: "5",
        }
        assert (sink.written, sink.refused) == (1, 1)
        await sink.write([{"id": "a", "v": 5, "status": "up", "extra": 1}])
        assert sink.written == 2
        await sink.write([{"id": "a", "v": 7, "status": "down", "note": None}])
        assert await r.hgetall(f"{prefix}a") == {
            "id": "a",
            "v": "7",
            "status": "down",
            VERSION_FIELD: "7",
        }
        # one batch, both orders: the older of the two never lands
        await sink.write([{"id": "b", "v": 2, "s": "new"}, {"id": "b", "v": 1, "s": "old"}])
        assert await r.hget(f"{prefix}b", "s") == "new"
    finally:
        await sink.close()


async def test_string_and_zset_kinds(prefix: str, r: Any) -> None:
    """string: the record as tagged JSON, its version beside it; zset: member = key,
    score = version, never lowered; datetimes compare as microseconds since the epoch."""
    t0 = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)
    s = await started(kind="string", key=("tenant", "id"), version="at", prefix=prefix, ttl=60)
    z = await started(kind="zset", key="id", version="at", name=f"{prefix}seen")
    try:
        later = {"tenant": "t1", "id": 1, "at": t0 + dt.timedelta(microseconds=1), "x": "new"}
        await s.write([later, {"tenant": "t1", "id": 1, "at": t0, "x": "old"}])
        stored = json.loads(await r.get(f"{prefix}t1:1"))
        assert stored["x"] == "new"
        assert stored["at"] == {"$dt": later["at"].isoformat()}
        assert 0 < await r.ttl(f"{prefix}t1:1") <= 60
        await z.write([{"id": "a", "at": t0}, {"id": "b", "at": t0.replace(hour=9)}])
        await z.write([{"id": "a", "at": t0.replace(hour=8)}])  # older: refused
        scores = dict(await r.zrange(f"{prefix}seen", 0, -1, withscores=True))
        assert scores == {"a": t0.timestamp() * 1e6, "b": t0.replace(hour=9).timestamp() * 1e6}
        assert z.refused == 1
    finally:
        await s.close()
        await z.close()


async def test_newest_wins_under_two_concurrent_writers(prefix: str, r: Any) -> None:
    """Two batchers (two clients, as two hosts would be) write every version 0..29 of 100
    keys, each in its own shuffled order, concurrently, with small batches: every key ends
    at version 29 with version 29's data, whichever batch landed last."""
    versions = [(k, v) for k in range(100) for v in range(30)]

    async def writer(seed: int) -> wb.Stats:
        order = versions[:]
        random.Random(seed).shuffle(order)
        sink = wb.RedisSink(SHARED_URL, kind="hash", key="id", version="v", prefix=prefix)
        async with wb.AsyncBatcher(sink, key="id", version="v", max_in_flight=2, **FAST) as b:
            for i, (k, v) in enumerate(order):
                await b.add({"id": k, "v": v, "data": f"{k}@{v}", "by": seed})
                if i % 97 == 0:
                    await asyncio.sleep(0)  # let the other writer interleave
        return b.stats()

    stats = await asyncio.gather(writer(1), writer(2))
    assert all(s.committed + s.coalesced == len(versions) for s in stats)
    for k in range(100):
        row = await r.hgetall(f"{prefix}{k}")
        assert (row["v"], row["data"]) == ("29", f"{k}@29"), row


async def test_versions_it_cannot_order_are_dead_lettered_alone(prefix: str, r: Any) -> None:
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.RedisSink(SHARED_URL, kind="hash", key="id", version="v", prefix=prefix)
    async with wb.AsyncBatcher(sink, dead_letter=letters.extend, **FAST) as b:
        for i, v in enumerate([1, 2**60, "text", float("inf"), 2.5]):
            await b.add({"id": i, "v": v})
    assert b.stats().committed == 2
    assert sorted(e.record["id"] for e in letters) == [1, 2, 3]
    assert await r.hget(f"{prefix}4", VERSION_FIELD) == "2.5"


def test_arguments_are_checked_and_secrets_never_shown() -> None:
    sink = wb.RedisSink("redis://:S3cr3t-pw@127.0.0.1:6379/0", key="id", version="v")
    assert "S3cr3t" not in repr(sink)
    for bad in (
        {"kind": "list"},
        {"key": ""},
        {"key": ("a", 1)},
        {"version": None},
        {"kind": "zset"},
        {"name": "x"},
        {"ttl": 0},
        {"ttl": float("inf")},
    ):
        kw: dict[str, Any] = {"key": "id", "version": "v", **bad}
        with pytest.raises(wb.ConfigError):
            wb.RedisSink(SHARED_URL, **kw)


async def test_the_batchers_key_must_match(prefix: str) -> None:
    """Like the SQL sinks: a batcher coalescing on another key than the sink's is refused."""
    sink = wb.RedisSink(SHARED_URL, key="id", version="v", prefix=prefix)
    with pytest.raises(wb.ConfigError, match="key"):
        async with wb.AsyncBatcher(sink, key="other", version="v"):
            pass


async def test_start_against_a_dead_redis_fails_without_the_password() -> None:
    sink = wb.RedisSink("redis://:S3cr3t-pw@127.0.0.1:1/0", key="id", version="v")
    with pytest.raises(wb.SinkError) as err:
        await sink.start()
    assert err.value.retriable
    assert "S3cr3t" not in str(err.value)
