"""``writebehind demo``: a fleet of agents sends heartbeats into SQLite through a batcher.

Agent ``i`` of ``N`` sends a heartbeat every ``interval`` seconds, its phase ``i/N`` of an
interval, so the fleet offers ``N / interval`` heartbeats a second, evenly. One producer
coroutine paces them on the real clock and hands each to ``await batcher.add(record)``,
timing every call. A watcher coroutine reads ``batcher.stats()`` about four times a second
for the live display. After the batcher closes, the same workload is replayed the naive way
(one ``INSERT ... ON CONFLICT`` and one commit per heartbeat, same SQLite settings) for at
most a couple of seconds, extrapolated to the whole run; then the table is checked: one
row per agent, each holding that agent's newest heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass

from .. import AsyncBatcher, CloseReport, SQLiteSink
from ._display import Display, Progress, Row, make_display
from ._naive import NaiveResult, replay_naive

__all__ = ["TABLE", "DemoConfig", "create_table", "run"]

TABLE = "agent_heartbeats"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, replica_id TEXT, "
    "first_connected_at TEXT, last_connected_at TEXT, updated_at TEXT)"
)
_TICK = 0.005  # seconds between the producer's pacing steps
_CHUNK = 2_000  # heartbeats sent before yielding, when the producer runs behind
_REFRESH = 0.25  # seconds between live display updates
_SAMPLE_ALL_UP_TO = 1_000_000  # beyond this many heartbeats, time 1 add() in 16
_NAIVE_BUDGET = 2.0  # seconds the naive replay may take before it extrapolates
_REPLICAS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    """The demo's settings; the command line's flags."""

    agents: int = 10_000
    duration: float = 5.0
    interval: float = 1.0
    db: str | None = None
    max_batch: int = 500
    linger: float = 2.0
    naive: bool = True
    plain: bool = False

    @property
    def rate(self) -> float:
        """Heartbeats offered per second."""
        return self.agents / self.interval

    @property
    def total(self) -> int:
        """Heartbeats in the whole run (at least one)."""
        return max(1, round(self.duration * self.rate))


class _Fleet:
    """The agents' identities and what the producer sent them (for the final check)."""

    def __init__(self, n: int) -> None:
        width = len(str(n - 1))
        self.ids = [f"agent-{i:0{width}d}" for i in range(n)]
        self.replicas = [f"replica-{i % _REPLICAS}" for i in range(n)]
        self.first: list[str | None] = [None] * n
        self.last: list[str | None] = [None] * n
        self.latencies_ns: list[int] = []
        self.sent = 0


@dataclass(frozen=True, slots=True)
class _Batched:
    report: CloseReport
    statements: int
    send_seconds: float
    close_seconds: float


def run(config: DemoConfig) -> int:
    """Run the demo, print its progress and its final table; 0 if nothing was lost."""
    display = make_display(plain=config.plain)
    fleet = _Fleet(config.agents)
    with tempfile.TemporaryDirectory(prefix="writebehind-demo-") as tmp:
        path = config.db or os.path.join(tmp, "heartbeats.db")
        create_table(path)
        display.start(
            f"{config.agents:,} agents -> SQLite, {config.rate:,.0f} heartbeats/s for "
            f"{config.duration:g} s, max_batch {config.max_batch}, linger {config.linger:g} s"
        )
        try:
            batched = asyncio.run(_run_batched(config, path, fleet, display))
        finally:
            display.stop()
        naive: NaiveResult | None = None
        if config.naive:
            display.note(
                "replaying the same heartbeats naively (one statement + one commit each, "
                f"at most {_NAIVE_BUDGET:g} s, then extrapolated) ..."
            )
            naive = replay_naive(
                os.path.join(tmp, "naive.db"),
                schema=_SCHEMA,
                table=TABLE,
                ids=fleet.ids,
                replicas=fleet.replicas,
                interval=config.interval,
                total=config.total,
                budget=_NAIVE_BUDGET,
            )
        check_ok, check = _check_table(path, fleet)
    rows = _final_rows(config, fleet, batched, naive, check)
    if config.db is not None:
        rows.append(("database", f"{config.db} (kept)"))
    display.final("writebehind demo: results", rows)
    lost = batched.report.lost
    if lost:
        display.note(f"FAILED: {lost:,} heartbeat(s) lost at close")
    if not check_ok:
        display.note("FAILED: the table does not hold the newest heartbeat of every agent")
    return 0 if lost == 0 and check_ok else 1


