"""Defects found by a hostile review of issue 17's features (and issue 14's ``add_many``):
``merge=``, ``ttl=``, ``peek(key)``, ``max_pending_bytes``/``max_batch_bytes``/``size=``,
``add_many``. Each test showed one defect (its docstring says what and what is expected);
each failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.testing import GatedSink, MemorySink

from .conftest import Open, assert_conserved, settle

OC = wb.Outcome
FAR = 3600.0


def weight(record: dict[str, Any]) -> int:
    return int(record["n"])


# -- bytes budget --------------------------------------------------------------------------
@pytest.mark.parametrize("group", [False, True], ids=["add_nowait", "add_many_nowait"])
async def test_a_larger_record_coalescing_onto_a_smaller_one_keeps_the_byte_bound(
    api: Open, group: bool
) -> None:
    """Showed: with max_pending_bytes=100 holding 10 + 80 bytes, a record of 50 bytes with
    the key of the 10-byte one is taken and bytes_held becomes 130. Expected: the bound
    holds (the record finds the buffer full: BufferFull under "raise"), as README's
    "Bounded" and the guide's "a record that would go over it finds the buffer full" say."""
    sink = GatedSink()
    async with api(sink, key="id", max_pending_bytes=100, size=weight, when_full="raise",
                   linger=FAR) as b:  # fmt: skip
        b.add_nowait({"id": 1, "n": 10})
        b.add_nowait({"id": 2, "n": 80})
        bigger = {"id": 1, "n": 50}
        try:
            if group:
                b.batcher.add_many_nowait([bigger])
            else:
                b.add_nowait(bigger)
        except wb.BufferFull:
            pass
        held = b.stats().bytes_held
        sink.open()
        assert held <= 100, f"bytes_held {held} > max_pending_bytes 100"


async def test_a_merged_record_is_charged_its_own_size(api: Open) -> None:
    """Showed: 50 one-tag records merged with union_fields into one record of 50 tags,
    charged 1 byte (the size of the last delta). Expected: bytes_held is the size of the
    record actually held, size(merged)."""
    sink = MemorySink()
    async with api(sink, key="id", merge=wb.merge.union_fields("tags"), linger=FAR,
                   max_pending_bytes=1000, size=lambda r: len(r["tags"])) as b:  # fmt: skip
        for i in range(50):
            b.add_nowait({"id": 1, "tags": frozenset({i})})
        held = b.batcher.peek(1)
        assert held is not None
        assert len(held["tags"]) == 50
        assert b.stats().bytes_held == 50


async def test_drop_oldest_does_not_drop_records_that_cannot_make_room(api: Open) -> None:
    """Showed: max_pending_bytes=100 with 60 bytes in flight and 4 records of 10 pending;
    a record of 50 bytes can never fit until the write settles (60 + 50 > 100), yet
    drop_oldest dropped all 4 pending records and then the new one (5 dropped, where 1
    was the most that could help). Expected: the pending records stay; only the record
    that cannot fit is dropped."""
    sink = GatedSink()
    async with api(sink, key="id", max_pending_bytes=100, size=weight,
                   when_full="drop_oldest", linger=FAR) as b:  # fmt: skip
        b.add_nowait({"id": 0, "n": 60})
        flushing = asyncio.ensure_future(b.flush())
        await settle(lambda: b.stats().in_flight == 1)
        kept = [b.add_nowait({"id": i, "n": 10}) for i in range(1, 5)]
        new = b.add_nowait({"id": 9, "n": 50})
        s = b.stats()
        outcomes = [r.outcome for r in kept]
        sink.open()
        await flushing
        assert new.outcome is OC.DROPPED
        assert outcomes == [None] * 4, outcomes
        assert s.dropped_by_reason["drop_oldest"] == 0


