"""When the sink misbehaves: throttle pauses, one probe per backoff step while failing,
adaptive concurrency, timeouts, and logs that cannot flood."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

import writebehind as wb
from writebehind._aimd import AdaptiveConcurrency
from writebehind._health import LogGate
from writebehind.testing import FlakySink, ManualClock, MemorySink, SlowSink, ThrottlingSink

from .conftest import Open, assert_conserved, settle

FAR = 3600.0
T = TypeVar("T")


async def drive(clock: ManualClock, aw: Awaitable[T], step: float = 0.01, limit: float = 600) -> T:
    """Run ``aw`` to completion, moving the manual clock ``step`` at a time (at most
    ``limit`` seconds of clock time), and letting the loop(s) act between steps."""
    task = asyncio.ensure_future(aw)
    end = clock.monotonic() + limit
    while not task.done():
        if clock.monotonic() > end:
            task.cancel()
            raise AssertionError(f"not done after {limit} s of clock time")
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.sleep(0.0005)
        clock.advance(step)
    return await task


class Timeline:
    """Wraps a sink and records the clock time of every write attempt."""

    def __init__(self, sink: Any, clock: ManualClock) -> None:
        self.sink, self.clock = sink, clock
        self.times: list[float] = []

    async def write(self, batch: list[Any]) -> None:
        self.times.append(self.clock.monotonic())
        await self.sink.write(batch)


async def test_a_throttle_pauses_writes_for_the_time_the_sink_asks(
    api: Open, clock: ManualClock
) -> None:
    """No write starts before the sink's retry-after; throttles do not use up attempts."""
    inner = ThrottlingSink(rate=100, burst=10, clock=clock)
    sink = Timeline(inner, clock)
    policy = wb.RetryPolicy(max_attempts=1)  # any counted failure would dead-letter
    async with api(sink, max_batch=10, linger=FAR, clock=clock, retry=policy) as b:
        for i in range(50):
            b.add_nowait({"n": i})
        await drive(clock, b.flush())
        s = b.stats()
    assert (s.committed, s.dead_lettered) == (50, 0)
    assert s.throttled == inner.throttles >= 1
    assert s.pauses >= 1
    assert s.write_errors == s.throttled
    # 50 records at 100/s with a burst of 10: the last batch cannot land before 0.4 s
    assert sink.times[-1] >= 0.4 - 1e-9
    # every refused write was retried no earlier than the tokens it lacked were there
    assert len(sink.times) == 5 + inner.throttles


async def test_throttled_too_long_is_dead_lettered(api: Open, clock: ManualClock) -> None:
    """Past ``max_throttle_wait`` the batch is dead-lettered, not retried forever."""
    sink = FlakySink(
        fail_first=10**9, error=lambda: wb.RetriableSinkError("slow down", retry_after=5)
    )
    policy = wb.RetryPolicy(max_attempts=1, max_throttle_wait=12)
    async with api(sink, max_batch=4, linger=FAR, clock=clock, retry=policy) as b:
        for i in range(4):
            b.add_nowait({"n": i})
        await drive(clock, b.flush(), step=0.5)
        s = b.stats()
    assert (s.dead_lettered, s.committed, s.throttled) == (4, 0, 3)
    assert sink.attempts == 3  # waits of 5 + 5 + 5 s exceed 12 s
    assert clock.monotonic() >= 10


async def test_a_failing_sink_is_probed_one_write_per_backoff_step(
    api: Open, clock: ManualClock
) -> None:
    """Four batches in flight when the sink goes down: then one attempt per step, no storm."""
    inner = FlakySink(fail_first=12)
    sink = Timeline(inner, clock)
    policy = wb.RetryPolicy(base=1, cap=1, max_attempts=100)
    async with api(sink, max_batch=10, linger=FAR, max_in_flight=4, clock=clock, retry=policy) as b:
        for i in range(40):
            b.add_nowait({"n": i})
        await drive(clock, b.flush(), step=0.05)
        s = b.stats()
    assert s.committed == 40
    assert s.pauses == 1
    assert s.sink_state == "healthy"
    times = sink.times
    # the first write fails and the other three batches wait: 12 failures and the first
    # success one per 1 s backoff step, then the three waiting batches at once
    gaps = [b_ - a for a, b_ in itertools.pairwise(times[:13])]
    assert all(g >= 1 - 1e-9 for g in gaps), gaps
    assert times[13:] == [times[12]] * 3
    assert len(times) == 16  # 12 failures + 4 successes: nothing more
    assert inner.failures == 12


