"""Capacity on one process: cost, ProvisionedCapacity (the token bucket), cut-to-fit, pause.

Everything here runs on an auto-advancing ManualClock: time moves only when every task is
waiting, straight to the next deadline, so rates are exact and nothing waits on the wall
clock.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import writebehind as wb
from writebehind._capacity import TokenBucket
from writebehind.testing import ManualClock

from .conftest import settle


class Timed:
    """A sink that remembers (clock time, cost of the batch, size) of every write."""

    def __init__(self, clock: ManualClock, field: str | None = None) -> None:
        self.clock, self.field = clock, field
        self.writes: list[tuple[float, float, int]] = []

    async def write(self, batch: list[Any]) -> None:
        cost = sum(r[self.field] for r in batch) if self.field else float(len(batch))
        self.writes.append((self.clock.monotonic(), cost, len(batch)))

    def spent_by(self, t: float) -> float:
        return sum(c for at, c, _ in self.writes if at <= t + 1e-9)


# -- the token bucket ----------------------------------------------------------------------
def test_the_bucket_starts_with_one_second_of_credit_and_refills_at_the_rate() -> None:
    clock = ManualClock()
    b = TokenBucket(100, clock)
    assert b.take(1, 1000) == 100  # one second of burst, no more
    assert b.take(1, 1000) is None
    assert b.wait_for(10) == pytest.approx(0.1)
    clock.advance(0.25)
    assert b.take(30, 30) is None  # 25 of credit: the oldest record (30) does not fit
    assert b.take(20, 1000) == pytest.approx(25)
    clock.advance(5)
    assert b.take(1, 1000) == 100  # idle for 5 s: still one second of credit, not five


def test_the_bucket_gives_back_and_spends_into_debt() -> None:
    clock = ManualClock()
    b = TokenBucket(10, clock)
    assert b.take(1, 4) == 4
    b.give_back(3)
    assert b.take(1, 100) == 9
    b.spend(20)  # a direct write: into debt
    assert b.wait_for(1) == pytest.approx(2.1)  # the debt (20) and then one unit


def test_a_lower_rate_clips_the_credit_and_a_higher_one_does_not_add_any() -> None:
    clock = ManualClock()
    b = TokenBucket(100, clock)
    b.set_rate(10)
    assert b.take(1, 1000) == 10
    b.set_rate(1000)
    assert b.take(1, 1000) is None  # the credit did not jump with the rate
    clock.advance(0.01)
    assert b.take(1, 1000) is None  # 10 there: a take waits for 0.1 s of credit (100)
    assert b.take(1, 10) == pytest.approx(10)  # ... unless it asks for no more than is there


def test_a_refused_taker_is_served_before_later_ones() -> None:
    """A taker refused for want of credit has the credit it needs kept for it: a later taker
    asking for less cannot take it first; a claim not renewed in time lapses."""
    clock = ManualClock()
    b = TokenBucket(100, clock)
    assert b.take(100, 100, "a") == 100  # empty now
    assert b.take(10, 10, "costly") is None  # waits for 10
    clock.advance(0.05)  # 5 there
    assert b.take(1, 1, "cheap") is None  # 10 are kept for "costly": cheap waits behind
    assert b.wait_for(1, "cheap") == pytest.approx(0.06)  # 10 for costly + 1 - 5 there
    clock.advance(0.05)
    assert b.take(10, 10, "costly") == pytest.approx(10)
    clock.advance(0.01)
    assert b.take(1, 1, "cheap") == pytest.approx(1)
    assert b.take(10, 10, "gone") is None
    clock.advance(0.1 + 1.0 + 0.01)  # "gone" never came back: its claim lapsed
    assert b.take(100, 100, "other") == pytest.approx(100)


def test_a_minimum_above_the_rate_waits_for_a_higher_rate_never_for_debt() -> None:
    """A cost above one second's credit is not granted into debt (a fleet member at its
    reserved rate would write a whole shared budget at once: the review measured the fleet
    at 2x its budget before); it waits until the rate rises."""
    clock = ManualClock()
    b = TokenBucket(10, clock)
    assert b.take(25, 25) is None
    assert b.wait_for(25) is None  # no wait on the clock helps: a rate change will
    clock.advance(10)
    assert b.take(25, 25) is None
    b.set_rate(30)
    clock.advance(1)
    assert b.take(25, 25) == 25


def test_a_rate_of_zero_grants_nothing_and_says_wait_for_a_change() -> None:
    b = TokenBucket(0, ManualClock())
    assert b.take(1, 1) is None
    assert b.wait_for(1) is None


# -- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, "100", True, None, 10**400])
def test_provisioned_capacity_refuses_a_bad_rate(bad: Any) -> None:
    with pytest.raises(wb.ConfigError, match="per_second"):
        wb.ProvisionedCapacity(bad)


@pytest.mark.parametrize("bad", [-1, math.inf, math.nan, ("a", "b"), b"ru", None, "", 10**400])
def test_a_bad_cost_is_a_config_error(bad: Any) -> None:
    with pytest.raises(wb.ConfigError, match="cost"):
        wb.AsyncBatcher(wb.testing.MemorySink(), cost=bad)


def test_a_constant_cost_above_the_capacity_is_a_config_error() -> None:
    with pytest.raises(wb.ConfigError, match=r"cost: every record costs 50.*could ever grant"):
        wb.AsyncBatcher(wb.testing.MemorySink(), cost=50, capacity=wb.ProvisionedCapacity(10))


def test_capacity_must_be_a_capacity() -> None:
    with pytest.raises(wb.ConfigError, match="capacity: must be"):
        wb.AsyncBatcher(wb.testing.MemorySink(), capacity=100)  # type: ignore[arg-type]


# -- spending --------------------------------------------------------------------------------
async def test_writes_stay_within_the_rate_after_one_second_of_burst() -> None:
    clock = ManualClock(autojump=0)
    sink = Timed(clock)
    cap = wb.ProvisionedCapacity(100)
    async with wb.AsyncBatcher(
        sink, capacity=cap, max_batch=50, max_pending=5000, linger=0, clock=clock
    ) as b:
        for i in range(1000):
            b.add_nowait({"n": i})
        await b.flush()
        end = clock.monotonic()
    assert sum(c for _, c, _ in sink.writes) == 1000
    for t in [x / 2 for x in range(1, 2 * int(end) + 2)]:
        assert sink.spent_by(t) <= 100 + 100 * t + 1e-6, (t, sink.spent_by(t))
    assert end == pytest.approx(9.0, abs=0.6)  # 100 at once, then 900 at 100/s


async def test_throttling_and_aimd_still_work_under_a_capacity() -> None:
    """The sink takes less than the capacity grants: its throttles still pause the batcher
    and shrink the concurrency, the writes keep to the sink's rate (the tighter of the two),
    and nothing is lost or paid twice (a retried batch does not take capacity again)."""
    clock = ManualClock(autojump=0)
    sink = wb.testing.ThrottlingSink(rate=200, burst=50, clock=clock)
    cap = wb.ProvisionedCapacity(1000)
    async with wb.AsyncBatcher(
        sink, capacity=cap, max_batch=50, max_pending=5000, max_in_flight=4, linger=0,
        clock=clock,
    ) as b:  # fmt: skip
        for i in range(2000):
            b.add_nowait({"n": i})
        await b.flush()
        s, end = b.stats(), clock.monotonic()
    assert s.committed == s.accepted == 2000
    assert (s.lost, s.dead_lettered) == (0, 0)
    assert s.throttled > 0
    assert s.concurrency < 4
    assert end >= (2000 - 50) / 200 - 1e-6  # the sink's rate bounds it, not the capacity's


class Attempts(Timed):
    """Like Timed, but every attempt counts (the datastore did the work), and three of
    every four fail with a retriable error; records with ``poison`` fail for good."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.n = 0

    async def write(self, batch: list[Any]) -> None:
        await super().write(batch)
        self.n += 1
        if any(r.get("poison") for r in batch):
            raise wb.PermanentSinkError("poison")
        if self.n % 4:
            raise wb.RetriableSinkError("the reply was lost")


