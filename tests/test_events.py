"""The indexed event stream: order, ranges, lagging readers, many readers, both APIs."""

from __future__ import annotations

import asyncio

import pytest

import writebehind as wb
from writebehind._events import EventBuffer
from writebehind.testing import FlakySink, GatedSink, ManualClock, MemorySink

FAR = 3600.0


async def collect(sub: wb.Subscription) -> list[wb.Event]:
    return [e async for e in sub]


async def test_a_reader_that_keeps_up_sees_every_index_in_order() -> None:
    """Indices rise by one with no gaps, and the commits add up to stats().committed."""
    async with wb.AsyncBatcher(MemorySink(), max_batch=10, linger=FAR) as b:
        reader = asyncio.create_task(collect(b.events(since=0)))
        for i in range(205):
            await b.add({"n": i})
    events = await reader
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[-1], wb.Closed)
    assert events[-1].report.stats.committed == 205
    commits = [e for e in events if isinstance(e, wb.BatchCommitted)]
    assert sum(e.size for e in commits) == 205
    assert {e.reason for e in commits} == {"size", "close"}
    assert all(e.batcher == "default" and e.duration >= 0 for e in commits)


def publish(buffer: EventBuffer, n: int) -> None:
    for _ in range(n):
        buffer.publish(wb.RecordsDropped, reason="drop_newest", count=1)


async def test_since_before_within_and_after_the_range() -> None:
    """since before the oldest held starts at the oldest; within, at since; beyond the
    newest, at the next event published; None, at the next event."""
    buffer = EventBuffer(8, "b")
    publish(buffer, 20)  # holds 13..20
    assert buffer.subscribe(since=0).started_at == 13
    assert buffer.subscribe(since=15).started_at == 15
    assert buffer.subscribe(since=20).started_at == 20
    assert buffer.subscribe(since=500).started_at == 21
    assert buffer.subscribe().started_at == 21
    sub = buffer.subscribe(since=15)
    assert [e.index for e in await sub.next_chunk()] == [15, 16, 17, 18, 19, 20]


async def test_a_lagging_reader_is_told_where_to_resume() -> None:
    """A reader whose next event was dropped gets SubscriberLagged with the oldest index
    held, and resumes from there; the writer never waited."""
    buffer = EventBuffer(4, "b")
    publish(buffer, 2)
    sub = buffer.subscribe(since=1)
    assert (await sub.__anext__()).index == 1
    sub._ready.clear()  # read one event only, then stall
    publish(buffer, 10)  # holds 9..12; the reader wants 3
    with pytest.raises(wb.SubscriberLagged) as info:
        await sub.__anext__()
    assert (info.value.missed, info.value.resume_from) == (3, 9)
    resumed = buffer.subscribe(since=info.value.resume_from)
    assert [e.index for e in await resumed.next_chunk()] == [9, 10, 11, 12]


async def test_a_hundred_readers_see_the_same_sequence() -> None:
    """100 concurrent readers all see the same events in the same order."""
    async with wb.AsyncBatcher(MemorySink(), max_batch=7, linger=FAR) as b:
        readers = [asyncio.create_task(collect(b.events(since=1))) for _ in range(100)]
        for i in range(300):
            await b.add({"n": i})
    seen = await asyncio.gather(*readers)
    first = [(e.index, type(e).__name__) for e in seen[0]]
    assert len(first) > 40
    assert all([(e.index, type(e).__name__) for e in s] == first for s in seen)


async def test_failures_retries_and_dead_letters_are_events() -> None:
    """A failed write, its retry and a dead-lettered record each publish a typed event."""
    clock = ManualClock()
    sink = FlakySink(fail_first=1, poison=lambda r: r["n"] == 3)
    policy = wb.RetryPolicy(base=1, cap=1)
    async with wb.AsyncBatcher(sink, max_batch=4, linger=FAR, clock=clock, retry=policy) as b:
        sub = b.events(since=0)
        for i in range(4):
            b.add_nowait({"n": i})
        while clock.sleepers == 0:  # noqa: ASYNC110 - the retry sleeps on the manual clock
            await asyncio.sleep(0.001)
        clock.advance(1)
        await b.flush()
    kinds = [type(e).__name__ for e in await collect(sub)]
    assert kinds[:3] == ["BatchFailed", "Paused", "RetryScheduled"]
    assert kinds.index("Resumed") > kinds.index("RetryScheduled")
    assert "RecordsDeadLettered" in kinds
    assert kinds[-1] == "Closed"
    assert b.stats().dead_lettered == 1


async def test_drops_and_a_full_buffer_are_events() -> None:
    """Records dropped by a policy are published as RecordsDropped with their count."""
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, max_batch=2, max_pending=2, when_full="drop_newest") as b:
        sub = b.events(since=0)
        for i in range(7):
            b.add_nowait({"n": i})
        sink.open()
    events = await collect(sub)
    dropped = [e for e in events if isinstance(e, wb.RecordsDropped)]
    assert sum(e.count for e in dropped) == 5 == b.stats().dropped
    assert any(isinstance(e, wb.BufferFilled) for e in events)


def test_sync_events_iterator_ends_after_closed() -> None:
    """Batcher.events() is a blocking iterator ending with the Closed event."""
    with wb.Batcher(MemorySink(), max_batch=5, linger=0.01) as b:
        for i in range(12):
            b.add({"n": i})
        b.flush()
        events = b.events(since=0)
        first = next(events)
        assert isinstance(first, wb.BatchCommitted)
    rest = list(events)
    assert isinstance(rest[-1], wb.Closed)
    assert sum(e.size for e in [first, *rest] if isinstance(e, wb.BatchCommitted)) == 12


def test_event_buffer_size_is_validated() -> None:
    """event_buffer must be a positive integer."""
    with pytest.raises(wb.ConfigError, match="event_buffer"):
        wb.AsyncBatcher(MemorySink(), event_buffer=0)


def test_a_second_event_loop_gets_clear_errors_not_asyncios_or_a_hang() -> None:
    """A batcher started on one loop and used from another: flush(), close(), awaiting a
    receipt and iterating events() each raise WriteBehindError saying what to do (events()
    waited for ever before: its wake-up was set from the batcher's thread on a future of the
    other loop); add_nowait() and a non-waiting add() work from anywhere."""
    import threading

    b = wb.AsyncBatcher(MemorySink(), linger=3600)
    first = asyncio.new_event_loop()
    first.run_until_complete(b.start())
    runner = threading.Thread(target=first.run_forever, daemon=True)
    runner.start()

    async def elsewhere() -> list[str]:
        errors = []
        r = await b.add({"n": 1})
        for what in (b.flush(), r.wait(), anext(b.events())):
            with pytest.raises(wb.WriteBehindError) as caught:
                async with asyncio.timeout(5):
                    await what
            errors.append(str(caught.value))
        return errors

    try:
        errors = asyncio.run(elsewhere())
        assert "another event loop" in errors[0]
        assert "receipt.result(timeout)" in errors[1]
        assert "another event loop" in errors[2]
        assert "sync Batcher" in errors[2]
        report = asyncio.run_coroutine_threadsafe(b.close(), first).result(10)
        assert report.lost == 0
        assert report.stats.committed == 1
    finally:
        first.call_soon_threadsafe(first.stop)
        runner.join(5)
        first.close()
