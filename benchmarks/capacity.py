"""(g) Capacity: what a budget costs end to end, per record, and in Redis round trips.

Three measurements, each against a baseline measured in the same run:

- **End to end.** Heartbeats (as in the SQLite benchmark, plus a numeric ``cost`` field, 1 to
  10) go from four producer tasks calling ``await batcher.add(record)`` through
  ``AsyncBatcher(sink, key="id", version="updated_at", max_batch=500)`` into a ``SQLiteSink``
  (WAL, ``synchronous=FULL``) and into a ``CallableSink`` whose ``async`` function does
  nothing, which exposes the engine's own cost. Variants: no capacity;
  ``ProvisionedCapacity(per_second=1e12)`` with ``cost=1``; the same with ``cost="cost"``
  (the field is read and checked for every record); and a ``RedisSharedCapacity`` on the
  local Redis with ``cost=1``, sized far above demand (``shared=1e9`` in partitions of
  ``1e8``, ``reserved=0``: one leased partition grants 100 million per second). Every run
  first adds one record and flushes it (the sink opens its file; the Redis instance wins its
  first lease), then is timed from the first ``add()`` of the workload to ``close()``
  returning (for the Redis capacity, ``close()`` includes giving the lease back). Variants
  run in rounds, in an order rotated every round; each run's rate is divided by the
  no-capacity run of the same round, and the table gives the median of those ratios and
  their range.
- **Redis round trips per instance.** 1 and then 4 separate processes share one
  ``RedisSharedCapacity(shared=2000, partition=100)`` (default ``lease=15``, so a lease step
  every 0.25 s while active), each with its own batcher into a sink that does nothing, fed
  faster than the capacity grants (``add()`` blocks while ``max_pending`` records wait): the
  instances need capacity. Then the producers stop and the batchers sit idle, still holding
  the capacity. Each process samples the capacity's ``round_trips`` counter; the rates are
  over the steady part of each phase (see the caption).
- **add_nowait** per record (as in the hot path: chunks of 500 into a ``MemorySink``,
  yielding to the loop between chunks, only the calls timed, GC on, minimum of several
  interleaved repeats) with no capacity, and with ``ProvisionedCapacity(1e12)`` and
  ``cost=1``, ``cost="cost"`` or ``cost=`` a callable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import multiprocessing
import os
import statistics
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import writebehind as wb
from writebehind.testing import MemorySink

from ._common import (
    Section,
    Table,
    Target,
    check,
    fmt_int,
    fmt_us,
    heartbeats,
    time_pieces,
    timed_adds,
)
from .sqlite_e2e import TABLE, verify_table

__all__ = ["measure"]

REDIS_URL = "redis://127.0.0.1:6379/15"
BATCH = 500
PRODUCERS = 4
TARGET = 0.98  # with a capacity that is not the bottleneck: >= 98% of the rate without one
SCHEMA = f"""CREATE TABLE {TABLE} (
    id TEXT PRIMARY KEY,
    first_connected_at TEXT NOT NULL,
    last_connected_at TEXT NOT NULL,
    replica_id TEXT NOT NULL,
    disconnected_at TEXT,
    updated_at TEXT NOT NULL,
    cost INTEGER NOT NULL
)"""
# The round-trip fleet: 2,000/s in 20 partitions, leases of 15 s (a step every 0.25 s); each
# instance needs up to 200 records of cost 10 = 2,000, so it wants every partition.
RT_SHARED, RT_PARTITION, RT_COST, RT_PENDING = 2000.0, 100.0, 10, 200

Records = list[dict[str, Any]]


def _cost_of(record: dict[str, Any]) -> Any:
    return record["cost"]


# -- the variants --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    key: str
    label: str
    capacity: str | None  # None, "provisioned" or "redis"
    cost: Any = 1


E2E_PLANS = [
    Plan("none", "no capacity (baseline)", None),
    Plan("provisioned", "`ProvisionedCapacity(1e12)`, `cost=1`", "provisioned"),
    Plan("field", '`ProvisionedCapacity(1e12)`, `cost="cost"`', "provisioned", "cost"),
    Plan("redis", "`RedisSharedCapacity` (1e9 shared), `cost=1`", "redis"),
]
ADD_PLANS = [
    Plan("none", "no capacity (baseline)", None),
    Plan("provisioned", "`ProvisionedCapacity(1e12)`, `cost=1`", "provisioned"),
    Plan("field", '`ProvisionedCapacity(1e12)`, `cost="cost"`', "provisioned", "cost"),
    Plan("callable", "`ProvisionedCapacity(1e12)`, `cost=` a function", "provisioned", _cost_of),
]


def _options(plan: Plan, name: str) -> dict[str, Any]:
    if plan.capacity is None:
        return {}
    cap: wb.ProvisionedCapacity | wb.RedisSharedCapacity
    if plan.capacity == "provisioned":
        cap = wb.ProvisionedCapacity(per_second=1e12)
    else:
        cap = wb.RedisSharedCapacity(REDIS_URL, name=name, shared=1e9, partition=1e8)
    return {"capacity": cap, "cost": plan.cost}


def _redis_up() -> str | None:
    """None if the local Redis answers, else why not."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'writebehind[redis]')"
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:  # any failure means: not measured here
        return f"Redis at {REDIS_URL} did not answer ({type(exc).__name__})"
    return None