async def test_direct_writes_stay_within_the_byte_bound(api: Open) -> None:
    """Showed: max_pending_bytes=100, when_full="direct", a sink that has not answered:
    20 records of 30 bytes are all taken (3 pending, 17 written alone) and bytes_held is
    600, six times the bound. Expected: as README's "Bounded" has it for records (at
    most max_pending held and as many again in direct writes), at most
    2 x max_pending_bytes held; past that, direct refuses (waits) like block."""
    sink = GatedSink()
    async with api(sink, key="id", max_pending_bytes=100, size=weight, when_full="direct",
                   linger=FAR) as b:  # fmt: skip
        for i in range(20):
            with contextlib.suppress(wb.BufferFull):
                b.add_nowait({"id": i, "n": 30})
        held = b.stats().bytes_held
        sink.open()
        assert held <= 200, f"bytes_held {held} with max_pending_bytes=100"


async def test_spill_with_max_batch_bytes_keeps_bytes_held_consistent(tmp_path: Path) -> None:
    """Showed: when_full="spill" with max_batch_bytes: 20 records of 10 bytes, 15 of them
    spilled; after flush() bytes_held is -150. Expected: either the combination is
    refused with ConfigError (as the guide says: not yet with spool=), or bytes_held is
    never negative and returns to 0."""
    sink = MemorySink()
    try:
        b = wb.AsyncBatcher(sink, key="id", spool=str(tmp_path / "spool"), when_full="spill",
                            max_pending=5, max_batch=5, max_batch_bytes=10_000,
                            size=lambda r: 10, linger=FAR)  # fmt: skip
    except wb.ConfigError:
        return
    async with b:
        for i in range(20):
            b.add_nowait({"id": i})
        await b.flush()
        await b.flush()
        s = b.stats()
        assert_conserved(s)
        assert s.bytes_held == 0, s.bytes_held


# -- merge ---------------------------------------------------------------------------------
def _returns_none(old: Any, new: Any) -> Any:
    return None


def _changes_key(old: Any, new: Any) -> Any:
    return {**new, "id": "other"}


def _drops_version(old: Any, new: Any) -> Any:
    return {**new, "v": None}


@pytest.mark.parametrize(
    ("merge", "version"),
    [(_returns_none, None), (_changes_key, "v"), (_drops_version, "v")],
    ids=["none", "key", "version"],
)
async def test_a_merge_result_the_buffer_could_not_take_is_refused(
    api: Open, merge: Any, version: str | None
) -> None:
    """Showed: a merge returning None is accepted without version= (peek(1) then says None, "nothing
    pending", and the sink is handed None); a merge that changes the key puts a record
    of key "other" in key 1's slot, so one batch holds two records of key "other" (which
    the SQL sinks assume cannot happen behind a batcher that coalesces by key) and
    peek(1) returns a record of another key; a merge returning a version of None is
    taken, though add() refuses such a record. Expected: RecordError, as for a merge that
    raises; the pending record unchanged."""
    sink = MemorySink()
    async with api(sink, key="id", version=version, merge=merge, linger=FAR) as b:
        first = {"id": 1, "v": 1}
        b.add_nowait(first)
        with pytest.raises(wb.RecordError):
            b.add_nowait({"id": 1, "v": 2})
        assert b.batcher.peek(1) == first


async def test_merge_keeps_the_newest_version_when_records_arrive_out_of_order(
    api: Open,
) -> None:
    """Showed: with version="last_seen" and the presence merge the module docstring of
    writebehind.merge shows (keep_first("first_seen") then latest), a heartbeat of
    last_seen=20 arriving after one of last_seen=30 leaves the pending record at
    last_seen=20 with the older status; without merge= the buffer keeps 30. Expected: as
    README's guarantee "Newest wins. In the buffer by version": the record written has
    last_seen=30 and the newer status."""
    sink = MemorySink()
    merge = wb.merge.combine(wb.merge.keep_first("first_seen"), wb.merge.latest)
    async with api(sink, key="id", version="last_seen", merge=merge, linger=FAR) as b:
        b.add_nowait({"id": 1, "first_seen": 10, "last_seen": 30, "status": "new"})
        b.add_nowait({"id": 1, "first_seen": 20, "last_seen": 20, "status": "old"})
        await b.flush()
    (written,) = sink.records
    assert (written["last_seen"], written["status"]) == (30, "new")


