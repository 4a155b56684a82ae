"""The engine's behaviour, run through both APIs (the ``api`` fixture)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

import writebehind as wb
from writebehind.testing import GatedSink, ManualClock, MemorySink, SlowSink

from .conftest import Open, assert_conserved, idle, rows, settle

FAR = 3600.0  # a linger that never fires on its own


async def test_flush_on_size(api: Open, clock: ManualClock) -> None:
    """A batch is written as soon as max_batch records are pending, without waiting."""
    sink = MemorySink()
    async with api(sink, max_batch=10, linger=FAR, clock=clock) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(10)]
        assert await b.outcome(receipts[0]) is wb.Outcome.COMMITTED
        assert [len(x) for x in sink.batches] == [10]
        b.add_nowait({"n": 10})
        await idle()
        assert len(sink.batches) == 1  # 1 record < max_batch: it waits for linger


async def test_flush_on_linger(api: Open, clock: ManualClock) -> None:
    """Pending records are written once the oldest has waited linger seconds, not before."""
    sink = MemorySink()
    async with api(sink, max_batch=100, linger=2.0, clock=clock) as b:
        receipt = b.add_nowait({"n": 1})
        b.add_nowait({"n": 2})
        await settle(lambda: clock.sleepers == 1)
        clock.advance(1.9)
        await idle()
        assert sink.batches == []
        clock.advance(0.1)
        assert await b.outcome(receipt) is wb.Outcome.COMMITTED
        assert sink.batches == [[{"n": 1}, {"n": 2}]]


async def test_newest_version_wins(api: Open, clock: ManualClock) -> None:
    """Of records with one key, the greatest version is written and the others coalesce."""
    sink = MemorySink()
    async with api(sink, key="id", version="v", linger=FAR, clock=clock) as b:
        r1 = b.add_nowait({"id": "a", "v": 1})
        r3 = b.add_nowait({"id": "a", "v": 3})
        r2 = b.add_nowait({"id": "a", "v": 2})  # older than what is pending: loses at once
        other = b.add_nowait({"id": "b", "v": 1})
        await b.flush()
        assert sink.records == [{"id": "a", "v": 3}, {"id": "b", "v": 1}]
        assert [await b.outcome(r) for r in (r1, r2, r3, other)] == [
            wb.Outcome.COALESCED,
            wb.Outcome.COALESCED,
            wb.Outcome.COMMITTED,
            wb.Outcome.COMMITTED,
        ]
        s = b.stats()
        assert (s.accepted, s.coalesced, s.committed) == (4, 2, 2)


async def test_tie_goes_to_later_add(api: Open, clock: ManualClock) -> None:
    """With equal versions the later add() wins."""
    sink = MemorySink()
    async with api(sink, key="id", version="v", linger=FAR, clock=clock) as b:
        first = b.add_nowait({"id": 1, "v": 5, "x": "first"})
        b.add_nowait({"id": 1, "v": 5, "x": "second"})
        await b.flush()
        assert sink.records == [{"id": 1, "v": 5, "x": "second"}]
        assert await b.outcome(first) is wb.Outcome.COALESCED


async def test_key_without_version_keeps_the_latest(api: Open, clock: ManualClock) -> None:
    """With a key and no version, the later add() always wins."""
    sink = MemorySink()
    async with api(sink, key=("tenant", "id"), linger=FAR, clock=clock) as b:
        b.add_nowait({"tenant": "t", "id": 1, "x": 1})
        b.add_nowait({"tenant": "t", "id": 1, "x": 2})
        b.add_nowait({"tenant": "u", "id": 1, "x": 3})
        await b.flush()
        assert sink.records == [{"tenant": "t", "id": 1, "x": 2}, {"tenant": "u", "id": 1, "x": 3}]


async def test_final_flush_on_close(api: Open, heartbeat_db: Path, clock: ManualClock) -> None:
    """close() writes everything still pending to a real SQLite file."""
    sink = wb.SQLiteSink(heartbeat_db, table="agents", key="id", version="updated_at")
    async with api(sink, key="id", version="updated_at", linger=FAR, clock=clock) as b:
        for i in range(1234):
            await b.add({"id": f"agent-{i % 300}", "name": f"n{i}", "updated_at": i})
    report = await b.close()
    assert report.lost == 0
    assert not report.timed_out
    stored = rows(heartbeat_db)
    assert len(stored) == 300
    assert stored["agent-0"] == ("n1200", 1200)
    assert report.stats.committed == 300
    assert report.stats.coalesced == 934


async def test_flush_waits_for_commit(api: Open, clock: ManualClock) -> None:
    """flush() returns only once every record accepted before it is committed."""
    sink = SlowSink(0.05)
    async with api(sink, max_batch=7, linger=FAR, clock=clock) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(30)]
        await b.flush()
        assert all(r.outcome is wb.Outcome.COMMITTED for r in receipts)
        assert sum(len(x) for x in sink.batches) == 30
        assert max(len(x) for x in sink.batches) <= 7


async def test_add_nowait_raises_buffer_full(api: Open, clock: ManualClock) -> None:
    """add_nowait() refuses a record with BufferFull when max_pending are held; it is not
    counted as accepted."""
    sink = GatedSink()
    async with api(sink, max_batch=2, max_pending=4, linger=FAR, clock=clock) as b:
        for i in range(4):
            b.add_nowait({"n": i})
        with pytest.raises(wb.BufferFull):
            b.add_nowait({"n": 4})
        assert b.stats().accepted == 4
        sink.open()


async def test_when_full_block_waits_for_room(api: Open, clock: ManualClock) -> None:
    """Under block, add() waits until a write frees room, then takes the record."""
    sink = GatedSink()
    async with api(sink, max_batch=2, max_pending=2, linger=FAR, clock=clock) as b:
        b.add_nowait({"n": 0})
        b.add_nowait({"n": 1})
        await settle(lambda: sink.waiting == 1)
        with pytest.raises(wb.BufferFull):
            await b.add({"n": 2}, timeout=0.05)
        sink.open()
        receipt = await b.add({"n": 2}, timeout=5)
        await b.flush()
        assert await b.outcome(receipt) is wb.Outcome.COMMITTED


async def test_when_full_raise(api: Open, clock: ManualClock) -> None:
    """Under raise, add() raises BufferFull at once instead of waiting."""
    sink = GatedSink()
    async with api(sink, max_batch=1, max_pending=1, when_full="raise", clock=clock) as b:
        b.add_nowait({"n": 0})
        started = time.monotonic()
        with pytest.raises(wb.BufferFull):
            await b.add({"n": 1})
        assert time.monotonic() - started < 1.0
        sink.open()


async def test_when_full_drop_newest(
    api: Open, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Under drop_newest the incoming record is accepted, counted, logged and dropped."""
    sink = GatedSink()
    async with api(sink, max_batch=2, max_pending=2, when_full="drop_newest", clock=clock) as b:
        kept = [b.add_nowait({"n": i}) for i in range(2)]
        with caplog.at_level("WARNING", logger="writebehind"):
            dropped = b.add_nowait({"n": 2})
        assert dropped.outcome is wb.Outcome.DROPPED
        assert "1 record(s) dropped" in caplog.text
        s = b.stats()
        assert (s.accepted, s.dropped, s.dropped_by_reason["drop_newest"]) == (3, 1, 1)
        assert_conserved(s)
        sink.open()
        await b.flush()
        assert [await b.outcome(r) for r in kept] == [wb.Outcome.COMMITTED] * 2


