"""``when_full="spill"``: memory first, the spool for what does not fit. Records the buffer
takes are in memory only (not durable, as without a spool); the others are appended to the
spool (durable at the next group commit) and wait, in order, for room. Both APIs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import GatedSink, MemorySink

from .conftest import Open, settle

OC = wb.Outcome


def rows(sink: MemorySink) -> list[Any]:
    return [r for batch in sink.batches for r in batch]


def seq(r: wb.Receipt) -> int:
    return int(getattr(r, "_seq", 0))


def test_spill_needs_a_spool() -> None:
    with pytest.raises(wb.ConfigError, match="spool="):
        wb.AsyncBatcher(MemorySink(), key="id", when_full="spill")


async def test_memory_first_then_the_spool_in_order(api: Open, tmp_path: Path) -> None:
    """10 records fill the buffer (memory only; a batch in flight still holds its room); the
    next 30 go to the spool, durable when add() returns; every record is written once, in
    the order it was added."""
    sink = GatedSink()
    async with api(sink, key="id", spool=tmp_path / "s", when_full="spill", max_pending=10,
                   max_batch=5, linger=0) as b:  # fmt: skip
        first = [await b.add({"id": i}) for i in range(10)]
        await settle(lambda: sink.waiting == 1)  # one batch of 5 held at the gate
        more = [await b.add({"id": i}) for i in range(10, 40)]
        assert all(seq(r) == 0 for r in first)
        assert all(seq(r) > 0 for r in more)
        s = b.stats()
        assert (s.accepted, s.pending + s.in_flight, s.spooled) == (40, 40, 30)
        sink.open()
        await b.flush(timeout=10)
        s = b.stats()
        assert (s.committed, s.pending, s.in_flight) == (40, 0, 0)
        assert {r.outcome for r in first + more} == {OC.COMMITTED}
        await settle(lambda: b.stats().spooled == 0)  # committed: marked done, trimmed
    assert [r["id"] for r in rows(sink)] == list(range(40))


async def test_while_records_wait_in_the_spool_new_ones_follow_them(
    api: Open, tmp_path: Path
) -> None:
    """Order across the two: once records are spilled, a new record also spills (even with
    room in the buffer), unless its key is pending in memory (then it coalesces there); a
    spilled record meeting its key in the buffer is coalesced by version."""
    sink = GatedSink()
    async with api(sink, key="id", version="v", spool=tmp_path / "s", when_full="spill",
                   max_pending=4, max_batch=4, linger=3600) as b:  # fmt: skip
        # no cut while the test looks: the sync Batcher's loop thread would otherwise cut the
        # full batch of 4 between two adds, and key 0 would be in flight, not pending
        b.batcher.pause(2.0)
        await settle(lambda: b.stats().pauses == 1)
        for i in range(4):
            b.add_nowait({"id": i, "v": 1})  # memory: full
        spilled = b.add_nowait({"id": 9, "v": 1})
        assert seq(spilled)
        coalesced = b.add_nowait({"id": 0, "v": 2})  # key 0 pending: memory, coalesces
        assert seq(coalesced) == 0
        newer = b.add_nowait({"id": 9, "v": 3})  # key 9 waits in the spool: spills after it
        assert seq(newer) > seq(spilled)
        s = b.stats()
        assert (s.accepted, s.coalesced, s.pending) == (7, 1, 6)
        sink.open()
        await b.flush(timeout=10)
        assert (spilled.superseded, await b.outcome(spilled)) == (True, OC.COALESCED)
        s = b.stats()
        assert (s.committed, s.coalesced, s.pending) == (5, 2, 0)
    assert sorted((r["id"], r["v"]) for r in rows(sink)) == [(0, 2), (1, 1), (2, 1), (3, 1),
                                                              (9, 3)]  # fmt: skip


async def test_at_the_close_deadline_memory_is_lost_and_the_spilled_stay_spooled(
    tmp_path: Path,
) -> None:
    """A sink that never answers: the records in memory are LOST, the spilled ones SPOOLED;
    the next batcher on the spool delivers the spilled ones."""
    spool = tmp_path / "s"
    gate = GatedSink()
    first = wb.AsyncBatcher(gate, key="id", spool=spool, when_full="spill", max_pending=10,
                            max_batch=10, linger=0)  # fmt: skip
    await first.start()
    receipts = [await first.add({"id": i}) for i in range(30)]
    report = await first.close(timeout=0.3)
    assert (report.lost, report.spooled) == (10, 20)
    assert [r.outcome for r in receipts] == [OC.LOST] * 10 + [OC.SPOOLED] * 20
    s = report.stats
    assert s.accepted == s.lost + report.spooled
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", spool=spool, when_full="spill") as second:
        assert second.stats().recovered == 20
        await second.flush(timeout=10)
    assert sorted(r["id"] for r in rows(sink)) == list(range(10, 30))


async def test_a_full_spool_is_buffer_full_or_a_wait(tmp_path: Path) -> None:
    """The spool at max_bytes: add_nowait() raises BufferFull (SpoolFull); add() waits
    within its timeout."""
    gate = GatedSink()
    spool = wb.Spool(tmp_path / "s", max_bytes=64 * 1024)
    async with wb.AsyncBatcher(gate, key="id", spool=spool, when_full="spill", max_pending=2,
                               max_batch=2, linger=3600) as b:  # fmt: skip
        b.add_nowait({"id": 0})
        b.add_nowait({"id": 1})
        taken = 2
        for i in range(2, 10_000):
            try:
                b.add_nowait({"id": i, "pad": "x" * 200})
            except wb.SpoolFull:  # a BufferFull
                break
            taken += 1
        assert 100 < taken < 10_000
        assert b.stats().accepted == taken
        with pytest.raises(wb.BufferFull):
            await b.add({"id": "late", "pad": "x" * 200}, timeout=0.2)
        assert b.stats().accepted == taken
        gate.open()


def test_kill_9_keeps_what_was_spilled(tmp_path: Path) -> None:
    """A child fills the buffer (10 records, memory only) and spills 40 more, each add()
    returned (durable), then is SIGKILLed; the next batcher on the spool delivers the 40."""
    spool = tmp_path / "s"
    child = f"""
import asyncio, sys
import writebehind as wb
from writebehind.testing import GatedSink
async def main():
    b = wb.AsyncBatcher(GatedSink(), key="id", spool={str(spool)!r}, when_full="spill",
                        max_pending=10, max_batch=10, linger=3600)
    await b.start()
    for i in range(50):
        await b.add({{"id": i}})
    print("ready", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    async def drain() -> list[Any]:
        sink = MemorySink()
        async with wb.AsyncBatcher(sink, key="id", spool=spool) as b:
            assert b.stats().recovered == 40
            await b.flush(timeout=10)
        return rows(sink)

    assert sorted(r["id"] for r in asyncio.run(drain())) == list(range(10, 50))