async def test_paused_and_resumed_are_events(clock: ManualClock) -> None:
    """Entering and leaving a bad state each publish one event, not one per failure."""
    sink = FlakySink(fail_first=5)
    policy = wb.RetryPolicy(base=1, cap=1, max_attempts=10)
    async with wb.AsyncBatcher(sink, max_batch=5, linger=FAR, clock=clock, retry=policy) as b:
        sub = b.events(since=0)
        for i in range(5):
            b.add_nowait({"n": i})
        await drive(clock, b.flush(), step=0.1)
    kinds = [type(e).__name__ async for e in sub]
    assert kinds.count("Paused") == 1
    assert kinds.count("Resumed") == 1
    assert kinds.count("BatchFailed") == 5
    assert kinds.index("Paused") < kinds.index("Resumed") < kinds.index("BatchCommitted")


async def test_timeouts_are_counted_and_retried(api: Open) -> None:
    """A write that never answers times out, counts in ``timeouts``, and is retried."""
    sink = SlowSink(math.inf)
    policy = wb.RetryPolicy(base=0.01, cap=0.01, max_attempts=2)
    async with api(sink, max_batch=3, linger=FAR, write_timeout=0.05, retry=policy) as b:
        for i in range(3):
            b.add_nowait({"n": i})
        await b.flush(timeout=5)
        s = b.stats()
    assert (s.timeouts, s.write_errors, s.retried, s.dead_lettered) == (2, 2, 1, 3)
    assert sink.started == 2