async def test_when_full_drop_oldest(api: Open, clock: ManualClock) -> None:
    """Under drop_oldest the oldest pending record makes room for the new one."""
    sink = GatedSink()
    async with api(
        sink, max_batch=1, max_pending=3, max_in_flight=1, when_full="drop_oldest", clock=clock
    ) as b:
        first = b.add_nowait({"n": 0})  # cut at once, held at the gate
        await settle(lambda: sink.waiting == 1)
        oldest = b.add_nowait({"n": 1})
        b.add_nowait({"n": 2})
        newest = b.add_nowait({"n": 3})  # full: drops n=1, the oldest pending
        assert oldest.outcome is wb.Outcome.DROPPED
        assert b.stats().dropped_by_reason["drop_oldest"] == 1
        sink.open()
        await b.flush()
        assert await b.outcome(first) is wb.Outcome.COMMITTED
        assert await b.outcome(newest) is wb.Outcome.COMMITTED
        assert sink.records == [{"n": 0}, {"n": 2}, {"n": 3}]


class _BigBatchGate(GatedSink):
    """Holds batches of more than one record at the gate; lets single records through."""

    async def write(self, batch: list[object]) -> None:
        if len(batch) == 1:
            self.batches.append(list(batch))
            return
        await super().write(batch)


async def test_when_full_direct_writes_alone(api: Open, clock: ManualClock) -> None:
    """Under direct, a record that finds the buffer full is written alone, now."""
    sink = _BigBatchGate()
    async with api(sink, max_batch=10, max_pending=10, when_full="direct", clock=clock) as b:
        for i in range(10):
            b.add_nowait({"n": i})
        await settle(lambda: sink.waiting == 1)  # the batch of 10 is held: the buffer is full
        receipt = await b.add({"n": 10})
        assert receipt.outcome is wb.Outcome.COMMITTED  # add() returned after the write
        assert sink.batches == [[{"n": 10}]]
        also = b.add_nowait({"n": 11})
        assert await b.outcome(also) is wb.Outcome.COMMITTED
        sink.open()
        await b.flush()
        assert len(sink.records) == 12


