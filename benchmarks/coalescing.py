"""(b, continued) The demo's workload: agents that heartbeat more often than the linger.

Every agent sends a heartbeat every ``interval`` seconds of simulated time into
``AsyncBatcher(SQLiteSink(...), key="id", version="updated_at", linger=...)``; the batcher
runs on a ``writebehind.testing.ManualClock`` (``clock=``), so linger windows are exact and
the run does not take the simulated time. After each step of the clock the benchmark waits
(in real time) until the flusher has cut what was due and the sink has written it. A counting
wrapper around the sink adds up the sizes of the batches the sink saw: the rows written. An
agent's heartbeats within one linger window coalesce into one row, so the rows written should
fall by about ``linger / interval``, the heartbeats per window. The table is then read back:
one row per agent, each with its newest heartbeat.

It runs twice: with ``max_batch`` twice the number of agents, so a linger window can hold one
record per agent without reaching ``max_batch``, and with the default ``max_batch=500``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import writebehind as wb
from writebehind.testing import ManualClock

from ._common import BASE_TIME, BenchmarkError, Section, Table, Target, check, iso, uuids
from .sqlite_e2e import TABLE, create_table, verify_table

__all__ = ["measure"]


class _CountingSink:
    """Delegates to a sink and adds up what it wrote."""

    def __init__(self, inner: wb.SQLiteSink) -> None:
        self.inner = inner
        self.rows = 0
        self.writes = 0

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, batch: list[Any]) -> None:
        await self.inner.write(batch)
        self.rows += len(batch)
        self.writes += 1

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True)
class Result:
    max_batch: int
    heartbeats: int
    rows: int
    writes: int
    statements: int
    coalesced: int
    expected_rows: int


async def _settle(batcher: wb.AsyncBatcher, clock: ManualClock, max_batch: int) -> None:
    """Wait until the flusher has cut all that is due and the sink has written it."""
    deadline = time.monotonic() + 60
    while True:
        s = batcher.stats()
        quiet = s.in_flight == 0 and s.pending < max_batch
        if quiet and (s.pending == 0 or clock.sleepers > 0):
            return  # nothing pending, or the flusher sleeps on a linger timer
        if time.monotonic() > deadline:
            raise BenchmarkError(f"coalescing: the batcher did not settle within 60 s: {s}")
        await asyncio.sleep(0 if s.in_flight == 0 else 0.0005)


async def _run(
    path: Path, agents: int, interval: float, duration: float, linger: float, max_batch: int
) -> tuple[Result, dict[str, str]]:
    ids = [str(u) for u in uuids(agents, seed=21)]
    clock = ManualClock()
    sink = _CountingSink(wb.SQLiteSink(path, table=TABLE, key="id", version="updated_at"))
    batcher = wb.AsyncBatcher(
        sink, key="id", version="updated_at", max_batch=max_batch, linger=linger, clock=clock
    )
    await batcher.start()
    ticks = round(duration / interval)
    first = iso(BASE_TIME)
    newest: dict[str, str] = {}
    sent = 0
    for tick in range(ticks):
        start = BASE_TIME + dt.timedelta(seconds=tick * interval)
        for a in range(agents):
            ts = iso(start + dt.timedelta(microseconds=a))
            await batcher.add(
                {
                    "id": ids[a],
                    "first_connected_at": first,
                    "last_connected_at": ts,
                    "replica_id": "replica-0",
                    "disconnected_at": None,
                    "updated_at": ts,
                }
            )
            newest[ids[a]] = ts
            sent += 1
        await _settle(batcher, clock, max_batch)
        clock.advance(interval)
        await _settle(batcher, clock, max_batch)
    report = await batcher.close()
    s = report.stats
    check(
        report.lost == 0 and s.accepted == sent and s.committed == sink.rows,
        f"coalescing (max_batch={max_batch}): sent {sent}, sink wrote {sink.rows}; {s}",
    )
    check(
        s.committed + s.coalesced == sent,
        f"coalescing: committed {s.committed} + coalesced {s.coalesced} != sent {sent}",
    )
    windows = math.ceil(duration / linger - 1e-9)
    return (
        Result(
            max_batch=max_batch,
            heartbeats=sent,
            rows=sink.rows,
            writes=sink.writes,
            statements=sink.inner.statements,
            coalesced=s.coalesced,
            expected_rows=agents * windows,
        ),
        newest,
    )


def measure(quick: bool = False) -> Section:
    agents = 1_000 if quick else 10_000
    interval, duration, linger = 0.5, 6.0, 2.0
    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="wb-bench-") as d:
        for k, max_batch in enumerate((2 * agents, 500)):
            path = Path(d) / f"coalesce{k}.db"
            create_table(path)
            result, newest = asyncio.run(_run(path, agents, interval, duration, linger, max_batch))
            verify_table(path, newest, f"coalescing (max_batch={max_batch})")
            results.append(result)
    seconds = time.perf_counter() - started
    expected_ratio = linger / interval
    table = Table(
        "Rows written for the heartbeats sent",
        [
            "max_batch",
            "heartbeats sent",
            "rows written",
            "batches",
            "statements",
            "coalesced",
            "heartbeats per row",
            "expected",
        ],
    )
    for r in results:
        table.rows.append(
            [
                f"{r.max_batch:,}",
                f"{r.heartbeats:,}",
                f"{r.rows:,}",
                f"{r.writes:,}",
                f"{r.statements:,}",
                f"{r.coalesced:,}",
                f"{r.heartbeats / r.rows:.2f}",
                f"{expected_ratio:.2f} ({r.expected_rows:,} rows)",
            ]
        )
    table.caption = (
        f"{agents:,} agents, a heartbeat every {interval:g} s each for {duration:g} s of "
        f"simulated time, linger {linger:g} s, SQLite (WAL, synchronous=FULL). Expected: "
        f"linger / interval = {expected_ratio:g} heartbeats per row, one row per agent per "
        "linger window."
    )
    big, small = results
    ratio = big.heartbeats / big.rows
    small_ratio = small.heartbeats / small.rows
    targets = [
        Target(
            f"coalescing cuts the rows written by about linger / interval = {expected_ratio:g} "
            f"(max_batch={big.max_batch:,}, within 10%)",
            abs(ratio / expected_ratio - 1) <= 0.10,
            f"{big.heartbeats:,} heartbeats -> {big.rows:,} rows: {ratio:.2f}x",
        ),
    ]
    notes = [
        "Coalescing happens only while a key's record is still pending. With "
        f"max_batch={small.max_batch} and {agents:,} agents, {small.max_batch} distinct keys "
        "pending trigger a batch long before the linger expires, so each heartbeat is cut and "
        f"written before the agent's next one arrives: {small.heartbeats:,} heartbeats gave "
        f"{small.rows:,} rows ({small_ratio:.2f} heartbeats per row). To coalesce, max_batch "
        "must exceed the number of keys active within a linger window (pending counts distinct "
        "keys; reaching max_batch cuts a batch at once). "
        "`writebehind demo` therefore defaults to max_batch = 2 x the number of agents.",
    ]
    return Section(
        key="coalescing",
        title="Coalescing: the demo's workload",
        method=__doc__ or "",
        tables=[table],
        targets=targets,
        notes=notes,
        data={"results": [r.__dict__ for r in results], "expected_ratio": expected_ratio},
        seconds=seconds,
    )
