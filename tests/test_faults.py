"""The promise under faults (issue 9): whatever a sink, a hook or a store raises, every
receipt resolves, the counters account for every record, and every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import FlakySink, GatedSink, MemorySink

from .conftest import Open, assert_conserved

FAR = 3600.0


class InnerTaskSink(MemorySink):
    """Awaits an inner task that someone else cancels, on the first ``times`` writes."""

    def __init__(self, times: int = 1) -> None:
        super().__init__()
        self.left = times

    async def write(self, batch: list[Any]) -> None:
        if self.left > 0:
            self.left -= 1
            inner = asyncio.ensure_future(asyncio.sleep(10))
            asyncio.get_running_loop().call_soon(inner.cancel)
            await inner  # raises CancelledError although nobody cancelled the writer
        await super().write(batch)


@pytest.mark.parametrize("times", [1, 100])
async def test_a_write_raising_cancelled_error_settles_every_receipt(api: Open, times: int) -> None:
    """A CancelledError that is not the batcher's own is a failed write: retried, then
    dead-lettered; nothing stays in flight and every receipt resolves (it hung before)."""
    letters: list[wb.DeadLetterEntry] = []
    sink = InnerTaskSink(times)
    policy = wb.RetryPolicy(base=0.001, cap=0.001, max_attempts=3)
    async with api(sink, max_batch=10, linger=FAR, retry=policy, dead_letter=letters.extend) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(10)]
        await b.flush(timeout=5)
        outcomes = {await b.outcome(r, timeout=5) for r in receipts}
    expected = wb.Outcome.COMMITTED if times == 1 else wb.Outcome.DEAD_LETTERED
    assert outcomes == {expected}
    s = b.stats()
    assert (s.in_flight, s.pending, s.lost) == (0, 0, 0)
    assert len(letters) == (0 if times == 1 else 10)


def test_sync_sink_raising_system_exit_settles_and_close_returns() -> None:
    """SystemExit from the sink on the loop thread: the batch is dead-lettered, the loop
    thread carries on, and close() returns (it never returned before)."""
    letters: list[wb.DeadLetterEntry] = []
    sink = FlakySink(fail_first=1, error=lambda: SystemExit(3))
    b = wb.Batcher(sink, max_batch=5, linger=FAR, dead_letter=letters.extend)
    b.start()
    receipts = [b.add_nowait({"n": i}) for i in range(5)]
    assert {r.result(timeout=5) for r in receipts} == {wb.Outcome.DEAD_LETTERED}
    after = b.add_nowait({"n": 99})
    started = time.monotonic()
    report = b.close(timeout=2)
    assert time.monotonic() - started < 3
    assert after.outcome is wb.Outcome.COMMITTED
    assert report.lost == 0
    assert len(letters) == 5
    assert letters[0].error == "SystemExit"


class Boom(BaseException):
    """A BaseException that is neither a cancellation nor a request to stop."""


async def test_a_dead_letter_callable_raising_base_exceptions_still_settles(api: Open) -> None:
    """A dead-letter callable that raises a BaseException: the records still resolve
    DEAD_LETTERED and are counted as dead_letter_errors."""

    async def store(entries: list[wb.DeadLetterEntry]) -> None:
        raise Boom("the store fell over")

    sink = FlakySink(poison=lambda r: True)
    async with api(sink, max_batch=4, linger=FAR, dead_letter=store) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(4)]
        await b.flush(timeout=5)
        assert {await b.outcome(r) for r in receipts} == {wb.Outcome.DEAD_LETTERED}
        s = b.stats()
        assert (s.dead_lettered, s.dead_letter_errors, s.in_flight) == (4, 4, 0)


class RaisingInstrument:
    @contextlib.contextmanager
    def write(self, attempt: wb.WriteAttempt) -> Iterator[None]:
        raise Boom("instrument")
        yield  # pragma: no cover


async def test_an_instrument_raising_a_base_exception_does_not_stop_the_write(api: Open) -> None:
    """An instrument that raises a BaseException is logged and skipped; the batch commits."""
    sink = MemorySink()
    async with api(sink, max_batch=3, linger=FAR, instruments=[RaisingInstrument()]) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(3)]
        await b.flush(timeout=5)
        assert {await b.outcome(r) for r in receipts} == {wb.Outcome.COMMITTED}


@pytest.mark.parametrize("nan", [math.nan, decimal.Decimal("NaN")], ids=["float", "Decimal"])
async def test_a_nan_version_is_refused_at_add(api: Open, nan: Any) -> None:
    """A version that is not equal to itself would freeze its key: refused, not accepted."""
    async with api(MemorySink(), key="id", version="v", linger=FAR) as b:
        with pytest.raises(wb.RecordError, match="not equal to itself"):
            b.add_nowait({"id": 7, "v": nan})
        newer = b.add_nowait({"id": 7, "v": 100.0})
        await b.flush(timeout=5)
        assert await b.outcome(newer) is wb.Outcome.COMMITTED
        assert b.stats().accepted == 1


def test_a_sink_with_a_plain_def_write_is_refused() -> None:
    """write must be a coroutine function; a plain def is a ConfigError naming the fix."""

    class Plain:
        def write(self, batch: list[Any]) -> None:
            pass

    with pytest.raises(wb.ConfigError, match="CallableSink"):
        wb.AsyncBatcher(Plain())
    with pytest.raises(wb.ConfigError, match="async def"):
        wb.Batcher(Plain())


async def test_close_is_bounded_when_the_sink_and_the_store_close_hang(
    tmp_path: Path,
) -> None:
    """Every wait inside close() keeps to its deadline: the batcher's own dead-letter store
    whose close() hangs (a locked file: 4.8 s for close(timeout=1) before), and a sink whose
    close() hangs."""

    class HangingClose(MemorySink):
        async def close(self) -> None:
            await asyncio.sleep(60)

    async def hang() -> None:
        await asyncio.sleep(60)

    b = wb.AsyncBatcher(HangingClose(), linger=FAR, dead_letter=tmp_path / "dl.db")
    await b.start()
    assert b.dead_letter is not None
    b.dead_letter.close = hang  # type: ignore[attr-defined]
    b.add_nowait({"n": 1})
    started = time.monotonic()
    report = await b.close(timeout=1)
    assert time.monotonic() - started < 1.6
    assert report.lost == 0


def test_sync_close_is_bounded_when_an_async_sink_blocks_the_loop() -> None:
    """An async sink that blocks its loop (time.sleep inside async def): the sync close()
    returns within its deadline plus a few seconds, reporting what it holds as lost."""

    class Blocking(MemorySink):
        async def write(self, batch: list[Any]) -> None:
            time.sleep(8)  # noqa: ASYNC251 - the fault under test: a loop blocked by a sink

    b = wb.Batcher(Blocking(), max_batch=1, linger=FAR)
    b.start()
    b.add_nowait({"n": 1})
    time.sleep(0.2)  # the loop thread is now inside time.sleep
    started = time.monotonic()
    report = b.close(timeout=1)
    took = time.monotonic() - started
    assert took < 4.5, took
    assert report.lost == 1


def test_a_hung_sync_callable_sink_leaves_the_default_executor_alone() -> None:
    """A sync CallableSink that hangs uses the sink's own daemon thread: the loop's default
    executor stays free for the application (it filled up before)."""
    release = threading.Event()

    def hang(batch: list[Any]) -> None:
        release.wait(30)

    b = wb.Batcher(wb.CallableSink(hang), max_batch=1, linger=FAR, max_in_flight=4)
    b.start()
    try:
        for i in range(4):
            b.add_nowait({"n": i})
        time.sleep(0.2)
        workers = [t for t in threading.enumerate() if t.name.startswith("writebehind-callable")]
        assert len(workers) == 1
        assert all(t.daemon for t in workers)
        assert not [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
        report = b.close(timeout=0.5)
        assert report.lost == 4
    finally:
        release.set()


async def test_direct_writes_are_bounded_by_max_pending() -> None:
    """when_full="direct": at most max_pending records in direct flight; past that,
    add_nowait raises BufferFull (it started 49,991 writes before)."""
    sink = GatedSink()
    async with wb.AsyncBatcher(
        sink, max_batch=10, max_pending=20, when_full="direct", linger=FAR
    ) as b:
        accepted = refused = 0
        for i in range(5000):
            try:
                b.add_nowait({"n": i})
                accepted += 1
            except wb.BufferFull:
                refused += 1
        await asyncio.sleep(0.05)
        s = b.stats()
        assert accepted == 40  # 20 held + 20 in direct flight
        assert refused == 4960
        assert s.in_flight <= 20 + 10
        sink.open()
        await b.flush(timeout=5)
    assert_conserved(b.stats())


def test_two_threads_closing_a_batcher_get_the_same_report() -> None:
    """close() is idempotent and thread-safe (half the runs raised before)."""
    for _ in range(20):
        b = wb.Batcher(MemorySink(), linger=FAR)
        b.start()
        for i in range(10):
            b.add_nowait({"n": i})
        reports: list[wb.CloseReport] = []
        errors: list[BaseException] = []

        def close(
            b: wb.Batcher = b,
            reports: list[wb.CloseReport] = reports,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                reports.append(b.close())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=close) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors
        assert len(reports) == 2
        assert reports[0] is reports[1]
        assert reports[0].stats.committed == 10


async def test_an_unhashable_key_is_a_record_error(api: Open) -> None:
    """A key that cannot be hashed is refused with RecordError (was a bare TypeError)."""
    async with api(MemorySink(), key="id", linger=FAR) as b:
        with pytest.raises(wb.RecordError, match="cannot be hashed"):
            b.add_nowait({"id": ["a", "list"]})
        assert b.stats().accepted == 0


async def test_a_failing_version_function_is_named_as_the_version(api: Open) -> None:
    """A version callable that raises is reported as the version's, not the key's."""

    def version(record: Any) -> Any:
        raise LookupError("no clock")

    async with api(MemorySink(), key="id", version=version, linger=FAR) as b:
        with pytest.raises(wb.RecordError, match=r"^version function failed"):
            b.add_nowait({"id": 1})


def test_flush_after_close_returns() -> None:
    """Batcher.flush() after close returns at once (it raised 'Event loop is closed')."""
    b = wb.Batcher(MemorySink(), linger=FAR)
    b.start()
    b.add_nowait({"n": 1})
    b.close()
    b.flush(timeout=1)


async def test_drop_oldest_receipts_agree_with_the_counters(api: Open) -> None:
    """A record superseded by one that drop_oldest then drops is counted coalesced; its
    receipt says what happened to its data: DROPPED, its successor's outcome (DESIGN.md
    section 6); the dropped one says DROPPED."""
    sink = GatedSink()
    async with api(
        sink, key="id", max_batch=2, max_pending=2, when_full="drop_oldest", linger=FAR
    ) as b:
        b.batcher.pause(1.0)  # no cut meanwhile: under the sync API the flusher would cut a, b
        first = b.add_nowait({"id": "a", "v": 1})
        second = b.add_nowait({"id": "a", "v": 2})  # supersedes first
        b.add_nowait({"id": "b", "v": 1})
        b.add_nowait({"id": "c", "v": 1})  # full: drops "a" (second)
        s = b.stats()
        assert (s.coalesced, s.dropped) == (1, 1)
        assert second.outcome is wb.Outcome.DROPPED
        assert first.outcome is wb.Outcome.DROPPED
        sink.open()


async def test_a_none_key_or_version_is_refused_at_add(api: Open) -> None:
    """A None version would be newest in the buffer and oldest in the sink (a newer record
    was lost); a None key would write rows with a NULL key: both refused at add()."""
    async with api(MemorySink(), key="id", version="v", linger=FAR) as b:
        with pytest.raises(wb.RecordError, match="version is None"):
            b.add_nowait({"id": 1, "v": None})
        with pytest.raises(wb.RecordError, match="key is None"):
            b.add_nowait({"id": None, "v": 1})
        assert b.stats().accepted == 0


def test_a_sync_callable_slower_than_write_timeout_is_reported_as_what_it_did() -> None:
    """A sync function slower than write_timeout: the sink waits for it and reports what it
    did (all 10 said DEAD_LETTERED while each was written 3 times)."""
    written: list[Any] = []

    def slow(batch: list[Any]) -> None:
        time.sleep(0.3)
        written.extend(batch)

    with wb.Batcher(wb.CallableSink(slow), max_batch=10, linger=FAR, write_timeout=0.1) as b:
        receipts = [b.add_nowait({"n": i}) for i in range(10)]
        b.flush(timeout=10)
        assert {r.result(timeout=5) for r in receipts} == {wb.Outcome.COMMITTED}
    assert len(written) == 10


async def test_close_inside_a_sink_is_a_clear_error() -> None:
    """close() awaited inside the batcher's own write raises at once instead of waiting for
    itself until the deadline (the batch was then LOST)."""
    errors: list[BaseException] = []

    class Closer(MemorySink):
        async def write(self, batch: list[Any]) -> None:
            try:
                await b.close()
            except wb.WriteBehindError as exc:
                errors.append(exc)
            await super().write(batch)

    sink = Closer()
    b = wb.AsyncBatcher(sink, linger=FAR, close_timeout=3)
    await b.start()
    r = b.add_nowait({"n": 1})
    await b.flush(timeout=2)
    assert r.outcome is wb.Outcome.COMMITTED
    assert "create_task" in str(errors[0])
    await b.close()


def test_an_infinite_close_timeout_is_refused() -> None:
    """close_timeout=inf broke the exit hook (OverflowError, 0 of 100 written)."""
    with pytest.raises(wb.ConfigError, match="close_timeout"):
        wb.AsyncBatcher(MemorySink(), close_timeout=math.inf)


async def test_a_slow_sync_dead_letter_callable_does_not_stall_the_loop() -> None:
    """A sync dead-letter function runs on a thread: the loop keeps turning meanwhile."""
    ticks = 0

    def slow_store(entries: list[wb.DeadLetterEntry]) -> None:
        time.sleep(0.5)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    sink = FlakySink(poison=lambda r: True)
    async with wb.AsyncBatcher(sink, linger=FAR, dead_letter=slow_store) as b:
        b.add_nowait({"n": 1})
        await b.flush(timeout=5)
    t.cancel()
    assert ticks >= 20  # about 50 in 0.5 s; 0 while the store blocked the loop
