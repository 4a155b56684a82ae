"""``writebehind demo``: a fleet of agents sends heartbeats into a table through a batcher.

Agent ``i`` of ``N`` sends a heartbeat every ``interval`` seconds, its phase ``i/N`` of an
interval, so the fleet offers ``N / interval`` heartbeats a second, evenly. One producer
coroutine paces them on the real clock and hands each to ``await batcher.add(record)``,
timing every call. A watcher coroutine reads ``batcher.stats()`` about four times a second
for the live display.

By default agents heartbeat more often than the linger window (every 0.5 s against 2 s) and
``max_batch`` is above the fleet's size, so only the linger cuts batches: each batch holds
every agent once, its newest heartbeat, and rows written fall to about one per agent per
window (``linger / interval`` heartbeats per row). After the batcher closes, the same
workload is replayed the naive way (one ``INSERT ... ON CONFLICT`` and one commit per
heartbeat) for at most a couple of seconds, extrapolated to the whole run; then the table is
checked: one row per agent, each holding that agent's newest heartbeat.

It writes to SQLite (:mod:`._sqlite`) or, with ``--dsn``, to PostgreSQL (:mod:`._postgres`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Any

from .. import AsyncBatcher
from ._demo_config import TABLE, DemoConfig
from ._display import Display, Progress, make_display
from ._naive import NaiveResult
from ._report import Batched, final_rows
from ._target import Fleet, Target

__all__ = ["TABLE", "DemoConfig", "make_target", "run"]

_TICK = 0.005  # seconds between the producer's pacing steps
_CHUNK = 2_000  # heartbeats sent before yielding, when the producer runs behind
_REFRESH = 0.25  # seconds between live display updates
_SAMPLE_ALL_UP_TO = 1_000_000  # beyond this many heartbeats, time 1 add() in 16
_NAIVE_BUDGET = 2.0  # seconds the naive replay may take before it extrapolates


def make_target(config: DemoConfig) -> Target:
    """Where ``config`` writes: PostgreSQL with a DSN, else SQLite."""
    if config.dsn is not None:
        from ._postgres import PostgresTarget

        return PostgresTarget(config.dsn, config.table)
    from ._sqlite import SQLiteTarget

    return SQLiteTarget(config.db, config.table)


def run(config: DemoConfig) -> int:
    """Run the demo, print its progress and its final table; 0 if nothing was lost."""
    return asyncio.run(_main(config, make_display(plain=config.plain)))


async def _main(config: DemoConfig, display: Display) -> int:
    target = make_target(config)
    try:
        await target.prepare(reset=config.reset)
        fleet = target.new_fleet(config.agents)
        auto = " (auto)" if config.max_batch is None else ""
        display.start(
            f"{config.agents:,} agents -> {target.label} ({target.where}), "
            f"{config.rate:,.0f} heartbeats/s for {config.duration:g} s, "
            f"max_batch {config.batch_size:,}{auto}, linger {config.linger:g} s"
        )
        try:
            batched = await _run_batched(config, target, fleet, display)
        finally:
            display.stop()
        naive: NaiveResult | None = None
        if config.naive:
            display.note(
                f"replaying the same heartbeats naively {target.naive_how}: one statement + "
                f"one commit each, for at most {_NAIVE_BUDGET:g} s, then extrapolated ..."
            )
            naive = await target.replay_naive(
                fleet, interval=config.interval, total=config.total, budget=_NAIVE_BUDGET
            )
        check_ok, check = await target.check(fleet)
    finally:
        await target.close()
    rows = final_rows(config, fleet, batched, naive, check)
    kept = target.kept()
    if kept is not None:
        rows.append(kept)
    display.final("writebehind demo: results", rows)
    lost = batched.report.lost
    if lost:
        display.note(f"FAILED: {lost:,} heartbeat(s) lost at close")
    if not check_ok:
        display.note("FAILED: the table does not hold the newest heartbeat of every agent")
    return 0 if lost == 0 and check_ok else 1


async def _run_batched(
    config: DemoConfig, target: Target, fleet: Fleet, display: Display
) -> Batched:
    sink = target.sink()
    batcher = AsyncBatcher(
        sink,
        key="id",
        version="updated_at",
        max_batch=config.batch_size,
        max_pending=config.max_pending,
        linger=config.linger,
        max_in_flight=target.max_in_flight,
    )
    stop = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        async with batcher:
            t0 = time.perf_counter()
            watcher = asyncio.create_task(_watch(batcher, sink, fleet, display, t0, stop))
            await _produce(batcher, config, fleet, t0)
            sent_at = time.perf_counter()
            report = await batcher.close()
            closed_at = time.perf_counter()
    finally:  # after the close, even an interrupted one: the display shows the final state
        stop.set()
        if watcher is not None:
            await watcher
    return Batched(
        report=report,
        statements=sink.statements,
        send_seconds=sent_at - t0,
        close_seconds=closed_at - sent_at,
    )


async def _produce(batcher: AsyncBatcher, config: DemoConfig, fleet: Fleet, t0: float) -> None:
    """Send every heartbeat when it is due: heartbeat ``j`` is agent ``j % N``'s, due at
    ``j * interval / N`` seconds after ``t0``."""
    n, rate, total = config.agents, config.rate, config.total
    mask = 0 if total <= _SAMPLE_ALL_UP_TO else 15
    ids, replicas, first, last = fleet.ids, fleet.replicas, fleet.first, fleet.last
    latencies, to_value = fleet.latencies_ns, fleet.stamp
    add, clock, ns, utc = batcher.add, time.perf_counter, time.perf_counter_ns, dt.UTC
    sent = 0
    while sent < total:
        due = min(total, int((clock() - t0) * rate) + 1, sent + _CHUNK)
        if due > sent:
            stamp = to_value(dt.datetime.now(utc))
            for j in range(sent, due):
                i = j % n
                f = first[i]
                if f is None:
                    f = first[i] = stamp
                last[i] = stamp
                record = {
                    "id": ids[i],
                    "replica_id": replicas[i],
                    "first_connected_at": f,
                    "last_connected_at": stamp,
                    "updated_at": stamp,
                }
                if j & mask:
                    await add(record)
                else:
                    started = ns()
                    await add(record)
                    latencies.append(ns() - started)
            sent = fleet.sent = due
        behind = sent < total and (clock() - t0) * rate >= sent + 1
        await asyncio.sleep(0 if behind else _TICK)


async def _watch(
    batcher: AsyncBatcher,
    sink: Any,
    fleet: Fleet,
    display: Display,
    t0: float,
    stop: asyncio.Event,
) -> None:
    """Feed the live display until ``stop`` is set, then once more with the final state."""
    while True:
        stopping = stop.is_set()
        s = batcher.stats()
        display.update(
            Progress(
                elapsed=time.perf_counter() - t0,
                sent=fleet.sent,
                pending=s.pending,
                in_flight=s.in_flight,
                committed=s.committed,
                statements=sink.statements,
                coalesced=s.coalesced,
            )
        )
        if stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REFRESH):
                await stop.wait()
