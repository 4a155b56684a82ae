"""The Redis Streams hand-off (issue 16): rows/s into PostgreSQL with 1, 2 and 4 flusher
processes reading one stream, against the same processes writing the same records to
PostgreSQL directly (the ceiling the machine and the server allow), and the producer-side
cost of the stream hop against an in-process batcher.

Flushers: the stream is prefilled with N unique heartbeats (``RedisStreamSink``); each run
creates a fresh table and a fresh consumer group at the stream's start, starts K flusher
processes (``_streams_worker``: ``consume_stream`` into a ``PostgresSink`` batcher,
``max_batch=500``, ``max_in_flight=2``, two connections each), waits until each is ready,
and times from "go" until their committed counts add up to N. The direct rows give the same
K processes their share of the same records to add themselves. Each run's table is checked
to hold exactly N rows.

Producer side: one process, ``await add()`` of M records into a batcher whose sink is a
no-op (the floor), ``PostgresSink`` (the in-process batcher doing its own writes), or
``RedisStreamSink`` (the hop); CPU time of the producing process per record, and wall rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

import asyncpg
import redis

import writebehind as wb

from ._common import BenchmarkError, Section, Table, Target, check, fmt_int, heartbeats
from ._report import ROOT
from .postgres_e2e import _DDL, DSN

__all__ = ["measure"]

REDIS_URL = os.environ.get("WB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
FLUSHERS = (1, 2, 4)
_TARGET = 1.6  # 2 flushers at least this many times one, until PostgreSQL is the limit
_CEILING = 0.9  # a stream rate this close to the direct rate is "PostgreSQL is the limit"


def measure(quick: bool = False) -> Section:
    _redis_up()
    n = 20_000 if quick else 200_000
    m = 20_000 if quick else 100_000
    return asyncio.run(_measure(n, m, quick))


def _redis_up() -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        why = f"Redis at {REDIS_URL} did not answer ({type(exc).__name__})"
        raise BenchmarkError(why) from None
    finally:
        client.close()


async def _measure(n: int, m: int, quick: bool) -> Section:
    stream = f"wb-bench-{uuid.uuid4().hex[:8]}"
    load = [os.getloadavg()[0]]
    records, _ = heartbeats(n, 1, interval=1.0, seed=11)
    sink = wb.RedisStreamSink(REDIS_URL, stream=stream)
    await sink.start()
    try:
        for i in range(0, n, 1000):
            await sink.write(records[i : i + 1000])
        del records
        rates: dict[tuple[str, int], float] = {}
        for k in FLUSHERS:
            for mode in ("direct", "stream"):
                rates[(mode, k)] = await _flush_run(mode, k, n, stream)
                print(f"  {mode} x{k}: {rates[(mode, k)]:,.0f} rows/s", file=sys.stderr)
                load.append(os.getloadavg()[0])
        producer = await _producer_costs(m)
    finally:
        await sink._client.delete(stream)
        await sink.close()
    return _section(n, m, rates, producer, load)


async def _flush_run(mode: str, k: int, n: int, stream: str) -> float:
    """Rows/s of ``k`` flusher processes writing ``n`` rows in ``mode``."""
    table, group = f"wb_bench_{uuid.uuid4().hex[:10]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(DSN)
    await admin.execute(f"CREATE TABLE {table} {_DDL}")
    client = redis.Redis.from_url(REDIS_URL)
    client.xgroup_create(stream, group, id="0")
    procs: list[Any] = []  # asyncio subprocesses, with stdin and stdout pipes
    counts = [0] * k
    reached = asyncio.Event()
    when: list[float] = []

    async def follow(i: int, proc: Any) -> None:
        async for line in proc.stdout:
            msg = json.loads(line)
            if msg["event"] == "tick":
                counts[i] = msg["committed"]
                if sum(counts) >= n and not when:
                    when.append(msg["t"])
                    reached.set()

    try:
        settings = {
            "dsn": DSN, "redis": REDIS_URL, "stream": stream, "group": group, "table": table,
            "mode": mode, "n": n, "of": k, "seed": 11,
        }  # fmt: skip
        for i in range(k):
            proc: Any = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._streams_worker", cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            proc.stdin.write((json.dumps({**settings, "index": i}) + "\n").encode())
            await proc.stdin.drain()
            procs.append(proc)
        for proc in procs:
            line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
            check(line["event"] == "ready", f"a flusher said {line!r}")
        followers = [asyncio.create_task(follow(i, p)) for i, p in enumerate(procs)]
        t0 = time.time()
        for proc in procs:
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        await asyncio.wait_for(reached.wait(), 120)
        seconds = when[0] - t0
        for proc in procs:
            proc.stdin.close()
        await asyncio.wait_for(asyncio.gather(*followers, *(p.wait() for p in procs)), 60)
        rows = await admin.fetchval(f"SELECT count(*) FROM {table}")
        check(rows == n, f"{mode} x{k}: {rows} rows in the table, not {n}")
        return n / seconds
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await admin.execute(f"DROP TABLE IF EXISTS {table}")
        await admin.close()
        client.xgroup_destroy(stream, group)
        client.close()


async def _noop(batch: list[Any]) -> None:
    return None


async def _producer_costs(m: int) -> dict[str, tuple[float, float]]:
    """(CPU us per record in this process, records/s) of ``await add()`` of ``m`` records
    into a batcher on each sink."""
    records, _ = heartbeats(m, 1, interval=1.0, seed=13)
    stream = f"wb-bench-p-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(DSN)
    table = f"wb_bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f"CREATE TABLE {table} {_DDL}")
    out: dict[str, tuple[float, float]] = {}
    sinks: dict[str, Any] = {
        "in-process batcher, no-op sink (the floor)": wb.CallableSink(_noop),
        "in-process batcher into PostgreSQL (PostgresSink)": wb.PostgresSink(
            DSN, table=table, key="id", pool_size=2
        ),
        "batcher into the stream (RedisStreamSink)": wb.RedisStreamSink(REDIS_URL, stream=stream),
    }
    try:
        for name, sink in sinks.items():
            best = (float("inf"), 0.0)
            for _ in range(2):
                cpu0, t0 = time.process_time(), time.perf_counter()
                async with wb.AsyncBatcher(sink, max_batch=500, linger=0.05, max_in_flight=2) as b:
                    for record in records:
                        await b.add(record)
                check(b.stats().committed == m, f"{name}: {b.stats()}")
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
                best = min(best, (cpu / m * 1e6, m / wall))
                await admin.execute(f"TRUNCATE {table}")
            out[name] = best
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table}")
        await admin.close()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream)
        client.close()
    return out


def _section(
    n: int,
    m: int,
    rates: dict[tuple[str, int], float],
    producer: dict[str, tuple[float, float]],
    load: list[float],
) -> Section:
    one, two = rates[("stream", 1)], rates[("stream", 2)]
    rows = []
    for k in FLUSHERS:
        s, d = rates[("stream", k)], rates[("direct", k)]
        rows.append([str(k), fmt_int(s), f"{s / one:.2f}x", fmt_int(d), f"{s / d:.0%}"])
    flushers = Table(
        f"rows/s into PostgreSQL, {fmt_int(n)} unique heartbeats",
        ["flusher processes", "through the stream", "vs 1 flusher", "direct (no stream)",
         "stream / direct"],
        rows,
    )  # fmt: skip
    floor = next(iter(producer.values()))[0]
    prows = [
        [name, f"{cpu:.1f}", f"+{cpu - floor:.1f}", fmt_int(rate)]
        for name, (cpu, rate) in producer.items()
    ]
    costs = Table(
        f"producer side, `await add()` of {fmt_int(m)} records (best of 2)",
        ["batcher", "CPU us/record (producer process)", "over the floor", "records/s"],
        prows,
    )  # fmt: skip
    at_limit = two >= _CEILING * rates[("direct", 2)]
    met = two / one >= _TARGET or at_limit
    d1, d2 = rates[("direct", 1)], rates[("direct", 2)]
    why = f"2 flushers {two / one:.2f}x one ({fmt_int(two)} vs {fmt_int(one)} rows/s)"
    if at_limit:
        why += (
            f"; PostgreSQL on this machine is the limit: 2 processes writing directly reach "
            f"{fmt_int(d2)} rows/s ({d2 / d1:.2f}x one)"
        )
    return Section(
        key="streams",
        title="Redis Streams hand-off",
        method=(
            "`benchmarks/streams.py`: a stream prefilled with unique heartbeats; per run a "
            "fresh table and consumer group, K flusher processes (`consume_stream` into "
            "`PostgresSink`, `max_batch=500`, `max_in_flight=2`) timed from a common start "
            "until they committed every record; the direct column is the same K processes "
            "adding their share straight to the same batcher (PostgreSQL's ceiling here). "
            "Producer side: CPU of one process per `await add()` into a batcher on a no-op "
            "sink, `PostgresSink`, and `RedisStreamSink`. Redis, PostgreSQL and the "
            "processes share the machine's 2 cores."
        ),
        tables=[flushers, costs],
        targets=[Target("2 flushers >= 1.6x one, until PostgreSQL is the limit", met, why)],
        notes=[f"load average (1 min) during the runs: {', '.join(f'{x:.2f}' for x in load)}"],
        data={
            "rates": {f"{mode}-{k}": r for (mode, k), r in rates.items()},
            "producer": producer,
            "load": load,
        },
    )