def _forget(name: str) -> None:
    """Delete whatever a budget left in Redis (its members delete their own on the way out)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"writebehind:capacity:{{{name}}}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- end to end ----------------------------------------------------------------------------


async def _noop(batch: list[Any]) -> None:
    return None


async def _e2e(plan: Plan, sink: Any, records: Records) -> float:
    """Records per second, first add to close, after one record written and flushed."""
    name = f"bench-{uuid.uuid4().hex[:12]}"
    batcher = wb.AsyncBatcher(
        sink, key="id", version="updated_at", max_batch=BATCH, **_options(plan, name)
    )
    try:
        await batcher.start()
        await batcher.add(records[0])
        await batcher.flush(timeout=30)  # the sink is open, the first lease won
        parts = [records[i::PRODUCERS] for i in range(PRODUCERS)]  # whole agents, in order

        async def produce(part: Records) -> None:
            add = batcher.add
            for r in part:
                await add(r)

        t0 = perf_counter_ns()
        await asyncio.gather(*(produce(p) for p in parts))
        report = await batcher.close()
        elapsed = (perf_counter_ns() - t0) / 1e9
    finally:
        if plan.capacity == "redis":
            _forget(name)
    s, n = report.stats, len(records) + 1
    check(
        report.lost == 0 and s.dead_lettered == 0 and s.accepted == n
        and s.committed + s.coalesced == n,
        f"capacity e2e ({plan.key}): {s}",
    )  # fmt: skip
    return len(records) / elapsed


def _sqlite_run(plan: Plan, records: Records, tmp: Path, newest: dict[str, str]) -> float:
    import sqlite3

    path = tmp / f"{plan.key}-{uuid.uuid4().hex[:8]}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
    finally:
        conn.close()
    sink = wb.SQLiteSink(path, table=TABLE, key="id", version="updated_at", synchronous="FULL")
    rate = asyncio.run(_e2e(plan, sink, records))
    verify_table(path, newest, f"capacity e2e ({plan.key}, SQLite)")
    path.unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    return rate


def _null_run(plan: Plan, records: Records) -> float:
    return asyncio.run(_e2e(plan, wb.CallableSink(_noop), records))


LOADS: list[float] = []  # the 1-minute load average at the start of every round


def _rounds(
    plans: list[Plan], repeats: int, run: Callable[[Plan], float]
) -> dict[str, list[float]]:
    """Each plan once per round, the order rotated every round; rates by plan."""
    rates: dict[str, list[float]] = {p.key: [] for p in plans}
    for rep in range(repeats):
        LOADS.append(os.getloadavg()[0])
        for plan in plans[rep % len(plans) :] + plans[: rep % len(plans)]:
            gc.collect()
            rates[plan.key].append(run(plan))
    return rates


def _ratios(rates: dict[str, list[float]], key: str) -> list[float]:
    """Each round's rate for ``key`` over the baseline's in the same round."""
    return [x / b for x, b in zip(rates[key], rates["none"], strict=True)]


def _e2e_table(title: str, plans: list[Plan], rates: dict[str, list[float]]) -> Table:
    table = Table(
        title,
        ["variant", "records/s, median", "records/s, worst - best", "vs no capacity, median",
         "vs no capacity, range over rounds", "best vs best"],
    )  # fmt: skip
    best = max(rates["none"])
    for plan in plans:
        r = sorted(rates[plan.key])
        ratios = sorted(_ratios(rates, plan.key))
        table.rows.append(
            [plan.label, fmt_int(statistics.median(r)), f"{fmt_int(r[0])} - {fmt_int(r[-1])}",
             "-" if plan.key == "none" else f"{statistics.median(ratios):.3f}",
             "-" if plan.key == "none" else f"{ratios[0]:.3f} - {ratios[-1]:.3f}",
             "-" if plan.key == "none" else f"{r[-1] / best:.3f}"]
        )  # fmt: skip
    return table


def _cost_pieces() -> list[tuple[str, float]]:
    """ns per record of the pieces of ``cost="cost"`` (each alone, min of 5): the engine's
    getter, the read alone, and ``_is_number``'s union ``isinstance`` against a tuple."""
    try:  # private: only to explain the figure; skipped if the engine changed shape
        from writebehind._config import Options

        opts = Options.of({"cost": "cost", "capacity": wb.ProvisionedCapacity(per_second=1e12)})
        cost_of = opts.costing()[1]
    except (ImportError, AttributeError, TypeError):
        return []
    if cost_of is None:
        return []
    ns: dict[str, Any] = {"cost_of": cost_of, "rec": {"id": "a", "cost": 3}, "v": 3}
    pieces = [
        ('the engine\'s `cost_of(record)` for `cost="cost"`', "cost_of(rec)"),
        ('`record["cost"]` alone', 'rec["cost"]'),
        ("`isinstance(v, int | float)` (a union built per call)", "isinstance(v, int | float)"),
        ("`isinstance(v, (int, float))`", "isinstance(v, (int, float))"),
    ]
    return time_pieces(pieces, ns, 300_000)