def create_table(path: str) -> None:
    """Create the heartbeats table in ``path`` if it is missing (WAL journal)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        conn.commit()


async def _run_batched(config: DemoConfig, path: str, fleet: _Fleet, display: Display) -> _Batched:
    sink = SQLiteSink(path, table=TABLE, key="id", version="updated_at")
    batcher = AsyncBatcher(
        sink, key="id", version="updated_at", max_batch=config.max_batch, linger=config.linger
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
    return _Batched(
        report=report,
        statements=sink.statements,
        send_seconds=sent_at - t0,
        close_seconds=closed_at - sent_at,
    )


async def _produce(batcher: AsyncBatcher, config: DemoConfig, fleet: _Fleet, t0: float) -> None:
    """Send every heartbeat when it is due: heartbeat ``j`` is agent ``j % N``'s, due at
    ``j * interval / N`` seconds after ``t0``."""
    n, rate, total = config.agents, config.rate, config.total
    mask = 0 if total <= _SAMPLE_ALL_UP_TO else 15
    ids, replicas, first, last = fleet.ids, fleet.replicas, fleet.first, fleet.last
    latencies = fleet.latencies_ns
    add, clock, ns, utc = batcher.add, time.perf_counter, time.perf_counter_ns, dt.UTC
    sent = 0
    while sent < total:
        due = min(total, int((clock() - t0) * rate) + 1, sent + _CHUNK)
        if due > sent:
            stamp = dt.datetime.now(utc).isoformat(timespec="microseconds")
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
    sink: SQLiteSink,
    fleet: _Fleet,
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


def _check_table(path: str, fleet: _Fleet) -> tuple[bool, str]:
    """Whether the table holds one row per agent that sent, each with its newest heartbeat."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = dict(conn.execute(f"SELECT id, updated_at FROM {TABLE}").fetchall())
    expected = {k: v for k, v in zip(fleet.ids, fleet.last, strict=True) if v is not None}
    missing = sum(1 for k in expected if k not in rows)
    stale = sum(1 for k, v in expected.items() if k in rows and rows[k] != v)
    extra = len(rows) - (len(expected) - missing)
    if missing or stale:
        return False, (
            f"FAILED: {len(expected):,} agents, {missing:,} missing, {stale:,} not holding "
            "their newest heartbeat"
        )
    text = f"OK: {len(expected):,} rows, one per agent, newest heartbeat each"
    if extra:
        text += f" (plus {extra:,} rows from an earlier run)"
    return True, text


def _final_rows(
    config: DemoConfig, fleet: _Fleet, b: _Batched, naive: NaiveResult | None, check: str
) -> list[Row]:
    s = b.report.stats
    p50, p99 = _percentiles(fleet.latencies_ns)
    sampled = "" if len(fleet.latencies_ns) == fleet.sent else ", 1 call in 16 timed"
    rows: list[Row] = [
        ("heartbeats sent", f"{fleet.sent:,} in {b.send_seconds:.2f} s"),
        ("rows written", f"{s.committed:,} (sum of committed batch sizes)"),
        ("statements issued", f"{b.statements:,} in {s.batches:,} batches"),
        ("coalesced", f"{s.coalesced:,}"),
        ("lost", f"{b.report.lost:,}"),
    ]
    if s.dead_lettered or s.dropped:
        rows.append(("dead-lettered / dropped", f"{s.dead_lettered:,} / {s.dropped:,}"))
    rows += [
        (
            "throughput",
            f"{fleet.sent / max(b.send_seconds, config.total / config.rate):,.0f} "
            "heartbeats/s accepted "
            f"(offered {config.rate:,.0f}/s)",
        ),
        ("add() latency", f"p50 {p50:,.1f} µs, p99 {p99:,.1f} µs{sampled}"),
        ("close (final flush)", f"{b.close_seconds * 1000:,.0f} ms"),
    ]
    if naive is not None:
        rows += _naive_rows(config, b, naive)
    rows.append(("table check", check))
    return rows


def _naive_rows(config: DemoConfig, b: _Batched, naive: NaiveResult) -> list[Row]:
    how = (
        "measured"
        if naive.replayed == naive.total
        else f"extrapolated: the first {naive.replayed:,} took {naive.seconds:.1f} s"
    )
    ratio = naive.total / b.statements if b.statements else float("inf")
    keeps_up = naive.rate >= config.rate
    return [
        ("naive: statements", f"{naive.total:,} (one statement + one commit per heartbeat)"),
        ("naive: time", f"{naive.estimated_seconds:,.2f} s ({how})"),
        (
            "naive: max rate",
            f"{naive.rate:,.0f} heartbeats/s "
            f"({'keeps up with' if keeps_up else 'falls behind'} the offered "
            f"{config.rate:,.0f}/s)",
        ),
        ("naive / writebehind", f"{ratio:,.0f}x the statements and commits"),
    ]


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """p50 and p99 of ``samples_ns``, in microseconds."""
    if not samples_ns:
        return 0.0, 0.0
    ordered = sorted(samples_ns)
    last = len(ordered) - 1
    return ordered[round(0.50 * last)] / 1000, ordered[round(0.99 * last)] / 1000