# -- add_many ------------------------------------------------------------------------------
async def test_a_cancelled_add_many_says_which_records_were_taken() -> None:
    """Showed: add_many of 25 records into a buffer of 10 that cannot drain is cancelled
    after 10 were taken: the CancelledError carries nothing, yet 10 records are accepted
    (and will be written); retrying the group duplicates them, dropping it loses the
    other 15 without knowing which. Expected: as for BufferFull and BatcherClosed, the
    error carries the receipts of the records taken (exc.receipts)."""
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="id", linger=FAR, max_pending=10, max_batch=5) as b:
        task = asyncio.ensure_future(b.add_many([{"id": i} for i in range(25)]))
        await settle(lambda: b.stats().accepted == 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        sink.open()
        taken = getattr(info.value, "receipts", None)
        assert taken is not None
        assert len(taken) == b.stats().accepted == 10


# -- peek ----------------------------------------------------------------------------------
def test_peek_from_a_thread_never_misses_a_record_being_cut() -> None:
    """Showed: a thread adds a key then peeks it until peek() says None; in about a third
    of 300 tries peek() said None while the record's receipt had no outcome and the
    sink had not seen it (it was being cut into a batch). Expected: peek(key) returns
    the record until its write has committed (the guide: "in the buffer, or in a write
    that has not committed")."""
    seen: set[int] = set()

    class Sink:
        async def write(self, batch: list[Any]) -> None:
            await asyncio.sleep(0.0005)
            seen.update(r["id"] for r in batch)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    missed = []
    try:
        with wb.Batcher(Sink(), key="id", linger=0.0005, max_batch=4) as b:
            for k in range(300):
                r = b.add_nowait({"id": k})
                while b.peek(k) is not None:
                    pass
                if r.outcome is None and k not in seen:
                    missed.append(k)
    finally:
        sys.setswitchinterval(before)
    assert missed == [], f"peek() said None for {len(missed)} records not yet written"


async def test_peek_after_a_close_that_lost_records_treats_them_alike(api: Open) -> None:
    """Showed: a close that timed out lost record 1 (in flight) and record 2 (pending):
    peek(1) is None, which the guide says means "the datastore holds the newest version
    this batcher was given" (it never got it), while peek(2) returns record 2. Expected:
    both lost records answered alike, and never None for a record that was not
    written: peek(1) returns record 1 as peek(2) returns record 2."""
    sink = GatedSink()
    async with api(sink, key="id", linger=FAR, max_batch=1) as b:
        b.add_nowait({"id": 1})
        await settle(lambda: b.stats().in_flight == 1)
        b.add_nowait({"id": 2})
        report = await b.close(timeout=0.1)
        assert report.lost == 2
        assert b.batcher.peek(2) == {"id": 2}
        assert b.batcher.peek(1) == {"id": 1}


async def test_a_coalescing_add_that_reaches_max_batch_bytes_cuts_a_batch(api: Open) -> None:
    """Showed: max_batch_bytes=100 with 10 + 10 bytes pending; add_nowait of a 95-byte
    record with the key of a pending one brings 105 bytes pending, and nothing is cut
    (linger is an hour); the same record through add_many_nowait cuts a batch at once.
    Expected: the guide's "max_batch_bytes cuts a batch as soon as that many bytes are
    pending", whichever way the bytes arrived."""
    sink = MemorySink()
    async with api(sink, key="id", linger=FAR, max_batch_bytes=100, size=weight) as b:
        b.add_nowait({"id": 1, "n": 10})
        b.add_nowait({"id": 2, "n": 10})
        await asyncio.sleep(0.05)
        assert sink.batches == []
        b.add_nowait({"id": 1, "n": 95})
        await asyncio.sleep(0.2)
        written = len(sink.batches)
        assert written >= 1, f"{b.stats().bytes_held} bytes pending, no batch cut"