# -- Redis round trips, one process per instance -------------------------------------------


def _member(conn: Connection, name: str, start_at: float, busy: float, idle: float) -> None:
    """One instance (a child process): busy (demand above capacity), then idle; sends its
    samples ``(wall time, round trips, partitions, committed, needs)`` back."""
    conn.send(asyncio.run(_member_async(name, start_at, busy, idle)))
    conn.close()


async def _member_async(name: str, start_at: float, busy: float, idle: float) -> dict[str, Any]:
    cap = wb.RedisSharedCapacity(REDIS_URL, name=name, shared=RT_SHARED, partition=RT_PARTITION)
    batcher = wb.AsyncBatcher(
        wb.CallableSink(_noop), capacity=cap, cost=RT_COST, max_batch=20, max_pending=RT_PENDING
    )
    await asyncio.sleep(max(0.0, start_at - time.time()))
    await batcher.start()
    t0 = time.time()
    busy_until = t0 + busy
    samples: list[tuple[float, int, int, int, float]] = []

    def sample() -> None:
        d, s = cap.describe(), batcher.stats()
        samples.append(
            (time.time(), int(d["round_trips"]), int(d["partitions"]), s.committed,
             s.needs_capacity)
        )  # fmt: skip

    async def produce() -> None:
        n = 0
        add = batcher.add
        while time.time() < busy_until:
            await add({"n": n})  # blocks while max_pending records wait
            n += 1

    producer = asyncio.create_task(produce())
    while time.time() < busy_until + idle:
        sample()
        await asyncio.sleep(0.25)
    sample()
    await producer
    report = await batcher.close(timeout=5)
    return {"start": t0, "busy_until": busy_until, "samples": samples, "lost": report.lost}


