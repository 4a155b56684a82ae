"""(d2) PostgreSQL at the server's limit: every write method against the COPY ceiling.

The workload of "PostgreSQL end to end" (200,000 heartbeats over 50,000 uuid agents, four
each, round-robin; ``uuid.UUID`` and tz-aware ``datetime`` values; the version-conditional
upsert ``... ON CONFLICT (id) DO UPDATE ... WHERE t.updated_at IS NULL OR
excluded.updated_at >= t.updated_at``), a fresh table per run, read back after each run
(one row per agent with its newest ``updated_at``, or the run fails). Methods:

- **COPY ceiling**: psycopg 3's binary COPY of every record into a logged table with a
  primary key on ``(id, updated_at)`` (every record is a new row: a bulk load, no upsert).
- **hand-written loops**, ``TUNED_BATCH`` records per write, the dicts turned into rows
  inside the timing, on 1 and on 2 connections (the tuned sink's count; the batches dealt
  round-robin to one task per connection): asyncpg ``execute`` of the ``unnest`` upsert;
  psycopg 3 (async) binary COPY into a temporary table made once per connection (``ON COMMIT
  DELETE ROWS``) and one ``INSERT ... SELECT ... ORDER BY id ON CONFLICT``, in a transaction.
- **OpenTelemetry's batch processor** (``opentelemetry.sdk._shared_internal.BatchProcessor``,
  the engine of ``BatchSpanProcessor``; its own metrics off) with a forty-line exporter doing
  the same COPY + merge on one sync psycopg connection, ``TUNED_BATCH`` per export, a queue
  as large as the run (so nothing is dropped); timed from the first ``emit`` to ``shutdown()``.
- **``PostgresSink``** through an ``AsyncBatcher`` fed by one task (``await add(record)``),
  timed from the first ``add()`` to ``close()`` returning: *defaults* (asyncpg, ``max_batch=
  500``, ``max_in_flight=1``), the psycopg path with the batcher's defaults, and *tuned*
  (``driver="psycopg"``, ``max_batch=TUNED_BATCH``, ``max_in_flight=2``, ``pool_size=2``);
  and rows/s against ``max_batch`` for both drivers at ``max_in_flight=2``.

CPU per 100,000 rows: the client's is this process's CPU time (every thread); the server's
is the CPU time of every ``postgres`` process on the machine (its backends, the WAL writer,
the checkpointer, and exited backends through the postmaster's children's times, read 0.3 s
after the run so that closed backends have exited), so other sessions on the same server
add to it. Methods run in interleaved rounds (A B C ... A B C
...); the tables give the median rate and the best, and median CPU. The batcher holds at
most ``min(5 x max_batch, agents - 1)`` records (``max_pending``), so nothing coalesces
(checked). ``--quick``: 30,000 agents x 2 heartbeats, one round.
"""

from __future__ import annotations

import asyncio
import gc
import operator
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import writebehind as wb

from . import _svg
from ._common import Section, Table, Target, check, fmt_int
from .postgres_e2e import COLUMNS, DSN, _connect, _unnest_sql, _verify, records

__all__ = ["measure"]

TUNED_BATCH = 5_000
TUNED_IN_FLIGHT = 2
SWEEP = (100, 500, 1_000, 2_000, 5_000, 10_000)
_REAPED = 0.3  # seconds for closed backends to exit before the server's CPU is read
IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
_DDL = """(
    id uuid PRIMARY KEY, first_connected_at timestamptz, last_connected_at timestamptz,
    replica_id uuid, disconnected_at timestamptz, updated_at timestamptz NOT NULL
)"""
_DDL_CEILING = _DDL.replace("id uuid PRIMARY KEY", "id uuid").replace(
    "NOT NULL\n)", "NOT NULL, PRIMARY KEY (id, updated_at)\n)"
)
_OIDS = [2950, 1184, 1184, 2950, 1184, 1184]  # uuid, timestamptz
_GET = operator.itemgetter(*COLUMNS)
_COLS = ", ".join(COLUMNS)
_SET = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id")
Rows = list[dict[str, Any]]


def _merge_sql(table: str, stage: str) -> str:
    return (
        f"INSERT INTO {table} AS t ({_COLS}) SELECT {_COLS} FROM {stage} ORDER BY id "
        f"ON CONFLICT (id) DO UPDATE SET {_SET} "
        "WHERE t.updated_at IS NULL OR excluded.updated_at >= t.updated_at"
    )


def _stage_sql(table: str, stage: str) -> str:
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
        f"SELECT {_COLS} FROM {table} WITH NO DATA"
    )


