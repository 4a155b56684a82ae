"""Producers and flushers on different hosts: a Redis stream between them.

Run: python examples/redis_stream_handoff.py   (``pip install 'writebehind[redis]'``)

It uses the Redis at ``redis://127.0.0.1:6379/0`` unless ``WB_REDIS_URL`` names another,
and fails at once if that Redis does not answer. The stream has a name of its own for each
run and is deleted at the end.

Here the "hosts" are tasks of one process, so that it runs anywhere; in a service each side
runs in its own processes, on any number of machines, with the same two calls:

* a producer is an ordinary batcher whose sink is ``wb.RedisStreamSink``: a batch is one
  round trip to Redis, and *committed* means in the stream (it survives the producer);
* a flusher runs ``wb.consume_stream`` into a batcher whose sink is the datastore (SQLite
  here): it reads as one consumer group, adds each record, and acknowledges an entry only
  once its record is committed (or coalesced, dead-lettered, dropped by policy).

One flusher is "killed" (cancelled) with entries read but not written (its database never
answers: its close reports those records lost, as a crash would lose them); the other
claims their entries after ``claim_after`` seconds and writes them. At the end every agent
is in the table at its newest version, and nothing is pending in the stream.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path

import redis
import redis.asyncio

import writebehind as wb
from writebehind.testing import GatedSink

URL = os.environ.get("WB_REDIS_URL", "redis://127.0.0.1:6379/0")
STREAM = f"example-heartbeats-{uuid.uuid4().hex[:8]}"
AGENTS, BEATS = 200, 5


async def producer(name: str, agents: range) -> None:
    """One host's app: heartbeats go to the stream, not to the database."""
    sink = wb.RedisStreamSink(URL, stream=STREAM, maxlen=100_000)
    async with wb.AsyncBatcher(sink, key="id", version="v", max_batch=100, linger=0.05) as b:
        for v in range(BEATS):
            for a in agents:
                await b.add({"id": f"agent-{a}", "v": v, "status": "up", "by": name})
    print(f"{name}: {b.stats().committed} heartbeats in the stream")


async def flusher(name: str, db: Path, *, run_for: float | None = None) -> None:
    """One flusher host: the stream into the table, acknowledged only once committed. The
    one that dies (``run_for``) has a database that never answers: it reads entries, holds
    their records, and dies without writing or acknowledging any."""
    sink = wb.SQLiteSink(db, table="agents", key="id", version="v")
    if run_for is not None:
        sink = GatedSink()  # never opened: every write hangs
    options = {"max_batch": 200, "linger": 0.1, "close_timeout": 0.2}
    async with wb.AsyncBatcher(sink, key="id", version="v", **options) as b:
        reading = asyncio.ensure_future(
            wb.consume_stream(URL, stream=STREAM, group="flushers", consumer=name, into=b,
                              claim_after=1.0, block=0.1)
        )  # fmt: skip
        if run_for is not None:  # this one dies: cancelled, its unacknowledged entries pending
            await asyncio.sleep(run_for)
            reading.cancel()
            print(f"{name}: killed after {run_for} s (its pending entries wait for a claim)")
            return
        client = redis.asyncio.Redis.from_url(URL)
        # poll Redis until the stream is drained and nothing is pending
        while await client.xlen(STREAM) or (await client.xpending(STREAM, "flushers"))["pending"]:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await client.aclose()
    report = await reading
    print(f"{name}: wrote {b.stats().committed} rows; {report}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "agents.db"
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TABLE agents (id TEXT PRIMARY KEY, v INTEGER, status TEXT, by TEXT)"
            )
        doomed = asyncio.create_task(flusher("flusher-a", db, run_for=0.5))
        await asyncio.gather(producer("app-1", range(0, 100)), producer("app-2", range(100, 200)))
        await doomed
        await flusher("flusher-b", db)
        with sqlite3.connect(db) as conn:
            rows, newest = conn.execute("SELECT count(*), min(v) FROM agents").fetchone()
        print(f"table: {rows} agents, every one at its newest version: {newest == BEATS - 1}")
        assert (rows, newest) == (AGENTS, BEATS - 1)


def redis_answers() -> None:
    client = redis.Redis.from_url(URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis does not answer (WB_REDIS_URL or the default): {type(exc).__name__}")
    finally:
        client.close()


if __name__ == "__main__":
    redis_answers()
    try:
        asyncio.run(main())
    finally:
        cleanup = redis.Redis.from_url(URL)
        cleanup.delete(STREAM)
        cleanup.close()