@dataclass(frozen=True)
class Phase:
    trips_per_s: float
    partitions: float  # mean over the window's samples
    records_per_s: float
    needs_zero: bool  # the batcher needed nothing over the whole window
    seconds: float  # the window's length


def _window(samples: list[Any], a: float, b: float) -> Phase:
    inside = [s for s in samples if a <= s[0] <= b]
    check(len(inside) >= 2, f"round trips: {len(inside)} samples in a window of {b - a:.1f} s")
    first, last = inside[0], inside[-1]
    dt = last[0] - first[0]
    return Phase(
        trips_per_s=(last[1] - first[1]) / dt,
        partitions=statistics.mean(s[2] for s in inside),
        records_per_s=(last[3] - first[3]) / dt,
        needs_zero=all(s[4] == 0 for s in inside),
        seconds=dt,
    )


def _fleet(instances: int, busy: float, idle: float, warm: float, settle: float) -> list[Any]:
    """Run ``instances`` member processes once; per member, its busy and idle phases."""
    ctx = multiprocessing.get_context("spawn")
    name = f"bench-rt-{uuid.uuid4().hex[:12]}"
    start_at = time.time() + 2.0 + 0.5 * instances  # every process started and imported
    members = []
    try:
        for _ in range(instances):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_member, args=(child, name, start_at, busy, idle))
            proc.start()
            child.close()
            members.append((proc, parent))
        results = []
        for proc, parent in members:
            check(parent.poll(busy + idle + 60), "round trips: a member did not answer")
            results.append(parent.recv())
            proc.join(10)
    finally:
        for proc, _ in members:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        _forget(name)
    out = []
    for r in results:
        check(r["lost"] == 0, f"round trips: a member lost {r['lost']} records")
        s, t0, end = r["samples"], r["start"], r["busy_until"]
        # idle: from a lease step and a want's memory after the backlog was written
        drained = min((x[0] for x in s if x[0] >= end and x[4] == 0), default=end + idle)
        out.append((_window(s, t0 + warm, end), _window(s, drained + settle, end + idle)))
    return out


# -- add_nowait ----------------------------------------------------------------------------


async def _add_nowait(plan: Plan, records: Records) -> int:
    sink = MemorySink()
    batcher = wb.AsyncBatcher(sink, key="id", version="updated_at", **_options(plan, "unused"))
    await batcher.start()
    add_ns = await timed_adds(batcher.add_nowait, records, BATCH)
    await batcher.close()
    s = batcher.stats()
    check(s.committed == len(records) == len(sink.records), f"add_nowait ({plan.key}): {s}")
    return add_ns


def _take_give_back_ns() -> float:
    """ns for one batch's ``take`` and ``give_back`` on a ProvisionedCapacity (alone)."""
    cap = wb.ProvisionedCapacity(per_second=1e12)
    ns = {"take": cap.take, "give": cap.give_back}
    number = 200_000
    best = min(timeit.repeat("take(1.0, 500.0); give(0.0)", globals=ns, number=number, repeat=5))
    return best / number * 1e9


# -- the plan --------------------------------------------------------------------------------