# -- measuring --------------------------------------------------------------------------------


def server_cpu() -> float:
    """CPU seconds of every ``postgres`` process, exited backends included."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] != "postgres":
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall clock, this process's CPU and the server's, from ``start()`` to ``stop()``."""

    def start(self) -> None:
        self.t0, self.c0, self.s0 = time.perf_counter(), time.process_time(), server_cpu()

    async def stop(self) -> tuple[float, float, float]:
        """The server's CPU is read a moment later: a backend whose connection just closed
        counts only once it has exited and the postmaster has reaped it."""
        t, c = time.perf_counter(), time.process_time()
        await asyncio.sleep(_REAPED)
        return t - self.t0, c - self.c0, server_cpu() - self.s0


Run = Callable[[str, Rows, Meter], Awaitable[None]]


# -- the baselines ----------------------------------------------------------------------------


async def _ceiling(table: str, recs: Rows, meter: Meter) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        meter.start()
        async with conn.cursor() as cur, cur.copy(
            f"COPY {table} ({_COLS}) FROM STDIN (FORMAT BINARY)"
        ) as copy:  # fmt: skip
            copy.set_types(_OIDS)
            for r in recs:
                await copy.write_row(_GET(r))


def _chunks(recs: Rows, n: int) -> list[Rows]:
    return [recs[i : i + n] for i in range(0, len(recs), n)]


def _asyncpg_unnest(conns: int) -> Run:
    async def run(table: str, recs: Rows, meter: Meter) -> None:
        pool = [await _connect() for _ in range(conns)]
        sql = _unnest_sql(table, "$")
        chunks = _chunks(recs, TUNED_BATCH)

        async def worker(k: int) -> None:
            for chunk in chunks[k::conns]:
                columns = [list(c) for c in zip(*map(_GET, chunk), strict=True)]
                await pool[k].execute(sql, *columns)

        try:
            meter.start()
            await asyncio.gather(*(worker(k) for k in range(conns)))
        finally:
            for c in pool:
                await c.close()

    return run


def _psycopg_copy(conns: int) -> Run:
    async def run(table: str, recs: Rows, meter: Meter) -> None:
        import psycopg

        pool = [await psycopg.AsyncConnection.connect(DSN, autocommit=True) for _ in range(conns)]
        stage = f"stage_{table}"
        for c in pool:
            await c.execute(_stage_sql(table, stage))
        merge = _merge_sql(table, stage)
        chunks = _chunks(recs, TUNED_BATCH)

        async def worker(k: int) -> None:
            conn = pool[k]
            for chunk in chunks[k::conns]:
                async with conn.transaction(), conn.cursor() as cur:
                    async with cur.copy(
                        f"COPY {stage} ({_COLS}) FROM STDIN (FORMAT BINARY)"
                    ) as copy:  # fmt: skip
                        copy.set_types(_OIDS)
                        for r in chunk:
                            await copy.write_row(_GET(r))
                    await cur.execute(merge)

        try:
            meter.start()
            await asyncio.gather(*(worker(k) for k in range(conns)))
        finally:
            for c in pool:
                await c.close()

    return run


class CopyExporter:
    """A hand-written exporter for OpenTelemetry's batch processor: COPY + merge."""

    def __init__(self, table: str) -> None:
        import psycopg

        self.conn = psycopg.connect(DSN)
        self.stage = f"stage_{table}"
        self.conn.execute(_stage_sql(table, self.stage))
        self.conn.commit()
        self.copy_sql = f"COPY {self.stage} ({_COLS}) FROM STDIN (FORMAT BINARY)"
        self.merge = _merge_sql(table, self.stage)

    def export(self, batch: Any) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(self.copy_sql) as copy:
                copy.set_types(_OIDS)
                for r in batch:
                    copy.write_row(_GET(r))
            cur.execute(self.merge)

    def shutdown(self) -> None:
        self.conn.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _NoMetrics:
    """The processor's self-metrics, off (the SDK's default)."""

    def drop_items(self, count: int, reason: str | None = None) -> None:
        return None

    def finish_items(self, count: int) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def _otel(table: str, recs: Rows, meter: Meter) -> Awaitable[None]:
    def run() -> None:
        from opentelemetry.sdk._shared_internal import BatchProcessor

        exporter = CopyExporter(table)
        processor: Any = BatchProcessor(
            exporter, 1_000, TUNED_BATCH, 30_000, len(recs) + 1, "Row", _NoMetrics()
        )
        meter.start()
        emit = processor.emit
        for r in recs:
            emit(r)
        processor.shutdown(timeout_millis=300_000)

    return asyncio.to_thread(run)


