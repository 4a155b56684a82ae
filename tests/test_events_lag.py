"""A slow reader through the public APIs (issue 18: only the bare ``EventBuffer`` was tested).

A reader that has read and then stopped, on ``AsyncBatcher.events()`` and on the sync
``Batcher.events()``: while it sleeps the batcher goes on committing (writers never wait for
readers: a flush completes with the reader stuck), and when it reads again it gets
``SubscriberLagged`` naming the event it missed and the oldest one still held; subscribing
again from ``resume_from`` gives every held event in order, up to ``Closed``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import MemorySink

BUFFER = 8  # event_buffer: the batcher keeps the last 8 events
BATCHES = 60  # one BatchCommitted each (max_batch=1), far more than the buffer holds


async def test_a_stopped_async_reader_lags_and_the_writers_do_not_wait() -> None:
    """``AsyncBatcher.events()``: read event 1, stop; 60 flushes complete meanwhile; the
    next read raises SubscriberLagged(missed=2, resume_from=the oldest held), and
    ``events(since=resume_from)`` continues in order to ``Closed``."""
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, max_batch=1, event_buffer=BUFFER) as b:
        events = b.events()
        await b.add({"n": -1})
        first = await anext(events)  # it has read ...
        assert first.index == 1
        # ... and stops. Publishing must not wait for it: every flush completes.
        async with asyncio.timeout(30):
            for n in range(BATCHES):
                await b.add({"n": n})
                await b.flush()
        assert b.stats().committed == BATCHES + 1
        published = b._events.next_index - 1  # the buffer's own count
        assert published >= BATCHES + 1
        with pytest.raises(wb.SubscriberLagged) as info:
            await anext(events)
        lagged = info.value
        assert lagged.missed == 2  # the event after the last one read
        assert lagged.resume_from == published - BUFFER + 1  # the oldest still held
        again = b.events(since=lagged.resume_from)
        assert again.started_at == lagged.resume_from
        held = await again.next_chunk()  # before close() publishes more and drops these
    async with asyncio.timeout(30):
        rest = [*held, *[e async for e in again]]
    assert [e.index for e in rest] == list(range(lagged.resume_from, rest[-1].index + 1))
    assert isinstance(rest[-1], wb.Closed)
    assert rest[-1].report.stats.committed == BATCHES + 1
    assert len(sink.batches) == BATCHES + 1


def test_a_stopped_sync_reader_lags_and_the_writers_do_not_wait() -> None:
    """``Batcher.events()`` read from a thread that reads, then stops while the main thread
    adds and flushes 60 batches: the flushes complete, the reader gets what its last chunk
    held and then SubscriberLagged naming the next index, and a new iterator from
    ``resume_from`` runs in order to ``Closed``."""
    sink = MemorySink()
    resume = threading.Event()
    seen: list[Any] = []
    outcome: list[BaseException] = []
    reading = threading.Event()

    with wb.Batcher(sink, max_batch=1, event_buffer=BUFFER) as b:
        events = b.events(since=0)

        def reader() -> None:
            try:
                seen.append(next(events))  # it has read ...
                reading.set()
                resume.wait(60)  # ... and stops until the writers are done
                for event in events:  # what its last chunk held, then the lag
                    seen.append(event)
            except BaseException as exc:  # handed to the test's thread
                outcome.append(exc)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        b.add({"n": -1})
        assert reading.wait(30)
        for n in range(BATCHES):  # with the reader stopped, every flush still completes
            b.add({"n": n})
            b.flush(timeout=30)
        assert b.stats().committed == BATCHES + 1
        resume.set()
        thread.join(30)
        assert not thread.is_alive()
        assert len(outcome) == 1, outcome
        lagged = outcome[0]
        assert isinstance(lagged, wb.SubscriberLagged), outcome
        assert [e.index for e in seen] == list(range(1, len(seen) + 1))  # nothing skipped
        assert lagged.missed == len(seen) + 1
        assert lagged.resume_from > lagged.missed
        again = b.events(since=lagged.resume_from)
        first_again = next(again)
        assert first_again.index == lagged.resume_from
    rest = [first_again, *again]  # the batcher closed: the iterator ends after Closed
    assert [e.index for e in rest] == list(range(lagged.resume_from, rest[-1].index + 1))
    assert isinstance(rest[-1], wb.Closed)
    assert rest[-1].report.stats.committed == BATCHES + 1