async def test_a_long_outage_logs_a_few_lines_not_one_per_failure(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """100 failures over 100 s: one line on failing, one per 30 s with a count, one on
    recovery."""
    caplog.set_level(logging.INFO, logger="writebehind")
    sink = FlakySink(fail_first=100)
    policy = wb.RetryPolicy(base=1, cap=1, max_attempts=1000)
    async with wb.AsyncBatcher(sink, max_batch=5, linger=FAR, clock=clock, retry=policy) as b:
        for i in range(5):
            b.add_nowait({"n": i})
        await drive(clock, b.flush(), step=0.25, limit=200)
        assert b.stats().write_errors == 100
    lines = [r.getMessage() for r in caplog.records if r.name == "writebehind"]
    assert 4 <= len(lines) <= 6, lines  # failing + ~3 summaries + recovered
    assert "more like this" in lines[1]
    assert "writing again" in lines[-1]


def test_log_limiter_holds_repeats_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    """One line per key per interval; the next line says how many were held back."""
    caplog.set_level(logging.INFO, logger="writebehind")
    clock = ManualClock()
    limit = LogGate(clock, interval=10)
    assert limit("a", logging.WARNING, "first %d", 1)
    assert not limit("a", logging.WARNING, "second")
    assert limit("b", logging.WARNING, "other key")
    clock.advance(10)
    assert limit("a", logging.WARNING, "third")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["first 1", "other key", "third (1 more like this in the last 10 s)"]


def test_aimd_halves_on_congestion_and_grows_back_by_one_per_round() -> None:
    """Multiplicative decrease (once per episode, never below 1), additive increase."""
    c = AdaptiveConcurrency(8, latency_target=1.0)
    assert c.current == 8
    assert c.congested(began=0.0, now=1.0)
    assert c.current == 4
    assert not c.congested(began=0.5, now=1.1)  # began before the decrease: same episode
    assert c.current == 4
    assert c.congested(began=1.2, now=2.0)
    assert c.current == 2
    c.succeeded(began=2.0, now=2.1)  # fast: +1/limit
    c.succeeded(began=2.1, now=2.2)
    assert c.current == 2  # 2 + 1/2 + 1/2.5 = 2.9: about one more per `limit` successes
    c.succeeded(began=2.2, now=2.3)
    assert c.current == 3
    c.succeeded(began=3.0, now=4.5)  # slower than the target: a decrease
    assert c.current == 1
    for _ in range(4):
        c.congested(began=10.0 + _, now=11.0 + _)
    assert c.current == 1
    for i in range(200):
        c.succeeded(began=20.0 + i, now=20.1 + i)
    assert c.current == 8  # back to the ceiling, never above it


async def test_throttling_halves_the_concurrency(clock: ManualClock) -> None:
    """Throttled writes shrink ``stats().concurrency`` below ``max_in_flight``."""
    sink = ThrottlingSink(rate=50, burst=10, clock=clock)
    async with wb.AsyncBatcher(
        sink, max_batch=10, max_pending=100, linger=FAR, max_in_flight=8, clock=clock
    ) as b:
        for i in range(80):
            b.add_nowait({"n": i})
        await drive(clock, b.flush(), step=0.05)
        s = b.stats()
    assert s.committed == 80
    assert s.throttled >= 1
    assert s.concurrency < 8


@pytest.mark.parametrize("max_in_flight", [1, 4])
async def test_the_achieved_rate_settles_at_the_sinks_limit(max_in_flight: int) -> None:
    """Producers offer twice what the sink takes: the committed rate settles within 10% of
    the sink's limit, and nothing is lost (3 s of clock time, auto-advanced: no waiting)."""
    clock = ManualClock(autojump=0)
    rate = 2000.0
    sink = ThrottlingSink(rate=rate, burst=200, clock=clock)
    async with wb.AsyncBatcher(
        sink, max_batch=100, linger=0.02, max_pending=1000, max_in_flight=max_in_flight,
        clock=clock,
    ) as b:  # fmt: skip
        stop = asyncio.Event()

        async def produce() -> None:
            n = 0
            while not stop.is_set():
                for _ in range(40):
                    await b.add({"n": n})
                    n += 1
                await clock.sleep(0.01)  # at most 4,000/s offered

        producer = asyncio.create_task(produce())
        await clock.sleep(0.5)  # settle
        c0, t0 = b.stats().committed, clock.monotonic()
        await clock.sleep(2.5)
        c1, t1 = b.stats().committed, clock.monotonic()
        stop.set()
        await producer
        await b.flush(timeout=10)
        s = b.stats()
    achieved = (c1 - c0) / (t1 - t0)
    assert abs(achieved - rate) / rate <= 0.10, achieved
    assert s.committed == s.accepted
    assert (s.dead_lettered, s.dropped, s.lost) == (0, 0, 0)
    assert s.throttled > 0


async def test_instruments_see_every_attempt_with_its_outcome(clock: ManualClock) -> None:
    """An instrument's context spans each write; outcome, error and size are filled in."""
    seen: list[tuple[str, int, int, str | None]] = []

    class Recorder:
        def write(self, attempt: wb.WriteAttempt) -> Any:
            from contextlib import contextmanager

            @contextmanager
            def cm() -> Any:
                yield
                err = type(attempt.error).__name__ if attempt.error else None
                seen.append((attempt.outcome, attempt.size, attempt.attempt, err))

            return cm()

    sink = FlakySink(fail_first=1, poison=lambda r: r["n"] == 1)
    policy = wb.RetryPolicy(base=1, cap=1)
    async with wb.AsyncBatcher(
        sink, max_batch=2, linger=FAR, clock=clock, retry=policy, instruments=[Recorder()]
    ) as b:
        b.add_nowait({"n": 0})
        b.add_nowait({"n": 1})
        await drive(clock, b.flush(), step=0.25)
    assert seen == [
        ("retry", 2, 1, "RetriableSinkError"),
        ("split", 2, 2, "PermanentSinkError"),
        ("committed", 1, 1, None),
        ("dead_lettered", 1, 1, "PermanentSinkError"),
    ]


async def test_bad_instrument_and_dead_letter_are_config_errors() -> None:
    """An object without write(), or a dead_letter of the wrong kind, is refused at once."""
    with pytest.raises(wb.ConfigError, match="instrument"):
        wb.AsyncBatcher(MemorySink(), instruments=[object()])  # type: ignore[list-item]
    with pytest.raises(wb.ConfigError, match="dead_letter"):
        wb.AsyncBatcher(MemorySink(), dead_letter=42)  # type: ignore[arg-type]
    with pytest.raises(wb.ConfigError, match="latency_target"):
        wb.AsyncBatcher(MemorySink(), latency_target=0)


async def test_a_failing_dead_letter_store_is_counted(api: Open, clock: ManualClock) -> None:
    """If the store cannot keep the records they still count as dead-lettered, and in
    ``dead_letter_errors``."""

    class Broken:
        async def put(self, entries: list[wb.DeadLetterEntry]) -> None:
            raise OSError("disk full")

    sink = FlakySink(poison=lambda r: True)
    async with api(sink, max_batch=2, linger=FAR, clock=clock, dead_letter=Broken()) as b:
        b.add_nowait({"n": 0})
        await b.flush(timeout=5)
        await settle(lambda: b.stats().dead_lettered == 1)
        s = b.stats()
    assert (s.dead_lettered, s.dead_letter_errors) == (1, 1)
    assert_conserved(s)


async def test_a_classify_that_raises_falls_back_to_the_default(
    api: Open, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's ``classify`` that raises is logged and ignored: nothing is lost."""

    def classify(exc: BaseException) -> bool | None:
        raise KeyError("oops")

    sink = FlakySink(fail_first=1)
    policy = wb.RetryPolicy(base=1, cap=1, classify=classify)
    async with api(sink, max_batch=2, linger=FAR, clock=clock, retry=policy) as b:
        b.add_nowait({"n": 0})
        b.add_nowait({"n": 1})
        await drive(clock, b.flush(), step=0.25)
        s = b.stats()
    assert (s.committed, s.retried, s.lost) == (2, 1, 0)
    assert "classify raised" in caplog.text


@pytest.mark.parametrize("hint", ["soon", float("nan"), -3, float("inf"), "2"])
async def test_a_bad_or_huge_retry_after_cannot_stall_the_batcher(
    clock: ManualClock, hint: object
) -> None:
    """A retry-after that is not a finite positive number is no hint (ordinary backoff);
    a usable one is capped at ``max_throttle_wait`` ("inf" would otherwise pause for ever)."""
    sink = FlakySink(fail_first=1, error=lambda: wb.RetriableSinkError("busy", retry_after=hint))  # type: ignore[arg-type]
    policy = wb.RetryPolicy(base=1, cap=1, max_throttle_wait=5)
    async with wb.AsyncBatcher(sink, max_batch=1, linger=FAR, clock=clock, retry=policy) as b:
        b.add_nowait({"n": 0})
        await drive(clock, b.flush(), step=0.25, limit=30)
        s = b.stats()
    assert (s.committed, s.lost, s.dead_lettered) == (1, 0, 0)
    assert clock.monotonic() <= 5.5  # never the hour (or eternity) a bad hint asked for


async def test_a_huge_retry_after_is_capped_at_max_throttle_wait(clock: ManualClock) -> None:
    """``retry_after=3600`` with ``max_throttle_wait=1``: the pause lasts 1 s, not an hour."""
    sink = FlakySink(fail_first=1, error=lambda: wb.RetriableSinkError("later", retry_after=3600))
    policy = wb.RetryPolicy(max_throttle_wait=1)
    async with wb.AsyncBatcher(sink, max_batch=1, linger=FAR, clock=clock, retry=policy) as b:
        b.add_nowait({"n": 0})
        await drive(clock, b.flush(), step=0.25, limit=30)
        s = b.stats()
    assert (s.committed, s.throttled) == (1, 1)
    assert clock.monotonic() <= 2


async def test_an_unexpected_error_in_delivery_dead_letters_instead_of_losing(
    api: Open, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If delivering a batch raises (a bug), its records are dead-lettered and counted,
    never left in flight for ever."""
    import writebehind._delivery as dispatch

    def broken(exc: BaseException, policy: object = None) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(dispatch, "is_retriable", broken)
    letters: list[wb.DeadLetterEntry] = []
    sink = FlakySink(fail_first=1)
    async with api(sink, max_batch=2, linger=FAR, clock=clock, dead_letter=letters.extend) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(2)]
        await b.flush(timeout=5)
        s = b.stats()
    assert (s.dead_lettered, s.in_flight, s.lost) == (2, 0, 0)
    assert [r.outcome for r in receipts] == [wb.Outcome.DEAD_LETTERED] * 2
    assert [e.error for e in letters] == ["RuntimeError", "RuntimeError"]


async def test_failure_log_lines_scrub_secrets(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A password in a sink's error never reaches the log."""
    caplog.set_level(logging.INFO, logger="writebehind")
    sink = FlakySink(
        fail_first=1,
        error=lambda: wb.RetriableSinkError("connect redis://:hunter2@cache:6379/0 refused"),
    )
    async with wb.AsyncBatcher(sink, max_batch=1, linger=FAR, clock=clock) as b:
        b.add_nowait({"n": 0})
        await drive(clock, b.flush(), step=0.25)
    assert "refused" in caplog.text
    assert "hunter2" not in caplog.text