def _sink(driver: str, max_batch: int, in_flight: int, pool_size: int = 4) -> Run:
    async def run(table: str, recs: Rows, meter: Meter) -> None:
        sink = wb.PostgresSink(
            DSN, table=table, key="id", version="updated_at", driver=driver, pool_size=pool_size
        )
        # an agent's next heartbeat comes `agents` records later: hold fewer, so that
        # nothing coalesces and every method writes every record
        agents = len({r["id"] for r in recs[: max_batch * 5 + 1]})
        b = wb.AsyncBatcher(
            sink, key="id", version="updated_at", max_batch=max_batch, max_in_flight=in_flight,
            max_pending=max(max_batch, min(5 * max_batch, agents - 1)),
        )  # fmt: skip
        await b.start()
        meter.start()
        add = b.add
        for r in recs:
            await add(r)
        report = await b.close()
        s = report.stats
        check(
            report.lost == 0 and s.committed == len(recs) and s.coalesced == 0,
            f"PostgresSink {driver}/{max_batch}/{in_flight}: not every record written: {s}",
        )

    return run


# -- the plan ---------------------------------------------------------------------------------

_B = f"{TUNED_BATCH:,}"
METHODS: dict[str, tuple[str, Run]] = {
    "ceiling": ("COPY ceiling: psycopg binary COPY, logged table, primary key", _ceiling),
    "asyncpg_1": (f"hand-written asyncpg `unnest`, {_B}/write, 1 conn", _asyncpg_unnest(1)),
    "asyncpg_2": (f"hand-written asyncpg `unnest`, {_B}/write, 2 conns", _asyncpg_unnest(2)),
    "psycopg_1": (f"hand-written psycopg COPY + merge, {_B}/write, 1 conn", _psycopg_copy(1)),
    "psycopg_2": (f"hand-written psycopg COPY + merge, {_B}/write, 2 conns", _psycopg_copy(2)),
    "otel": (f"OpenTelemetry `BatchProcessor` + psycopg COPY exporter, {_B}/export", _otel),
    "defaults": (
        "`PostgresSink` defaults (asyncpg, max_batch=500, max_in_flight=1)",
        _sink("auto", 500, 1),
    ),
    "psycopg_defaults": (
        '`PostgresSink(driver="psycopg")`, the batcher\'s defaults',
        _sink("psycopg", 500, 1),
    ),
    "tuned": (
        f'`PostgresSink(driver="psycopg")` tuned: max_batch={_B}, max_in_flight=2, pool_size=2',
        _sink("psycopg", TUNED_BATCH, TUNED_IN_FLIGHT, 2),
    ),
}
HAND = ("asyncpg_1", "asyncpg_2", "psycopg_1", "psycopg_2")


async def _one(admin: Any, what: str, run: Run, recs: Rows, newest: dict[str, Any]) -> Any:
    table = f"wb_cp_{uuid.uuid4().hex[:12]}"
    ceiling = what == "ceiling"
    await admin.execute(f"CREATE TABLE {table} {_DDL_CEILING if ceiling else _DDL}")
    try:
        gc.collect()
        meter = Meter()
        await run(table, recs, meter)
        got = await meter.stop()
        await _verify(admin, table, newest, what, appended=len(recs) if ceiling else None)
        return got
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table}")


async def _plan(quick: bool) -> dict[str, Any]:
    agents, beats = (30_000, 2) if quick else (50_000, 4)
    rounds = 1 if quick else 3
    recs, newest = records(agents, beats)
    admin = await _connect()
    runs: dict[str, list[tuple[float, float, float]]] = {}
    loads: list[float] = []
    try:
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            for key, (_, run) in METHODS.items():
                runs.setdefault(key, []).append(await _one(admin, key, run, recs, newest))
            for size in SWEEP:
                for driver in ("psycopg", "asyncpg"):
                    key = f"sweep_{driver}_{size}"
                    run = _sink(driver, size, TUNED_IN_FLIGHT, TUNED_IN_FLIGHT)
                    runs.setdefault(key, []).append(await _one(admin, key, run, recs, newest))
        loads.append(os.getloadavg()[0])
    finally:
        await admin.close()
    return {"records": len(recs), "agents": agents, "rounds": rounds, "runs": runs, "loads": loads}


