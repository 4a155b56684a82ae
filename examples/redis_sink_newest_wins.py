"""``RedisSink``: presence in Redis, newest wins whoever writes last.

Run: python examples/redis_sink_newest_wins.py   (``pip install 'writebehind[redis]'``)

It uses the Redis at ``redis://127.0.0.1:6379/0`` unless ``WB_REDIS_URL`` names another.
Two batchers (two replicas of a service, say) write the same agents' heartbeats with
versions in opposite orders. Each batch is one Lua script that writes a record only if its
version is at least the one stored, so every agent's hash ends at its newest version, and
a "last seen" sorted set never moves back in time. Keys expire after a minute.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import redis
import redis.asyncio

import writebehind as wb

URL = os.environ.get("WB_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"example:{uuid.uuid4().hex[:8]}:"


async def replica(name: str, versions: list[int]) -> None:
    hashes = wb.RedisSink(URL, kind="hash", key="id", version="v", prefix=PREFIX, ttl=60)
    seen = wb.RedisSink(URL, kind="zset", key="id", version="v", name=f"{PREFIX}seen", ttl=60)
    async with (
        wb.AsyncBatcher(hashes, key="id", version="v", linger=0.01) as b1,
        wb.AsyncBatcher(seen, key="id", version="v", linger=0.01) as b2,
    ):
        for v in versions:
            for agent in ("a1", "a2", "a3"):
                record = {"id": agent, "v": v, "status": f"up at {v}", "by": name}
                await b1.add(record)
                await b2.add(record)
            await asyncio.sleep(0.02)  # a batch per version: the two replicas interleave
    print(f"{name}: {hashes.written} written, {hashes.refused} refused as older")


async def main() -> None:
    await asyncio.gather(replica("replica-1", list(range(10))), replica("replica-2", [9, 5, 1]))
    client = redis.asyncio.Redis.from_url(URL, decode_responses=True)
    for agent in ("a1", "a2", "a3"):
        row = await client.hgetall(f"{PREFIX}{agent}")
        print(agent, row)
        assert row["v"] == "9"
    print("last seen:", await client.zrange(f"{PREFIX}seen", 0, -1, withscores=True))
    await client.aclose()


if __name__ == "__main__":
    try:
        redis.Redis.from_url(URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis does not answer (WB_REDIS_URL or the default): {type(exc).__name__}")
    asyncio.run(main())
