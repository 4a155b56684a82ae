"""The batcher in spool mode (``spool=``): durable adds, recovery by the next batcher,
``SPOOLED`` at the close deadline, done records trimmed, one batcher per spool, fork."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import GatedSink, MemorySink

from .conftest import settle


def rows(sink: MemorySink) -> list[Any]:
    return [r for batch in sink.batches for r in batch]


async def test_add_returns_once_the_record_is_durable(tmp_path: Path) -> None:
    """add() waits for the group commit: the record's seq is at or below the durable mark
    when it returns; add_nowait() returns before and receipt.durable() waits."""
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", spool=tmp_path / "spool", linger=3600) as b:
        r = await b.add({"id": 1})
        spooling = b._spooling
        assert spooling is not None
        assert spooling.log is not None
        assert 0 < r._seq <= spooling.log.durable_seq
        many = [b.add_nowait({"id": i}) for i in range(2, 200)]
        await asyncio.gather(*(x.durable() for x in many))
        assert max(x._seq for x in many) <= spooling.log.durable_seq
        assert b.stats().spooled == 199
        await b.flush()
        await settle(lambda: b.stats().spooled == 0)  # committed: done (the writer marks it)
    assert sorted(x["id"] for x in rows(sink)) == list(range(1, 200))


async def test_what_close_could_not_write_stays_spooled_and_the_next_batcher_delivers_it(
    tmp_path: Path,
) -> None:
    """A sink that never answers: at the close deadline the records are SPOOLED, not LOST
    (report: lost 0, spooled n). The next batcher on the spool takes them at start, coalesces
    across them (the newest version of each key wins), and flush() returns when every
    recovered record is delivered."""
    spool = tmp_path / "spool"
    gate = GatedSink()
    first = wb.AsyncBatcher(gate, key="id", version="v", spool=spool, linger=0, max_batch=10)
    await first.start()
    receipts = [await first.add({"id": i % 30, "v": i}) for i in range(100)]
    report = await first.close(timeout=0.5)
    assert report.lost == 0
    assert report.spooled >= 30  # one per key pending, and the batch held at the gate
    outcomes = {r.outcome for r in receipts}
    assert outcomes <= {wb.Outcome.SPOOLED, wb.Outcome.COALESCED}
    assert wb.Outcome.LOST not in outcomes
    gate.open()

    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=spool, linger=3600) as b:
        s = b.stats()
        assert s.recovered >= 30
        assert s.accepted == s.recovered
        await b.flush()
        await settle(lambda: b.stats().spooled == 0)
    newest = {r["id"]: r["v"] for r in rows(sink)}
    assert newest == {k: max(i for i in range(100) if i % 30 == k) for k in range(30)}


async def test_superseded_and_dropped_records_are_done_too(tmp_path: Path) -> None:
    """Coalesced and policy-dropped records never come back: the spool marks them done."""
    spool = tmp_path / "spool"
    gate = GatedSink()
    b = wb.AsyncBatcher(gate, key="id", spool=spool, linger=3600, max_batch=6, max_pending=6,
                        when_full="drop_newest")  # fmt: skip
    await b.start()
    for i in range(5):
        await b.add({"id": i})
    await b.add({"id": 0, "again": True})  # coalesced: the first id 0 is done
    await b.add({"id": 99})  # six pending: a batch of six is cut, held at the gate
    await settle(lambda: gate.waiting == 1)
    dropped = await b.add({"id": 100})  # the buffer is full: dropped, done
    assert dropped.outcome is wb.Outcome.DROPPED
    report = await b.close(timeout=0.3)
    assert (report.spooled, report.lost) == (6, 0)
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", spool=spool, linger=3600) as again:
        await again.flush()
        assert again.stats().recovered == 6
    got = sorted(rows(sink), key=lambda r: r["id"])
    assert [r["id"] for r in got] == [0, 1, 2, 3, 4, 99]
    assert got[0] == {"id": 0, "again": True}


async def test_one_batcher_per_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    async with wb.AsyncBatcher(MemorySink(), spool=spool):
        other = wb.AsyncBatcher(MemorySink(), spool=spool)
        with pytest.raises(wb.ConfigError):
            await other.start()


async def test_a_record_that_cannot_be_encoded_is_refused_not_accepted(tmp_path: Path) -> None:
    async with wb.AsyncBatcher(MemorySink(), spool=tmp_path / "s") as b:
        with pytest.raises(wb.RecordError):
            await b.add({"id": 1, "sock": object()})
        assert b.stats().accepted == 0


async def test_receipt_durable_without_a_spool_says_so() -> None:
    async with wb.AsyncBatcher(MemorySink()) as b:
        r = b.add_nowait({"n": 1})
        with pytest.raises(wb.WriteBehindError, match="no spool"):
            await r.durable()


def test_the_sync_batcher_blocks_until_durable_and_recovers(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    gate = GatedSink()
    b = wb.Batcher(gate, key="id", spool=spool, linger=3600, close_timeout=0.3)
    with b:
        r = b.add({"id": 1})
        assert r._seq <= b._core._spooling.log.durable_seq  # type: ignore[union-attr]
    assert b.close().spooled == 1
    sink = MemorySink()
    with wb.Batcher(sink, key="id", spool=spool) as again:
        again.flush()
    assert rows(sink) == [{"id": 1}]


@pytest.mark.parametrize("bad", [5, "", b"dir", ["x"]])
def test_a_bad_spool_is_a_config_error(bad: Any) -> None:
    with pytest.raises(wb.ConfigError, match="spool"):
        wb.AsyncBatcher(MemorySink(), spool=bad)


def test_a_forked_child_cannot_use_the_parents_spool(tmp_path: Path) -> None:
    """The sync Batcher starts afresh in a fork child, but not with a spool: the spool (its
    lock, its files) belongs to the parent; the child's use raises, and the parent's records
    stay the parent's."""
    sink = MemorySink()
    with wb.Batcher(sink, key="id", spool=tmp_path / "spool", linger=3600) as b:
        b.add({"id": 1})
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                try:
                    b.add({"id": 2})
                except wb.WriteBehindError as exc:
                    os.write(write, str(exc).encode()[:300])
                    code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        message = os.read(read, 400).decode()
        os.close(read)
        assert status == 0, message
        assert "forked child" in message
        b.flush()
    assert rows(sink) == [{"id": 1}]
