"""Retry budget, adaptive concurrency and dead-letter entries, exactly (issue 18: an ignored
``RetryPolicy.deadline``, a ``latency_target`` that never reached the engine, entries
written with ``attempts=1`` whatever the attempts, and a float ``1e300`` coming back from
``PostgresDeadLetter`` as an int all passed the suite).

Time runs on an auto-advancing ``ManualClock``: backoffs and slow writes take no real time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import writebehind as wb
from writebehind.dlq import PostgresDeadLetter, SQLiteDeadLetter
from writebehind.testing import FlakySink, ManualClock, MemorySink

from .conftest import Open
from .pg import DSN

FAR = 3600.0


class Timed(FlakySink):
    """A FlakySink that remembers the clock time of each attempt."""

    def __init__(self, clock: ManualClock, **kw: Any) -> None:
        super().__init__(**kw)
        self.clock = clock
        self.times: list[float] = []

    async def write(self, batch: list[Any]) -> None:
        self.times.append(self.clock.monotonic())
        await super().write(batch)


@pytest.mark.parametrize("deadline", [2.5, 5.5])
async def test_retry_deadline_bounds_the_time_spent_on_one_batch(
    api: Open, deadline: float
) -> None:
    """Waits of exactly 1 s (base = cap = 1) and 50 attempts allowed: the deadline stops
    the retries. A retry is made only if it would start before the deadline, so the batch
    is tried at 0, 1, ..., floor(deadline - 1) + 1 s and then dead-lettered, its entry
    saying how many tries it had."""
    clock = ManualClock(autojump=0)
    sink = Timed(clock, fail_first=1000)
    letters: list[wb.DeadLetterEntry] = []
    policy = wb.RetryPolicy(base=1.0, cap=1.0, max_attempts=50, deadline=deadline)
    async with api(
        sink, max_batch=1, linger=FAR, clock=clock, retry=policy, dead_letter=letters.extend
    ) as b:
        receipt = b.add_nowait({"n": 1})
        await b.flush()
        assert await b.outcome(receipt) is wb.Outcome.DEAD_LETTERED
    tries = int(deadline - 1) + 2  # 2.5 -> at 0, 1, 2; 5.5 -> at 0 .. 5
    assert sink.times == [float(t) for t in range(tries)]
    assert [e.attempts for e in letters] == [tries]
    assert b.stats().retried == tries - 1


async def test_without_a_deadline_max_attempts_decides(api: Open) -> None:
    """The same failing sink without a deadline: exactly max_attempts tries."""
    clock = ManualClock(autojump=0)
    sink = Timed(clock, fail_first=1000)
    letters: list[wb.DeadLetterEntry] = []
    policy = wb.RetryPolicy(base=1.0, cap=1.0, max_attempts=7)
    async with api(
        sink, max_batch=1, linger=FAR, clock=clock, retry=policy, dead_letter=letters.extend
    ) as b:
        b.add_nowait({"n": 1})
        await b.flush()
    assert sink.times == [float(t) for t in range(7)]
    assert [e.attempts for e in letters] == [7]


class ClockSlow(MemorySink):
    """Every write takes ``delay`` seconds of the (manual) clock."""

    def __init__(self, clock: ManualClock, delay: float) -> None:
        super().__init__()
        self.clock, self.delay = clock, delay
        self.in_flight = self.most = 0

    async def write(self, batch: list[Any]) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.clock.sleep(self.delay)
        finally:
            self.in_flight -= 1
        await super().write(batch)


@pytest.mark.parametrize(
    ("options", "halved"),
    [
        ({"latency_target": 0.1}, True),  # writes of 0.5 s are too slow
        ({"latency_target": 1.0}, False),  # fast enough
        ({"write_timeout": 0.8}, True),  # the default target: write_timeout / 2 = 0.4 s
        ({}, False),  # default write_timeout 30 s: target 15 s
    ],
)
async def test_latency_target_halves_the_concurrency(
    api: Open, options: dict[str, Any], halved: bool
) -> None:
    """Writes slower than latency_target halve the writes in flight (stats().concurrency,
    and the sink sees fewer at once); writes within it keep max_in_flight."""
    clock = ManualClock(autojump=0)
    sink = ClockSlow(clock, 0.5)
    async with api(
        sink, max_batch=10, max_pending=400, linger=FAR, max_in_flight=8, clock=clock,
        **options,
    ) as b:  # fmt: skip
        for i in range(80):  # 8 batches: all in flight at once at the ceiling
            b.add_nowait({"n": i})
        await b.flush()
        first = b.stats().concurrency
        sink.most = 0
        for i in range(80):
            b.add_nowait({"n": i})
        await b.flush()
        s = b.stats()
    assert s.committed == 160
    if halved:
        assert first < 8, first
        assert s.concurrency < 8, s.concurrency
        assert sink.most < 8, sink.most
    else:
        assert (first, s.concurrency, sink.most) == (8, 8, 8)


# -- dead-letter entries, through a real store of each kind ---------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.server)])
async def dl_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SQLiteDeadLetter | PostgresDeadLetter]:
    if request.param == "sqlite":
        s: SQLiteDeadLetter | PostgresDeadLetter = SQLiteDeadLetter(tmp_path / "dl.db")
        yield s
        await s.close()
        return
    table = f"dlgap_{uuid.uuid4().hex[:12]}"
    s = PostgresDeadLetter(DSN, table=table)
    yield s
    await s.close()
    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()


async def test_stored_entries_carry_the_exact_attempts(dl_store: Any) -> None:
    """Stored entries say how many tries their last delivery made: 4 for a batch whose
    retries ran out (max_attempts=4), 3 for a record refused after two retriable failures,
    1 for a record isolated by splitting (each half is a delivery of its own)."""
    clock = ManualClock(autojump=0)
    policy = wb.RetryPolicy(base=0.5, cap=0.5, max_attempts=4)
    async with wb.AsyncBatcher(
        FlakySink(fail_first=1000), max_batch=1, linger=FAR, clock=clock, retry=policy,
        dead_letter=dl_store, name="exhausted",
    ) as b:  # fmt: skip
        b.add_nowait({"id": "retried-out"})
    async with wb.AsyncBatcher(
        FlakySink(fail_first=2, poison=lambda r: True), max_batch=1, linger=FAR, clock=clock,
        retry=policy, dead_letter=dl_store, name="refused",
    ) as b:  # fmt: skip
        b.add_nowait({"id": "refused-third"})
    async with wb.AsyncBatcher(
        FlakySink(poison=lambda r: r["id"] == "bad"), max_batch=4, linger=FAR, clock=clock,
        retry=policy, dead_letter=dl_store, name="split",
    ) as b:  # fmt: skip
        for i in ("a", "b", "bad", "c"):
            b.add_nowait({"id": i})
    got = {(e.batcher, e.record()["id"], e.error, e.attempts) for e in await dl_store.list()}
    assert got == {
        ("exhausted", "retried-out", "RetriableSinkError", 4),
        ("refused", "refused-third", "PermanentSinkError", 3),
        ("split", "bad", "PermanentSinkError", 1),
    }


FLOATS = {"big": 1e300, "tiny": -2.5e-300, "e16": 1e16, "plain": 1.5, "neg0": -0.0}


async def test_floats_with_an_exponent_round_trip_through_the_store(dl_store: Any) -> None:
    """1e300 (which jsonb would turn into an integer), tiny and -0.0 floats come back as
    the same floats, of type float, from both stores."""
    import math

    record = {"id": 1, **FLOATS, "list": [1e300, 2.0], "tuple": (1e-300,)}
    await dl_store.put([
        wb.DeadLetterEntry(record=record, error="E", message="m", sink="s", batcher="b",
                           attempts=1, at=1.0e9)
    ])  # fmt: skip
    (stored,) = await dl_store.list()
    back = stored.record()
    assert back == record
    for name, value in FLOATS.items():
        assert type(back[name]) is float, (name, back[name])
        assert math.copysign(1, back[name]) == math.copysign(1, value)
    assert [type(v) for v in back["list"]] == [float, float]
    assert type(back["tuple"][0]) is float
