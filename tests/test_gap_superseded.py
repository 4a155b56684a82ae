"""A superseded record's receipt, for every fate of its successor (issue 18).

The rule (DESIGN.md section 6): a superseded record is counted ``coalesced`` the moment it
is superseded (``receipt.superseded``), and its receipt resolves once its successor's fate
is known: ``COALESCED`` if the successor committed, else the successor's outcome
(dead-lettered, dropped, lost). Until then it is unresolved: ``await`` does not return
early, so a caller cannot take "coalesced" for "written" while the newest version may
still fail. A dead-letter replay deletes superseded entries (the newer record carries the
data) and keeps the newest version whenever it is dead-lettered again.

Each case also checks that the records' fates (``COALESCED`` for a superseded one), counted,
equal the counters.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.dlq import SQLiteDeadLetter
from writebehind.testing import FlakySink, GatedSink

from .conftest import AsyncDriver, Driver, Open, SyncDriver, idle, settle

FAR = 3600.0
OC = wb.Outcome


class PoisonGate(GatedSink):
    """Holds writes at a gate; once open, a batch holding a record with ``bad`` set fails
    permanently (the record is then dead-lettered alone)."""

    async def write(self, batch: list[Any]) -> None:
        await super().write(batch)
        if any(r.get("bad") for r in batch):
            self.batches.pop()
            raise wb.PermanentSinkError("refused (PoisonGate)")


def tally(receipts: list[wb.Receipt], s: wb.Stats) -> None:
    """Every receipt resolved, and each fate's count is its counter."""
    assert all(r.outcome is not None for r in receipts), receipts
    seen = Counter(OC.COALESCED if r.superseded else r.outcome for r in receipts)
    assert None not in seen, seen
    assert seen[OC.COMMITTED] == s.committed, (seen, s)
    assert seen[OC.COALESCED] == s.coalesced, (seen, s)
    assert seen[OC.DEAD_LETTERED] == s.dead_lettered, (seen, s)
    assert seen[OC.DROPPED] == s.dropped, (seen, s)
    assert seen[OC.LOST] == s.lost, (seen, s)


async def unresolved(d: Driver, receipt: wb.Receipt) -> None:
    """The receipt has no outcome yet, and waiting for it does not return."""
    assert receipt.outcome is None
    assert not receipt.done
    if isinstance(d, SyncDriver):
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(receipt.result, 0.05)
    else:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await receipt


@pytest.mark.parametrize("successor", ["committed", "dead_lettered"])
async def test_superseded_waits_for_its_successor_then_takes_its_fate(
    api: Open, successor: str
) -> None:
    """v1 superseded by v2 (pending, then in flight): v1 stays unresolved until v2's write
    settles, then says COALESCED if v2 committed, DEAD_LETTERED if v2 was."""
    sink = PoisonGate()
    letters: list[wb.DeadLetterEntry] = []
    async with api(sink, key="id", version="v", linger=FAR, dead_letter=letters.extend) as b:
        first = b.add_nowait({"id": "a", "v": 1})
        second = b.add_nowait({"id": "a", "v": 2, "bad": successor == "dead_lettered"})
        await unresolved(b, first)  # the successor is pending
        flushed = asyncio.ensure_future(b.flush())
        await settle(lambda: sink.waiting == 1)
        await unresolved(b, first)  # the successor is in flight
        await unresolved(b, second)
        sink.open()
        await flushed
        assert await b.outcome(second) is OC[successor.upper()]
        assert first.superseded
        assert not second.superseded
        want = OC.COALESCED if successor == "committed" else OC.DEAD_LETTERED
        assert await b.outcome(first) is want
        s = b.stats()
        assert (s.coalesced, s.committed, s.dead_lettered) == (
            1, int(successor == "committed"), int(successor == "dead_lettered"),
        )  # fmt: skip
        tally([first, second], s)
    assert [e.record["v"] for e in letters] == ([2] if successor == "dead_lettered" else [])


async def test_superseded_by_a_successor_lost_at_the_close_deadline(api: Open) -> None:
    """v2 in flight on a write that never finishes: close(0.3) counts it LOST; v1, which
    was unresolved until then, says LOST too (its data went with v2; counted coalesced)."""
    sink = GatedSink()
    d = api.cls(sink, key="id", version="v", linger=FAR)
    await d.start()
    first = d.add_nowait({"id": "a", "v": 1})
    second = d.add_nowait({"id": "a", "v": 2})
    flushed = asyncio.ensure_future(d.flush())
    await settle(lambda: sink.waiting == 1)
    await unresolved(d, first)
    report = await d.close(0.3)
    assert report.lost == 1
    assert second.outcome is OC.LOST
    assert first.outcome is OC.LOST
    tally([first, second], report.stats)
    if isinstance(d, AsyncDriver):
        sink.open()
    flushed.cancel()
    await asyncio.gather(flushed, return_exceptions=True)