async def test_retries_and_split_halves_are_paid_for() -> None:
    """Every attempt reaching the datastore is charged: the review measured 760 units in a
    second against a 100/s budget when retries were free. Poison records split batches:
    the halves are charged too. Nothing is lost."""
    clock = ManualClock(autojump=0)
    sink = Attempts(clock)
    cap = wb.ProvisionedCapacity(100)
    fast = wb.RetryPolicy(base=0.001, cap=0.01, max_attempts=50)
    async with wb.AsyncBatcher(
        sink, capacity=cap, max_batch=20, max_pending=5000, max_in_flight=4, linger=0,
        retry=fast, clock=clock,
    ) as b:  # fmt: skip
        for i in range(400):
            b.add_nowait({"n": i, "poison": i % 97 == 0})
        await b.flush()
        s = b.stats()
        end = clock.monotonic()
    assert s.committed + s.dead_lettered == 400
    assert s.retried > 0
    assert s.splits > 0
    for t in [x / 4 for x in range(1, 4 * int(end) + 4)]:
        assert sink.spent_by(t) <= 100 + 100 * t + 1e-6, (t, sink.spent_by(t))


async def test_direct_writes_wait_for_the_capacity() -> None:
    """when_full="direct" writes a record alone when the buffer is full, but not past the
    budget: the review wrote 299 records in 0.02 s on a 10/s capacity before."""
    clock = ManualClock(autojump=0)
    sink = Timed(clock)
    cap = wb.ProvisionedCapacity(10)
    async with wb.AsyncBatcher(
        sink, capacity=cap, when_full="direct", max_batch=1, max_pending=1, linger=0.01,
        clock=clock,
    ) as b:  # fmt: skip
        for i in range(60):
            await b.add({"n": i})
        await b.flush()
        s = b.stats()
        end = clock.monotonic()
    assert s.committed == 60
    assert s.lost == 0
    for t in [x / 4 for x in range(1, 4 * int(end) + 4)]:
        assert sink.spent_by(t) <= 10 + 10 * t + 1e-6, (t, sink.spent_by(t))
    assert end >= (60 - 10) / 10 - 0.5