async def test_close_timeout_with_a_sink_that_never_answers(api: Open) -> None:
    """close(timeout) returns on time; what was not written is counted as lost."""
    sink = SlowSink(math.inf)
    async with api(sink, max_batch=5, linger=FAR) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(12)]
        await settle(lambda: sink.started == 1)
        started = time.monotonic()
        report = await b.close(timeout=0.5)
        elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5
    assert report.timed_out
    assert report.lost == 12
    assert report.stats.lost == 12
    assert [r.outcome for r in receipts] == [wb.Outcome.LOST] * 12


async def test_add_after_close_raises(api: Open) -> None:
    """A closed batcher refuses records with BatcherClosed; its stats stay readable."""
    async with api(MemorySink()) as b:
        b.add_nowait({"n": 1})
    with pytest.raises(wb.BatcherClosed):
        b.add_nowait({"n": 2})
    with pytest.raises(wb.BatcherClosed):
        await b.add({"n": 2})
    assert b.stats().committed == 1
    assert b.stats().closed


async def test_missing_key_field_is_a_record_error(api: Open) -> None:
    """A record without the key field is refused with a RecordError naming the field."""
    async with api(MemorySink(), key="id") as b:
        with pytest.raises(wb.RecordError, match="'id'"):
            b.add_nowait({"name": "no id"})
        assert b.stats().accepted == 0


async def test_retriable_errors_are_retried(api: Open, clock: ManualClock) -> None:
    """A retriable failure is retried with backoff until the write succeeds."""
    from writebehind.testing import FlakySink

    sink = FlakySink(fail_first=2)
    async with api(sink, max_batch=1, clock=clock, retry=wb.RetryPolicy(base=1, cap=1)) as b:
        receipt = b.add_nowait({"n": 1})
        flushing = settle(lambda: receipt.outcome is not None)
        for _ in range(2):
            await settle(lambda: clock.sleepers >= 1)
            clock.advance(1)
        await flushing
        assert receipt.outcome is wb.Outcome.COMMITTED
        assert b.stats().retried == 2
        assert sink.batches == [[{"n": 1}]]


async def test_poison_records_are_isolated(api: Open, clock: ManualClock) -> None:
    """A permanent failure splits the batch: the good records commit, the bad one is
    dead-lettered with its error."""
    from writebehind.testing import FlakySink

    letters: list[wb.DeadLetterEntry] = []
    sink = FlakySink(poison=lambda r: r["n"] == 7)
    async with api(sink, max_batch=16, linger=FAR, clock=clock, dead_letter=letters.extend) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(16)]
        await b.flush()
    assert receipts[7].outcome is wb.Outcome.DEAD_LETTERED
    assert sum(r.outcome is wb.Outcome.COMMITTED for r in receipts) == 15
    assert [e.record for e in letters] == [{"n": 7}]
    assert (letters[0].error, letters[0].batcher) == ("PermanentSinkError", "default")
    assert "injected poison" in letters[0].message
    assert "FlakySink" in letters[0].sink
    s = b.stats()
    assert (s.committed, s.dead_lettered) == (15, 1)
    # bisection: 16 -> 8 | 8, 8 -> 4 | 4, 4 -> 2 | 2, 2 -> 1 | 1: four splits, and the
    # batches that committed are the clean halves, in order (not records peeled one by one)
    assert s.splits == 4
    assert [[r["n"] for r in batch] for batch in sink.batches] == [
        [0, 1, 2, 3], [4, 5], [6], [8, 9, 10, 11, 12, 13, 14, 15],
    ]  # fmt: skip


async def test_retries_exhausted_dead_letter(api: Open, clock: ManualClock) -> None:
    """After max_attempts retriable failures the batch is dead-lettered, not retried forever."""
    from writebehind.testing import FlakySink

    sink = FlakySink(fail_first=100)
    policy = wb.RetryPolicy(base=0.5, cap=0.5, max_attempts=3)
    async with api(sink, max_batch=1, clock=clock, retry=policy) as b:
        receipt = b.add_nowait({"n": 1})
        done = settle(lambda: receipt.outcome is not None)
        for _ in range(2):
            await settle(lambda: clock.sleepers >= 1)
            clock.advance(0.5)
        await done
    assert receipt.outcome is wb.Outcome.DEAD_LETTERED
    assert sink.attempts == 3


class _SlowClose(MemorySink):
    async def close(self) -> None:
        await asyncio.sleep(0.3)


async def test_flush_during_close_waits_for_close() -> None:
    """A flush() that races close() returns when close() has finished, not never."""
    sink = _SlowClose()
    b = wb.AsyncBatcher(sink, linger=FAR)
    await b.start()
    b.add_nowait({"n": 1})
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.1)
    await b.flush(timeout=2)
    assert closing.done()
    assert (await closing).stats.committed == 1