def measure(quick: bool = False) -> Section:
    r = asyncio.run(_plan(quick))
    n: int = r["records"]
    runs: dict[str, list[tuple[float, float, float]]] = r["runs"]

    def rate(key: str, best: bool = False) -> float:
        rates = [n / s for s, _, _ in runs[key]]
        return max(rates) if best else statistics.median(rates)

    def cpu(key: str, which: int) -> float:
        return statistics.median(x[which] for x in runs[key]) / n * 1e5

    ceiling = rate("ceiling")
    hand_best = max(HAND, key=rate)
    table = Table(
        "Every method against the COPY ceiling",
        ["method", "rows/s (median)", "best", "vs ceiling", "client CPU s/100k rows",
         "server CPU s/100k rows"],
    )  # fmt: skip
    for key, (label, _) in METHODS.items():
        x = rate(key)
        table.rows.append(
            [label, fmt_int(x), fmt_int(rate(key, True)), f"{x / ceiling:.2f}x",
             f"{cpu(key, 1):.2f}", f"{cpu(key, 2):.2f}"]
        )  # fmt: skip
    rounds = f"median of {r['rounds']}" if r["rounds"] > 1 else "one run"
    table.caption = (
        f"{n:,} heartbeats over {r['agents']:,} agents; rows/s is records per second "
        f"({rounds} interleaved rounds, and the best round); load average (1 min) at the "
        f"start of each round and at the end: {', '.join(f'{x:.2f}' for x in r['loads'])}."
    )
    sweep = Table(
        f"`PostgresSink` rows/s against `max_batch` (max_in_flight={TUNED_IN_FLIGHT}, "
        f"pool_size={TUNED_IN_FLIGHT})",
        ["max_batch", "psycopg rows/s", "psycopg client CPU", "asyncpg rows/s",
         "asyncpg client CPU", "psycopg / asyncpg"],
    )  # fmt: skip
    for size in SWEEP:
        p, a = f"sweep_psycopg_{size}", f"sweep_asyncpg_{size}"
        sweep.rows.append(
            [f"{size:,}", fmt_int(rate(p)), f"{cpu(p, 1):.2f}", fmt_int(rate(a)),
             f"{cpu(a, 1):.2f}", f"{rate(p) / rate(a):.2f}x"]
        )  # fmt: skip
    sweep.caption = f"{rounds}; client CPU in seconds per 100,000 rows."
    tuned, defaults, hand = rate("tuned"), rate("defaults"), rate(hand_best)
    targets = [
        Target("tuned `PostgresSink` >= 0.45x the COPY ceiling", tuned >= 0.45 * ceiling,
               f"{fmt_int(tuned)} vs {fmt_int(ceiling)} rows/s: {tuned / ceiling:.2f}x"),
        Target("tuned `PostgresSink` >= 1.0x the best hand-written loop (1 and 2 connections)",
               tuned >= hand, f"{fmt_int(tuned)} vs {fmt_int(hand)} rows/s "
               f"({METHODS[hand_best][0]}): {tuned / hand:.2f}x"),
        Target("`PostgresSink` defaults >= 0.6x tuned", defaults >= 0.6 * tuned,
               f"{fmt_int(defaults)} vs {fmt_int(tuned)} rows/s: {defaults / tuned:.2f}x"),
    ]  # fmt: skip
    if not quick:
        IMG.mkdir(parents=True, exist_ok=True)
        _svg.bars(
            IMG / "postgres_methods.svg",
            f"PostgreSQL: rows/s of each method ({rounds}), {n:,} upserts",
            [(METHODS[k][0].replace("`", ""), rate(k)) for k in METHODS],
            marker=("COPY ceiling", ceiling),
        )
        _svg.lines(
            IMG / "postgres_max_batch.svg",
            f"PostgresSink rows/s against max_batch (max_in_flight={TUNED_IN_FLIGHT})",
            list(SWEEP),
            [(d, [rate(f"sweep_{d}_{s}") for s in SWEEP]) for d in ("psycopg", "asyncpg")],
        )
    notes = [
        "Plots: [each method against the ceiling](img/postgres_methods.svg), [rows/s against "
        "max_batch](img/postgres_max_batch.svg) (written by full runs only).",
        "Server CPU counts every `postgres` process on the machine, so test runs of other "
        "sessions against the same server inflate it; compare it within a round.",
    ]
    return Section(
        key="postgres_copy",
        title="PostgreSQL at the server's limit",
        method=__doc__ or "",
        tables=[table, sweep],
        targets=targets,
        notes=notes,
        data={"records": n, "runs": runs, "loads": r["loads"]},
    )