async def test_several_batchers_on_one_capacity_share_its_rate() -> None:
    """Two tables, one database budget: together they stay within it, and both progress."""
    clock = ManualClock(autojump=0)
    cap = wb.ProvisionedCapacity(200)
    a, b = Timed(clock), Timed(clock)
    async with (
        wb.AsyncBatcher(a, capacity=cap, max_batch=20, max_pending=5000, linger=0, clock=clock,
                        name="a") as ba,
        wb.AsyncBatcher(b, capacity=cap, max_batch=20, max_pending=5000, linger=0, clock=clock,
                        name="b") as bb,
    ):  # fmt: skip
        for i in range(1000):
            ba.add_nowait({"n": i})
            bb.add_nowait({"n": i})
        await asyncio.gather(ba.flush(), bb.flush())
        end = clock.monotonic()
    for t in [x / 2 for x in range(1, 2 * int(end) + 2)]:
        both = a.spent_by(t) + b.spent_by(t)
        assert both <= 200 + 200 * t + 1e-6, (t, both)
    assert end == pytest.approx(9.0, abs=0.6)  # 2,000 at 200/s after a second's burst
    half = [s.spent_by(end / 2) for s in (a, b)]
    assert min(half) > 0.3 * sum(half), half  # neither starves


async def test_cheap_records_do_not_starve_costly_ones_on_a_shared_capacity() -> None:
    """Two batchers on one budget, one with records of cost 1, one with cost 10: the costly
    one is not starved by the cheap one taking every unit of credit as it refills (found by
    the docs' example: the costly batcher wrote 50 of 1,000 in 19.5 s before the fix). A
    waiting batcher's oldest record is served first; both progress within each second."""
    clock = ManualClock(autojump=0)
    cap = wb.ProvisionedCapacity(100)
    cheap, costly = Timed(clock, "ru"), Timed(clock, "ru")
    opts: dict[str, Any] = dict(
        capacity=cap, cost="ru", max_batch=50, max_pending=10_000, linger=0, clock=clock
    )
    async with (
        wb.AsyncBatcher(cheap, name="cheap", **opts) as bc,
        wb.AsyncBatcher(costly, name="costly", **opts) as bx,
    ):
        for i in range(2000):
            bc.add_nowait({"n": i, "ru": 1})
        for i in range(100):
            bx.add_nowait({"n": i, "ru": 10})
        await asyncio.gather(bc.flush(), bx.flush())
        end = clock.monotonic()
    total = 2000 + 100 * 10
    assert end == pytest.approx((total - 100) / 100, abs=1.0)  # the budget, fully used
    both = min(costly.writes[-1][0], cheap.writes[-1][0])  # while both had work, each second
    for t in range(1, int(both)):  # (after the first second's burst) shared about evenly
        for sink in (costly, cheap):
            assert 30 <= sink.spent_by(t + 1) - sink.spent_by(t) <= 70, (t, sink.writes[:9])
    assert len(costly.writes) + len(cheap.writes) <= 15 * end  # batches, not single records
    for t in [x / 2 for x in range(1, 2 * int(end) + 2)]:
        spent = cheap.spent_by(t) + costly.spent_by(t)
        assert spent <= 100 + 100 * t + 1e-6, (t, spent)


