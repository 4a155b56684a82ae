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
to hold exactly N rows. Every case runs ``REPEATS`` times, interleaved. Over each timed
interval ``_proc_cpu`` reads the CPU of each flusher, redis-server and PostgreSQL, and the
machine's idle share, which say where the limit is (the target's figure names it).

Producer side: one process, ``await add()`` of M records into a batcher whose sink is a
no-op (the floor), ``PostgresSink`` (the in-process batcher doing its own writes), or
``RedisStreamSink`` (the hop); CPU time of the producing process per record, and wall rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis

import writebehind as wb

from ._common import BenchmarkError, Section, Table, Target, check, fmt_int, heartbeats
from ._proc_cpu import Interval, cpu_between, cpu_seconds, snapshot
from ._report import ROOT
from .postgres_e2e import _DDL, DSN

__all__ = ["measure"]

REDIS_URL = os.environ.get("WB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
FLUSHERS = (1, 2, 4)
REPEATS = 3  # interleaved repeats of every case (1 with --quick); medians and ranges
_CORES = os.cpu_count() or 1
_TARGET = 1.6  # 2 flushers at least this many times one, until PostgreSQL is the limit
_CEILING = 0.9  # a stream rate this close to the direct rate is "PostgreSQL is the limit"
_SATURATED = 0.10  # machine idle share at or below which its CPU is the limit
_BUSY_ELSEWHERE = 0.25  # cores other processes took in a run, above which we say so


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
        # the producers are done before any flusher is timed: their CPU competes with none
        for i in range(0, n, 1000):
            await sink.write(records[i : i + 1000])
        del records
        runs: dict[tuple[str, int], list[Run]] = {}
        for _ in range(1 if quick else REPEATS):  # interleaved: each repeat runs every case
            for k in FLUSHERS:
                for mode in ("direct", "stream"):
                    run = await _flush_run(mode, k, n, stream)
                    runs.setdefault((mode, k), []).append(run)
                    print(f"  {mode} x{k}: {run.describe(n)}", file=sys.stderr)
                    load.append(os.getloadavg()[0])
        producer = await _producer_costs(m)
    finally:
        await sink._client.delete(stream)
        await sink.close()
    return _section(n, m, runs, producer, load)


@dataclass(frozen=True)
class Run:
    """One timed run: its rows/s and who used the CPU meanwhile."""

    rate: float
    cpu: Interval

    def per_100k(self, group: str, n: int) -> float:
        """CPU seconds ``group`` used per 100,000 rows."""
        return self.cpu.cpu[group] / n * 1e5

    def describe(self, n: int) -> str:
        return (
            f"{self.rate:,.0f} rows/s; CPU s per 100k rows: flushers "
            f"{self.per_100k('flushers', n):.2f}, redis {self.per_100k('redis', n):.2f}, "
            f"pg {self.per_100k('pg', n):.2f}, all {self.per_100k('all', n):.2f}; "
            f"machine idle {self.cpu.idle:.0%}"
        )


async def _pg_pids(admin: Any, app: str) -> list[int]:
    """Our flushers' PostgreSQL backends, and the server's own processes (WAL writer, ...)."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
        "OR backend_type <> 'client backend'",
        app,
    )
    return [r["pid"] for r in rows]


def _groups(procs: list[Any], redis_pid: int, pg: list[int]) -> dict[str, list[int]]:
    return {"flushers": [p.pid for p in procs], "redis": [redis_pid], "pg": pg}


async def _flush_run(mode: str, k: int, n: int, stream: str) -> Run:
    """Rows/s of ``k`` flusher processes writing ``n`` rows in ``mode``, and the CPU used
    by them, Redis, PostgreSQL and the machine while they did."""
    table, group = f"wb_bench_{uuid.uuid4().hex[:10]}", f"g-{uuid.uuid4().hex[:8]}"
    app = f"wb-bench-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(DSN)
    await admin.execute(f"CREATE TABLE {table} {_DDL}")
    client = redis.Redis.from_url(REDIS_URL)
    client.xgroup_create(stream, group, id="0")
    redis_pid = int(client.info("server")["process_id"])
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
            "mode": mode, "n": n, "of": k, "seed": 11, "app": app,
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
        pg = await _pg_pids(admin, app)
        before = snapshot(time.monotonic(), _groups(procs, redis_pid, pg))
        t0 = time.time()
        for proc in procs:
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        await asyncio.wait_for(reached.wait(), 120)
        after = snapshot(time.monotonic(), _groups(procs, redis_pid, pg))
        seconds = when[0] - t0
        # the pool connects lazily: backends that appeared after "go" count from zero
        late = [p for p in await _pg_pids(admin, app) if p not in pg]
        after.groups["pg"].update({p: s for p in late if (s := cpu_seconds(p)) is not None})
        for proc in procs:
            proc.stdin.close()
        await asyncio.wait_for(asyncio.gather(*followers, *(p.wait() for p in procs)), 60)
        rows = await admin.fetchval(f"SELECT count(*) FROM {table}")
        check(rows == n, f"{mode} x{k}: {rows} rows in the table, not {n}")
        cpu = cpu_between(before, after)
        busy = (1 - cpu.idle) * cpu.seconds * _CORES
        cpu.cpu["all"] = sum(cpu.cpu.values())
        cpu.cpu["other"] = max(0.0, busy - cpu.cpu["all"])  # the rest of the machine
        return Run(n / seconds, cpu)
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


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _spread(xs: list[float], fmt: Callable[[float], str]) -> str:
    """The median, and the range when there are several."""
    if len(xs) == 1:
        return fmt(xs[0])
    return f"{fmt(_med(xs))} ({fmt(min(xs))}-{fmt(max(xs))})"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _section(
    n: int,
    m: int,
    runs: dict[tuple[str, int], list[Run]],
    producer: dict[str, tuple[float, float]],
    load: list[float],
) -> Section:
    def rates(mode: str, k: int) -> list[float]:
        return [r.rate for r in runs[(mode, k)]]

    def ratios(k: int) -> list[float]:  # paired within each repeat
        return [a / b for a, b in zip(rates("stream", k), rates("stream", 1), strict=True)]

    repeats = len(runs[("stream", 1)])
    rows = []
    for k in FLUSHERS:
        s, d = rates("stream", k), rates("direct", k)
        rows.append(
            [str(k), _spread(s, fmt_int), _spread(ratios(k), _x), _spread(d, fmt_int),
             f"{_med(s) / _med(d):.0%}"]
        )  # fmt: skip
    flushers = Table(
        f"rows/s into PostgreSQL, {fmt_int(n)} unique heartbeats: median (range) of "
        f"{repeats} interleaved runs",
        ["flusher processes", "through the stream", "vs 1 flusher (same repeat)",
         "direct (no stream)", "stream / direct"],
        rows,
    )  # fmt: skip
    crows = []
    for k in FLUSHERS:
        for mode in ("stream", "direct"):
            rs = runs[(mode, k)]

            def per(group: str, rs: list[Run] = rs) -> str:
                return f"{_med([r.per_100k(group, n) for r in rs]):.2f}"

            idle = _spread([r.cpu.idle * 100 for r in rs], lambda v: f"{v:.0f}")
            crows.append(
                [f"{k} {mode}", per("flushers"), per("redis"), per("pg"), per("other"), idle,
                 f"{_med([r.cpu.cpu['flushers'] / r.cpu.seconds / k for r in rs]):.2f}"]
            )  # fmt: skip
    cpu = Table(
        f"CPU seconds per 100,000 rows over the timed interval (medians), machine idle % "
        f"({_CORES} cores)",
        ["flushers, mode", "flusher processes", "redis-server", "PostgreSQL (backends + "
         "server processes)", "rest of the machine", "machine idle %: median (range)",
         "cores per flusher"],
        crows,
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
    one, two = _med(rates("stream", 1)), _med(rates("stream", 2))
    d1, d2 = _med(rates("direct", 1)), _med(rates("direct", 2))
    ratio = _med(ratios(2))
    two_runs = runs[("stream", 2)]
    idle2 = _med([r.cpu.idle for r in two_runs])
    # the direct rate is PostgreSQL's ceiling only if the machine had CPU to spare meanwhile
    idle_d2 = _med([r.cpu.idle for r in runs[("direct", 2)]])
    pg_limit = two >= _CEILING * d2 and idle_d2 > _SATURATED
    cpu_limit = idle2 <= _SATURATED
    met = ratio >= _TARGET or pg_limit
    why = f"2 flushers {ratio:.2f}x one ({fmt_int(two)} vs {fmt_int(one)} rows/s)"
    if pg_limit:
        why += (
            f"; PostgreSQL on this machine is the limit: 2 processes writing directly reach "
            f"{fmt_int(d2)} rows/s ({d2 / d1:.2f}x one)"
        )
    elif cpu_limit:
        shares = {
            g: _med([r.cpu.cpu[g] / r.cpu.seconds for r in two_runs])
            for g in ("flushers", "redis", "pg", "other")
        }
        per_row = _med([r.per_100k("all", n) for r in two_runs])  # flushers, Redis, PG
        ceiling = _CORES * 1e5 / per_row
        f1 = _med([r.per_100k("flushers", n) for r in runs[("stream", 1)]])
        alone = 1e5 / f1  # one flusher is one Python thread: one core at most
        why += (
            f"; not PostgreSQL ({fmt_int(d2)} rows/s direct) but the machine's {_CORES} "
            f"cores are the limit: {idle2:.0%} idle at 2 flushers, whose processes use "
            f"{shares['flushers']:.2f} cores, redis-server {shares['redis']:.2f}, PostgreSQL "
            f"{shares['pg']:.2f}, the rest of the machine {shares['other']:.2f}. At "
            f"{per_row:.2f} CPU s per 100,000 rows (flushers + Redis + PostgreSQL) {_CORES} "
            f"cores cap 2 flushers at {fmt_int(ceiling)} rows/s, while one flusher (one "
            f"Python thread, {f1:.2f} CPU s per 100,000 rows) can reach {fmt_int(alone)} on "
            f"its own core: a second can add at most {ceiling / alone:.2f}x here"
        )
        if shares["other"] > _BUSY_ELSEWHERE:
            why += (
                f" (other processes took {shares['other']:.2f} cores meanwhile: the rows/s "
                "understate a quiet machine's; the CPU per row is the steadier figure)"
            )
    else:
        why += f"; the machine {idle2:.0%} idle at 2 flushers"
    return Section(
        key="streams",
        title="Redis Streams hand-off",
        method=(
            "`benchmarks/streams.py`: a stream prefilled with unique heartbeats before "
            "anything is timed (the producers' CPU competes with no flusher); per run a fresh "
            "table and consumer group, K flusher processes (`consume_stream` into "
            "`PostgresSink`, `max_batch=500`, `max_in_flight=2`; `delete=False`, so the "
            "figures leave out Redis's `XDEL`) timed from a common start "
            "until their committed counts add up to every record (the table is checked to "
            "hold them all); the direct column is the same K processes adding their share "
            "straight to the same batcher (PostgreSQL's ceiling here). Every case is run "
            f"{repeats} times, interleaved. CPU: user + system seconds of each flusher "
            "process, of redis-server and of PostgreSQL (the flushers' backends, found by "
            "`application_name`, and the server's own processes) over the timed interval "
            "from `/proc/<pid>/stat`, and the machine's idle share from `/proc/stat`; the "
            "rest of the machine is its busy time less those. Producer side: CPU of one "
            "process per `await add()` into a batcher on a no-op sink, `PostgresSink`, and "
            "`RedisStreamSink`. Redis, PostgreSQL and the processes share the machine's "
            f"{_CORES} cores."
        ),
        tables=[flushers, cpu, costs],
        targets=[Target("2 flushers >= 1.6x one, until PostgreSQL is the limit", met, why)],
        notes=[f"load average (1 min) during the runs: {', '.join(f'{x:.2f}' for x in load)}"],
        data={
            "rates": {f"{mode}-{k}": [r.rate for r in rs] for (mode, k), rs in runs.items()},
            "cpu": {
                f"{mode}-{k}": [
                    {"seconds": r.cpu.seconds, "idle": r.cpu.idle, **r.cpu.cpu} for r in rs
                ]
                for (mode, k), rs in runs.items()
            },
            "producer": producer,
            "load": load,
        },
    )
