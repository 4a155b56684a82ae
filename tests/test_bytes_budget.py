"""max_pending_bytes and max_batch_bytes: the bounds in bytes, through both APIs."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import FlakySink, GatedSink, ManualClock, MemorySink

from .conftest import Open, assert_conserved, idle, settle

FAR = 3600.0


def size(record: dict[str, Any]) -> int:
    return len(record["body"])


def rec(i: int, n: int) -> dict[str, Any]:
    return {"id": i, "body": "x" * n}


async def test_a_full_byte_budget_refuses_under_raise(api: Open) -> None:
    sink = GatedSink()
    async with api(sink, key="id", max_pending_bytes=1000, size=size, when_full="raise",
                   linger=FAR) as b:  # fmt: skip
        for i in range(3):
            b.add_nowait(rec(i, 300))
        assert b.stats().bytes_held == 900
        with pytest.raises(wb.BufferFull):
            b.add_nowait(rec(3, 200))
        b.add_nowait(rec(4, 100))  # fits exactly
        assert b.stats().bytes_held == 1000
        b.add_nowait(rec(0, 100))  # its key is pending: it coalesces (and frees 200 bytes)
        assert b.stats().bytes_held == 800
        sink.open()
        await b.flush()
        assert b.stats().bytes_held == 0
    assert sorted(r["id"] for r in sink.records) == [0, 1, 2, 4]


async def test_block_waits_for_bytes_and_the_bound_holds_throughout() -> None:
    seen: list[int] = []

    class Slow(MemorySink):
        async def write(self, batch: list[Any]) -> None:
            await asyncio.sleep(0.002)
            await super().write(batch)

    sink = Slow()
    async with wb.AsyncBatcher(sink, key="id", max_pending_bytes=2000, size=size,
                               max_batch=8, linger=0) as b:  # fmt: skip
        for i in range(200):
            await b.add(rec(i, 100 + i % 7 * 50))
            seen.append(b.stats().bytes_held)
        await b.flush()
        assert b.stats().bytes_held == 0
    assert max(seen) <= 2000
    assert len(sink.records) == 200


@pytest.mark.parametrize(
    ("options", "body", "most"),
    [
        ({"max_pending_bytes": 5000, "size": size}, 250, 5000),
        # the default estimate: the bound plus about a record's slack per thread, as the
        # mean is learnt while records arrive
        ({"max_pending_bytes": 40_000}, 1000, 40_000 + 4 * 1200),
    ],
    ids=["size", "estimate"],
)
def test_threads_block_on_bytes_and_nothing_is_lost(
    options: dict[str, Any], body: int, most: int
) -> None:
    """Four threads add() under a bound in bytes: they wait for room, every snapshot
    conserves the records, the bytes held stay within the bound, and every record lands."""
    sink = MemorySink()
    peak = 0
    bad: list[wb.Stats] = []
    stop = threading.Event()
    with wb.Batcher(sink, key="id", max_batch=10, linger=0, **options) as b:

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                s = b.stats()
                peak = max(peak, s.bytes_held)
                if s.accepted != s.committed + s.pending + s.in_flight + s.coalesced:
                    bad.append(s)

        w = threading.Thread(target=watch)
        w.start()
        threads = [
            threading.Thread(
                target=lambda t=t: [b.add(rec(t * 1000 + i, body)) for i in range(100)]
            )
            for t in range(4)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        b.flush(30)
        stop.set()
        w.join()
    assert bad == []
    assert 0 < peak <= most, peak
    assert len(sink.records) == 400


async def test_a_record_larger_than_the_whole_budget_is_refused(api: Open) -> None:
    async with api(MemorySink(), key="id", max_pending_bytes=100, size=size) as b:
        with pytest.raises(wb.RecordError, match="101 bytes is larger than max_pending_bytes"):
            b.add_nowait(rec(1, 101))
        assert b.stats().accepted == 0


@pytest.mark.parametrize(
    ("bad", "says"),
    [(lambda r: -1, "must return an int >= 0"), (lambda r: 1.5, "must return an int"),
     (lambda r: 1 / 0, "size: ZeroDivisionError")],
)  # fmt: skip
async def test_a_size_function_that_misbehaves_refuses_the_record(bad: Any, says: str) -> None:
    async with wb.AsyncBatcher(MemorySink(), key="id", max_batch_bytes=10, size=bad) as b:
        with pytest.raises(wb.RecordError, match=says):
            b.add_nowait({"id": 1})
        assert b.stats().accepted == 0


async def test_max_batch_bytes_caps_batches_and_triggers_a_cut(api: Open) -> None:
    sink = MemorySink()
    async with api(sink, key="id", max_batch_bytes=1000, size=size, linger=FAR) as b:
        for i in range(4):
            b.add_nowait(rec(i, 300))  # 1,200 bytes pending: over the trigger
        await settle(lambda: len(sink.batches) >= 1)
        b.add_nowait(rec(9, 5000))  # alone larger than a batch: a batch of one
        await b.flush()
    assert all(sum(len(r["body"]) for r in batch) <= 1000 for batch in sink.batches if
               len(batch) > 1)  # fmt: skip
    assert [len(x) for x in sink.batches][:1] == [3]
    assert sorted(r["id"] for r in sink.records) == [0, 1, 2, 3, 9]


async def test_drop_oldest_drops_as_many_as_the_new_record_needs() -> None:
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="id", max_pending_bytes=1000, size=size,
                               when_full="drop_oldest", linger=FAR) as b:  # fmt: skip
        for i in range(5):
            b.add_nowait(rec(i, 200))
        b.add_nowait(rec(9, 500))  # needs 500: the three oldest make way
        s = b.stats()
        assert (s.dropped_by_reason["drop_oldest"], s.pending, s.bytes_held) == (3, 3, 900)
        sink.open()
        await b.flush()
    assert sorted(r["id"] for r in sink.records) == [3, 4, 9]


async def test_bytes_return_to_zero_after_dead_letters_expiry_and_add_many(
    clock: ManualClock,
) -> None:
    sink = FlakySink(poison=lambda r: r["id"] == 2)
    async with wb.AsyncBatcher(sink, key="id", max_pending_bytes=10_000, size=size, ttl=5.0,
                               linger=0, max_batch=2, clock=clock) as b:  # fmt: skip
        b.add_many_nowait([rec(i, 100) for i in range(6)])
        await b.flush()
        s = b.stats()
        assert (s.dead_lettered, s.bytes_held) == (1, 0)
        assert_conserved(s)


def test_the_default_estimate_sees_large_fields() -> None:
    from writebehind._bytes_budget import estimate

    small, large = estimate({"id": 1, "body": "x"}), estimate({"id": 1, "body": "x" * 10_000})
    assert large - small >= 9_999


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"max_pending_bytes": 0}, "max_pending_bytes: must be an integer >= 1"),
        ({"max_batch_bytes": 1.5}, "max_batch_bytes: must be an integer >= 1"),
        ({"size": len}, "size: measures records for max_pending_bytes or max_batch_bytes"),
        ({"size": 5, "max_batch_bytes": 5}, "size: must be a function"),
        ({"max_pending_bytes": 10, "max_batch_bytes": 11}, "max_batch_bytes: must be <="),
        ({"max_pending_bytes": 10, "spool": "s"}, "max_pending_bytes: not supported with spool"),
    ],
)
def test_bytes_config_errors(options: dict[str, Any], says: str) -> None:
    with pytest.raises(wb.ConfigError, match=says):
        wb.AsyncBatcher(MemorySink(), key="id", **options)


async def test_without_a_byte_budget_nothing_is_measured() -> None:
    async with wb.AsyncBatcher(MemorySink(), key="id", linger=FAR) as b:
        r = b.add_nowait({"id": 1})
        assert not hasattr(r, "_size")
        assert b.stats().bytes_held == 0
        await idle()


async def test_the_sampled_default_charges_about_what_the_records_hold() -> None:
    """Without size=, about one record a batch is measured (the first group at once) and
    the bounds in bytes become bounds in records at the running mean: the bytes held are an
    estimate of the total, within 20% for a steady stream, and the bound still refuses
    (raise) once the estimate reaches it."""
    from writebehind._bytes_budget import estimate

    records = [rec(i, 1000 + i % 10) for i in range(500)]
    truth = sum(estimate(r) for r in records)
    async with wb.AsyncBatcher(GatedSink(), key="id", max_pending_bytes=10**9,
                               linger=FAR) as b:  # fmt: skip
        b.add_many_nowait(records)
        assert abs(b.stats().bytes_held - truth) <= 0.2 * truth
        await b.close(timeout=0.1)
    async with wb.AsyncBatcher(GatedSink(), key="id", max_pending_bytes=truth // 2,
                               when_full="raise", linger=FAR) as b:  # fmt: skip
        with pytest.raises(wb.BufferFull) as caught:
            b.add_many_nowait(records)
        taken = len(caught.value.receipts)  # type: ignore[attr-defined]
        assert 200 <= taken <= 300
        await b.close(timeout=0.1)


async def test_the_default_estimate_caps_batches_by_max_batch_bytes(api: Open) -> None:
    """Without size=, max_batch_bytes becomes a most records per batch at the mean size:
    records of about 1,100 bytes under max_batch_bytes=11,000 are written about ten at a
    time (max_batch is 500), and bytes_held is the records held times the mean."""
    from writebehind._bytes_budget import estimate

    sink = GatedSink()
    one = estimate(rec(0, 1000))
    async with api(sink, key="id", max_batch_bytes=11_000, linger=FAR) as b:
        b.add_nowait(rec(0, 1000))  # wakes the flusher: measured
        for i in range(1, 40):
            b.add_nowait(rec(i, 1000))
        assert b.stats().bytes_held == 40 * one
        sink.open()
        await b.flush()
        assert b.stats().bytes_held == 0
    sizes = [len(batch) for batch in sink.batches]
    assert sum(sizes) == 40
    assert max(sizes) <= 11_000 // one, sizes


async def test_a_full_estimate_names_max_pending_bytes() -> None:
    from writebehind._bytes_budget import estimate

    async with wb.AsyncBatcher(GatedSink(), key="id", max_pending_bytes=5_000,
                               when_full="raise", linger=FAR) as b:  # fmt: skip
        b.add_nowait(rec(0, 1000))  # measured as it wakes the flusher
        room = 5_000 // estimate(rec(0, 1000))
        for i in range(1, room):
            b.add_nowait(rec(i, 1000))
        with pytest.raises(wb.BufferFull, match=r"max_pending_bytes=5000, at about \d+ bytes"):
            b.add_nowait(rec(9, 1000))
        assert b.stats().pending == room
        await b.close(timeout=0.1)


async def test_a_record_whose_size_cannot_be_taken_is_still_taken() -> None:
    """The estimate measures a record after taking it: one whose __sizeof__ raises keeps
    the mean as it was (and is written)."""

    class Odd(dict[str, Any]):
        def __sizeof__(self) -> int:
            raise RuntimeError("no size")

    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", max_pending_bytes=10**6) as b:
        b.add_nowait(Odd(id=1, body="y"))  # the first: measured as it wakes the flusher
        await b.flush()
        b.add_nowait(rec(2, 10))
    async with wb.AsyncBatcher(sink, key="id", max_pending_bytes=10**6) as b:
        b.add_many_nowait([Odd(id=3, body="z")])  # the first group: measured before
    assert sorted(r["id"] for r in sink.records) == [1, 2, 3]