async def test_a_closed_batcher_no_longer_counts_in_what_a_capacity_needs() -> None:
    """A capacity asks its batchers what they need: one that closed is forgotten (its needs
    stayed registered before the fix, so a Redis capacity kept asking for it)."""
    cap = wb.ProvisionedCapacity(100)
    async with cap:
        for _ in range(3):
            async with wb.AsyncBatcher(wb.testing.MemorySink(), capacity=cap) as b:
                b.add_nowait({"n": 1})
        assert cap._needs == {}
        assert cap._listeners == []


async def test_a_costly_batch_is_cut_to_fit_what_is_granted() -> None:
    clock = ManualClock(autojump=0)
    sink = Timed(clock, field="ru")
    cap = wb.ProvisionedCapacity(100)
    async with wb.AsyncBatcher(
        sink, cost="ru", capacity=cap, max_batch=10, linger=0, clock=clock
    ) as b:
        for i in range(10):
            b.add_nowait({"n": i, "ru": 30})
        await b.flush()
    sizes = [n for _, _, n in sink.writes]
    assert sizes[0] == 3  # 100 of credit buys three records of 30, not ten
    assert sum(sizes) == 10
    assert all(c <= 100 for _, c, _ in sink.writes)


async def test_a_record_costing_more_than_the_capacity_is_refused_not_accepted() -> None:
    clock = ManualClock(autojump=0)
    async with wb.AsyncBatcher(
        Timed(clock, "ru"), cost="ru", capacity=wb.ProvisionedCapacity(100), clock=clock
    ) as b:
        with pytest.raises(wb.RecordError, match="could ever grant"):
            b.add_nowait({"ru": 101})
        for bad in (-1, math.nan, "ten", None, math.inf, True, 10**400, -0.5):
            with pytest.raises(wb.RecordError, match="cost"):
                b.add_nowait({"ru": bad})
        with pytest.raises(wb.RecordError, match=r"no cost field 'ru'.*cost='ru'"):
            b.add_nowait({"n": 1})
        with pytest.raises(wb.RecordError, match="could ever grant"):
            b.add_nowait({"ru": 10**400 // 10**390})  # an int: the check is the same
        b.add_nowait({"ru": 100})  # exactly the capacity: accepted
        assert b.stats().accepted == 1


async def test_a_cost_callable_that_raises_is_the_records_error() -> None:
    def cost(record: Any) -> float:
        raise ValueError("boom")

    async with wb.AsyncBatcher(wb.testing.MemorySink(), cost=cost, linger=0) as b:
        with pytest.raises(wb.RecordError, match="cost function failed"):
            b.add_nowait({"n": 1})
        assert b.stats().accepted == 0


async def test_needs_capacity_counts_pending_and_in_flight_cost() -> None:
    clock = ManualClock(autojump=0)
    gate = wb.testing.GatedSink()
    async with wb.AsyncBatcher(gate, cost="ru", key="k", max_batch=2, linger=3600,
                               clock=clock) as b:  # fmt: skip
        b.add_nowait({"k": 1, "ru": 5})
        b.add_nowait({"k": 1, "ru": 7})  # coalesced: the newest's cost counts
        assert b.stats().needs_capacity == 7
        b.add_nowait({"k": 2, "ru": 2.5})  # two pending: a batch is cut, held by the gate
        await settle(lambda: gate.waiting == 1)
        b.add_nowait({"k": 3, "ru": 1})
        s = b.stats()
        assert (s.in_flight, s.pending, s.needs_capacity) == (2, 1, 10.5)
        assert s.capacity is None
        gate.open()
        await b.flush()
        assert b.stats().needs_capacity == 0


async def test_without_a_cost_each_record_costs_one() -> None:
    async with wb.AsyncBatcher(wb.testing.MemorySink(), linger=3600) as b:
        for i in range(7):
            b.add_nowait({"n": i})
        assert b.stats().needs_capacity == 7


async def test_stats_and_events_show_the_capacity() -> None:
    clock = ManualClock(autojump=0)
    cap = wb.ProvisionedCapacity(50)
    async with wb.AsyncBatcher(wb.testing.MemorySink(), capacity=cap, clock=clock) as b:
        assert b.stats().capacity == 50
        cap._bucket.set_rate(20)
        cap._changed("test")  # what a fleet capacity does when it loses partitions
        events = b.events(since=1)
        first = await anext(aiter(events))
    assert isinstance(first, wb.CapacityChanged)
    assert (first.per_second, first.reason, first.partitions) == (20, "test", None)


# -- pause ---------------------------------------------------------------------------------
async def test_pause_holds_every_write_for_its_time() -> None:
    clock = ManualClock(autojump=0)
    sink = Timed(clock)
    async with wb.AsyncBatcher(sink, max_batch=10, linger=0.1, clock=clock) as b:
        b.pause(5)
        assert b.stats().paused_for == 5
        for i in range(25):
            b.add_nowait({"n": i})
        await b.flush()
        assert clock.monotonic() >= 5
        assert sink.writes[0][0] == pytest.approx(5)
        b.pause(2)
        b.pause(1)  # a shorter pause does not shorten the longer one
        b.add_nowait({"n": 99})
        await b.flush()
        assert sink.writes[-1][0] == pytest.approx(clock.monotonic())
        assert clock.monotonic() == pytest.approx(7, abs=0.2)
        kinds = [type(e).__name__ for e in b.events(since=1).drain()]
    assert kinds.count("Paused") == 2  # pause(1) inside pause(2) changed nothing
    assert kinds.count("Resumed") == 2
    assert b.stats().pauses == 2


async def test_close_ends_a_pause_and_writes_everything() -> None:
    clock = ManualClock(autojump=0)
    sink = Timed(clock)
    async with wb.AsyncBatcher(sink, linger=0, clock=clock, close_timeout=5) as b:
        b.pause(3600)
        for i in range(10):
            b.add_nowait({"n": i})
    assert b.stats().committed == 10
    assert clock.monotonic() < 5


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "1"])
async def test_pause_refuses_a_bad_duration(bad: Any) -> None:
    async with wb.AsyncBatcher(wb.testing.MemorySink()) as b:
        with pytest.raises(wb.ConfigError, match="seconds"):
            b.pause(bad)


