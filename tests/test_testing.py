"""The fakes users get in writebehind.testing: the auto-advancing ManualClock."""

from __future__ import annotations

import asyncio
import time

import pytest

import writebehind as wb
from writebehind.testing import FlakySink, ManualClock, MemorySink


async def test_autojump_sleeps_jump_to_the_deadline_at_once() -> None:
    """A sleep of 100 clock seconds returns at once, with the clock at exactly 100."""
    clock = ManualClock(autojump=0)
    started = time.monotonic()
    await asyncio.wait_for(clock.sleep(100), timeout=2)
    assert clock.monotonic() == 100
    assert time.monotonic() - started < 1


async def test_autojump_fires_the_linger_flush_without_polling() -> None:
    """await receipt is enough: the linger deadline arrives by itself, exactly on time."""
    clock = ManualClock(autojump=0)
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, linger=5.0, clock=clock) as b:
        receipt = b.add_nowait({"n": 1})
        outcome = await asyncio.wait_for(receipt.wait(), timeout=5)
    assert outcome is wb.Outcome.COMMITTED
    assert clock.monotonic() == 5.0
    assert sink.records == [{"n": 1}]


async def test_autojump_runs_a_backoff_schedule_in_clock_time() -> None:
    """Three failures with 2 s backoff steps: committed after 6 clock seconds, at once."""
    clock = ManualClock(autojump=0)
    sink = FlakySink(fail_first=3)
    policy = wb.RetryPolicy(base=2, cap=2, max_attempts=10)
    async with wb.AsyncBatcher(sink, linger=0, clock=clock, retry=policy) as b:
        receipt = b.add_nowait({"n": 1})
        assert await asyncio.wait_for(receipt.wait(), timeout=5) is wb.Outcome.COMMITTED
        assert b.stats().write_errors == 3
    assert clock.monotonic() == pytest.approx(6.0)


def test_autojump_must_be_a_number_of_seconds() -> None:
    """A negative autojump threshold is refused."""
    with pytest.raises(ValueError, match="autojump"):
        ManualClock(autojump=-1)