async def test_superseded_by_a_pending_successor_lost_at_the_close_deadline(api: Open) -> None:
    """The successor never left the buffer (the one write slot is held): LOST at the
    deadline; the record it superseded says LOST only then."""
    sink = GatedSink()
    d = api.cls(sink, key="id", version="v", max_batch=1, linger=FAR)
    await d.start()
    blocker = d.add_nowait({"id": "x", "v": 1})  # takes the one write slot
    await settle(lambda: sink.waiting == 1)
    first = d.add_nowait({"id": "a", "v": 1})
    second = d.add_nowait({"id": "a", "v": 2})
    await idle()
    await unresolved(d, first)
    report = await d.close(0.3)
    assert (blocker.outcome, second.outcome, first.outcome) == (OC.LOST, OC.LOST, OC.LOST)
    tally([blocker, first, second], report.stats)
    if isinstance(d, AsyncDriver):
        sink.open()


async def test_superseded_by_a_successor_that_drop_oldest_drops(api: Open) -> None:
    """The successor is dropped by drop_oldest: it says DROPPED, and so does v1."""
    sink = GatedSink()
    async with api(
        sink, key="id", version="v", max_batch=2, max_pending=2, when_full="drop_oldest",
        linger=FAR,
    ) as b:  # fmt: skip
        b.batcher.pause(1.0)  # no cut meanwhile: under the sync API the flusher would cut a, b
        first = b.add_nowait({"id": "a", "v": 1})
        second = b.add_nowait({"id": "a", "v": 2})
        third = b.add_nowait({"id": "b", "v": 1})
        fourth = b.add_nowait({"id": "c", "v": 1})  # full: drops "a" (second)
        assert (second.outcome, first.outcome) == (OC.DROPPED, OC.DROPPED)
        sink.open()
        await b.flush()
        tally([first, second, third, fourth], b.stats())


async def test_an_older_record_arriving_later_is_the_superseded_one(api: Open) -> None:
    """v2 pending, then v1 arrives: v1 is superseded by v2 (not the other way round), waits
    for v2's write, and says DEAD_LETTERED when v2 is dead-lettered."""
    sink = PoisonGate()
    async with api(sink, key="id", version="v", linger=FAR, dead_letter=lambda e: None) as b:
        newer = b.add_nowait({"id": "a", "v": 2, "bad": True})
        older = b.add_nowait({"id": "a", "v": 1})
        await unresolved(b, older)
        sink.open()
        await b.flush()
        assert (await b.outcome(newer), await b.outcome(older)) == (
            OC.DEAD_LETTERED, OC.DEAD_LETTERED,
        )  # fmt: skip
        tally([newer, older], b.stats())


async def test_a_chain_of_three_resolves_through_to_the_newest(api: Open) -> None:
    """v1 -> v2 -> v3, v3 dead-lettered: v1 and v2 unresolved until then, then they say
    DEAD_LETTERED too (their data ended with v3)."""
    sink = PoisonGate()
    async with api(sink, key="id", version="v", linger=FAR, dead_letter=lambda e: None) as b:
        chain = [b.add_nowait({"id": "a", "v": v, "bad": v == 3}) for v in (1, 2, 3)]
        flushed = asyncio.ensure_future(b.flush())
        await settle(lambda: sink.waiting == 1)
        for r in chain:
            await unresolved(b, r)
        sink.open()
        await flushed
        assert [await b.outcome(r) for r in chain] == [OC.DEAD_LETTERED] * 3
        assert [r.superseded for r in chain] == [True, True, False]
        tally(chain, b.stats())


async def test_replay_keeps_the_newest_version_when_it_is_dead_lettered_again(
    tmp_path: Path,
) -> None:
    """Replay deletes the entries whose record came out COALESCED. Two entries of one key,
    the newer refused again: the older entry goes, and the store still holds the newer
    record (in its fresh entry, or, without a store to take it, in its old one)."""
    for fresh in (True, False):
        store = SQLiteDeadLetter(tmp_path / f"dl-{fresh}.db")
        now = 1.0e9
        older, newer = {"id": 1, "v": 1}, {"id": 1, "v": 2, "bad": True}
        await store.put([
            wb.DeadLetterEntry(record=r, error="E", message="m", sink="s", batcher="b",
                               attempts=1, at=now)
            for r in (older, newer)
        ])  # fmt: skip
        sink = FlakySink(poison=lambda r: bool(r.get("bad")))
        async with wb.AsyncBatcher(
            sink, key="id", version="v", dead_letter=store if fresh else None
        ) as batcher:
            report = await store.replay(batcher)
        assert (report.coalesced, report.dead_lettered, report.committed) == (1, 1, 0)
        kept = [e.record() for e in await store.list()]
        await store.close()
        assert kept == [newer], (fresh, kept)
        assert sink.records == []