def test_pause_needs_a_running_batcher() -> None:
    b = wb.Batcher(wb.testing.MemorySink())
    with pytest.raises(wb.WriteBehindError, match="not running"):
        b.pause(1)
    with b:
        b.pause(0)
    with pytest.raises(wb.WriteBehindError, match="closed"):  # not "start it first"
        b.pause(1)


def test_the_sync_batcher_spends_and_pauses_through_the_same_engine() -> None:
    cap = wb.ProvisionedCapacity(1000)
    sink = wb.testing.MemorySink()
    with wb.Batcher(sink, cost="ru", capacity=cap, max_batch=100, linger=0) as b:
        b.pause(0.2)
        for i in range(300):
            b.add({"n": i, "ru": 2})
        b.flush(timeout=10)
        s = b.stats()
    assert s.committed == 300
    assert s.capacity == 1000
    assert all(sum(r["ru"] for r in batch) <= 1000 for batch in sink.batches)


# -- holders -----------------------------------------------------------------------------------
class Counting(wb.ProvisionedCapacity):
    starts = stops = 0

    def _start(self) -> None:
        self.starts += 1

    def _stop(self) -> None:
        self.stops += 1


async def test_the_capacity_runs_while_any_batcher_holds_it() -> None:
    cap = Counting(10)
    async with wb.AsyncBatcher(wb.testing.MemorySink(), capacity=cap) as a:
        async with wb.AsyncBatcher(wb.testing.MemorySink(), capacity=cap):
            assert (cap.starts, cap.stops) == (1, 0)
        assert (cap.starts, cap.stops) == (1, 0)
        await a.flush()
    assert (cap.starts, cap.stops) == (1, 1)
    async with cap:
        async with wb.AsyncBatcher(wb.testing.MemorySink(), capacity=cap):
            pass
        assert (cap.starts, cap.stops) == (2, 1)  # the 'async with cap' still holds it
    assert (cap.starts, cap.stops) == (2, 2)