def measure(quick: bool = False) -> Section:
    agents = 5_000 if quick else 50_000
    sqlite_rounds, null_rounds, add_repeats = (2, 3, 2) if quick else (6, 9, 7)
    records, newest = heartbeats(agents, 4, interval=30.0)
    for i, r in enumerate(records):
        r["cost"] = 1 + i % 10
    n = len(records)
    why_not = _redis_up()
    e2e_plans = [p for p in E2E_PLANS if p.capacity != "redis" or why_not is None]
    notes: list[str] = []
    if why_not is not None:
        notes.append(f"Not measured: every Redis figure ({why_not}).")

    LOADS.clear()
    with tempfile.TemporaryDirectory(prefix="wb-bench-cap-") as d:
        tmp = Path(d)
        asyncio.run(_e2e(E2E_PLANS[0], wb.CallableSink(_noop), records[:5_000]))  # warm up
        null = _rounds(e2e_plans, null_rounds, lambda p: _null_run(p, records))
        sqlite = _rounds(e2e_plans, sqlite_rounds, lambda p: _sqlite_run(p, records, tmp, newest))

    add_records = [dict(r, id=uuid.UUID(r["id"])) for r in records]
    add_ns: dict[str, list[float]] = {p.key: [] for p in ADD_PLANS}
    for rep in range(add_repeats):
        for plan in ADD_PLANS[rep % len(ADD_PLANS) :] + ADD_PLANS[: rep % len(ADD_PLANS)]:
            gc.collect()
            add_ns[plan.key].append(asyncio.run(_add_nowait(plan, add_records)) / n)
    per_batch_ns = _take_give_back_ns()

    fleets: dict[int, list[Any]] = {}
    busy, idle, warm, settle = (4.0, 6.0, 1.5, 1.5) if quick else (8.0, 10.0, 2.0, 1.5)
    fleet_repeats = 1 if quick else 2
    if why_not is None:
        for _ in range(fleet_repeats):
            for k in (1, 4):
                fleets.setdefault(k, []).extend(_fleet(k, busy, idle, warm, settle))

    tables = [
        _e2e_table("End to end into SQLite (synchronous=FULL)", e2e_plans, sqlite),
        _e2e_table("End to end into a sink that does nothing", e2e_plans, null),
    ]
    tables[0].caption = (
        f"{n:,} heartbeats over {agents:,} agents per run, {sqlite_rounds} rounds; each "
        "ratio is a run's rate over the no-capacity run of the same round."
    )
    tables[1].caption = (
        f"The same {n:,} records into `CallableSink(async no-op)`, {null_rounds} rounds. "
        f"Load average (1 min) at the start of the rounds of both tables: "
        f"{min(LOADS):.2f} - {max(LOADS):.2f}."
    )
    base = min(add_ns["none"])
    add_table = Table(
        "add_nowait per record, with and without a cost to read",
        ["variant", "µs/record (min)", "worst / best", "vs no capacity", "ns more"],
    )
    for plan in ADD_PLANS:
        a = sorted(add_ns[plan.key])
        add_table.rows.append(
            [plan.label, fmt_us(a[0]), f"{a[-1] / a[0]:.2f}x", f"{a[0] / base:.2f}x",
             "-" if plan.key == "none" else f"{a[0] - base:+.0f}"]
        )  # fmt: skip
    add_table.caption = (
        f"{n:,} records (`uuid.UUID` keys) per run, chunks of {BATCH}, min of {add_repeats} "
        "interleaved repeats, GC on. One batch's `take` and `give_back` on a "
        f"`ProvisionedCapacity`, timed alone: {per_batch_ns:.0f} ns "
        f"({per_batch_ns / BATCH:.1f} ns per record of a {BATCH}-record batch)."
    )
    tables.append(add_table)

    if fleets:
        rt = Table(
            "Redis round trips per instance, at steady state",
            ["instances", "phase", "round trips/s per instance", "partitions held (mean)",
             "records/s per instance", f"cost/s, fleet (of {RT_SHARED:,.0f})"],
        )  # fmt: skip
        for k, members in fleets.items():
            for i, phase in enumerate(("needing capacity", "idle")):
                got = [m[i] for m in members]
                trips = sorted(p.trips_per_s for p in got)
                parts = sorted(p.partitions for p in got)
                recs = sorted(p.records_per_s for p in got)
                fleet_rate = sum(recs) / fleet_repeats
                if i == 1:
                    check(all(p.needs_zero for p in got), "round trips: idle members needed")
                rt.rows.append(
                    [str(k), phase, f"{trips[0]:.2f} - {trips[-1]:.2f}",
                     f"{parts[0]:.1f} - {parts[-1]:.1f}", f"{recs[0]:,.0f} - {recs[-1]:,.0f}",
                     fmt_int(fleet_rate * RT_COST)]
                )  # fmt: skip
        idle_s = min(m[1].seconds for ms in fleets.values() for m in ms)
        rt.caption = (
            f"`RedisSharedCapacity(shared={RT_SHARED:g}, partition={RT_PARTITION:g})`, the "
            f"default lease (15 s); each member a process of its own, with a batcher "
            f"(`cost={RT_COST}`, `max_batch=20`, `max_pending={RT_PENDING}`, so it needs up "
            f"to {RT_COST * RT_PENDING:,} and wants every partition) into a sink that does "
            f"nothing. {busy:g} s needing capacity (rates from {warm:g} s after the start to "
            f"the end of the phase), then idle until {idle:g} s after the producers stopped "
            f"(rates from {settle:g} s after its backlog was written, when the want has "
            f"lapsed, to the end: at least {idle_s:.1f} s). Ranges are over every member of "
            f"{fleet_repeats} runs; the fleet rate is averaged over the runs. go-batcher's "
            "estimate: about 4 lease operations per second per instance while it needs "
            "capacity."
        )
        tables.append(rt)

    targets = []
    for title, rates in (("SQLite", sqlite), ("a sink that does nothing", null)):
        for plan in e2e_plans[1:]:
            ratios = sorted(_ratios(rates, plan.key))
            med = statistics.median(ratios)
            bvb = max(rates[plan.key]) / max(rates["none"])
            targets.append(
                Target(
                    f"end to end into {title} with {plan.label} within 2% of no capacity "
                    "(median of the rounds)",
                    med >= TARGET,
                    f"median {med:.3f} of the rate without (rounds {ratios[0]:.3f} - "
                    f"{ratios[-1]:.3f}; best vs best {bvb:.3f})",
                )
            )
    every = [x for r in (sqlite, null) for p in e2e_plans[1:] for x in _ratios(r, p.key)]
    full = statistics.median(sqlite["none"])
    per_batch_e2e_us = BATCH / full * 1e6
    notes.append(
        f"A capacity that is not the bottleneck costs, per batch, `Capacity.take` and "
        f"`give_back` (a lock and a refill each: {per_batch_ns:.0f} ns together, timed alone) "
        f"and `Intake.head_cost` (under the intake's lock); per record, `if cost_of is not "
        f"None` in `add()` and, with a field or a function, the read of the cost and its "
        f"check (a number, finite, >= 0, within what the capacity could grant). Against a "
        f"batch of {BATCH} into SQLite ({per_batch_e2e_us / 1000:.1f} ms at the median "
        f"no-capacity rate) `take` and `give_back` are "
        f"{per_batch_ns / (per_batch_e2e_us * 1000):.3%}. The Redis capacity adds "
        "`time.monotonic()` per call (are the leases still valid?) and a lease thread that "
        "runs one script every 0.25 s, competing for the GIL."
    )
    pieces = _cost_pieces()
    if pieces:
        notes.append(
            'Where `cost="cost"` spends its time, per record (each piece timed alone): '
            + "; ".join(f"{label}: {ns:.0f} ns" for label, ns in pieces)
            + ". The engine's getter is three Python calls deep (the capacity's ceiling "
            "check in `Options.costing`, the number check in `cost_getter`, the field read "
            "from `make_getter`) plus `_is_number`, where `cost=1` costs one `is None` test."
        )
    notes.append(
        f"Single rounds' ratios ranged from {min(every):.2f} to {max(every):.2f} on this "
        "shared 2-core machine (other test runs came and went): a median within 2% means no "
        "cost showed through that noise, not that a cost below 2% was measured. The "
        "per-batch figure above is the tighter bound."
    )
    return Section(
        key="capacity",
        title="Capacity: the cost of a budget",
        method=__doc__ or "",
        tables=tables,
        targets=targets,
        notes=notes,
        data={
            "records": n,
            "sqlite_records_per_s": sqlite,
            "null_records_per_s": null,
            "add_nowait_ns": add_ns,
            "take_give_back_ns": per_batch_ns,
            "load_per_round": list(LOADS),
            "round_trips": {
                k: [
                    {"busy": dataclasses.asdict(m[0]), "idle": dataclasses.asdict(m[1])}
                    for m in members
                ]
                for k, members in fleets.items()
            },
        },
    )
