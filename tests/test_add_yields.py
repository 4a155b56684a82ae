"""Issue 14: while a batch is being written, ``await add()`` (and ``await add_many()``) give
the event loop a turn once per ``TURN`` records, so a producer that never waits for room
lets the flusher cut the next batch and the driver read its answers. The turn comes before
the record is taken: an ``add()`` cancelled there has taken nothing. With nothing being
written there is no turn: a producer running ahead keeps coalescing as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import writebehind as wb
from writebehind._engine import TURN
from writebehind.testing import MemorySink

from .conftest import assert_conserved, settle

OC = wb.Outcome
MAX_BATCH = 100
MAX_PENDING = 8 * TURN  # room for every record below: the producer never waits for room


class HeldSink(MemorySink):
    """Each write notes how many records the batcher had accepted when it started, then
    waits for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.batcher: wb.AsyncBatcher | None = None
        self.accepted_at: list[int] = []
        self.gate = asyncio.Event()

    async def write(self, batch: list[Any]) -> None:
        assert self.batcher is not None
        self.accepted_at.append(self.batcher.stats().accepted)
        await self.gate.wait()
        await super().write(batch)


def _batcher(sink: HeldSink, **kw: Any) -> wb.AsyncBatcher:
    b = wb.AsyncBatcher(
        sink, key="id", version="v", max_batch=MAX_BATCH, max_pending=MAX_PENDING,
        max_in_flight=2, linger=60, **kw,
    )  # fmt: skip
    sink.batcher = b
    return b


async def _one_write_in_flight(b: wb.AsyncBatcher, sink: HeldSink) -> None:
    for i in range(MAX_BATCH):
        await b.add({"id": -1 - i, "v": 0})
    await settle(lambda: len(sink.accepted_at) == 1)


async def test_a_tight_add_loop_lets_the_loop_run_while_a_batch_is_written() -> None:
    sink = HeldSink()
    async with _batcher(sink) as b:
        await _one_write_in_flight(b, sink)
        ran: list[int] = []
        asyncio.get_running_loop().call_soon(lambda: ran.append(b.stats().accepted))
        n = 4 * TURN
        for i in range(n):
            await b.add({"id": i, "v": 0})
        # before issue 14 neither ran until the producer stopped: ran == [] here, and the
        # second write (max_in_flight=2) started only after the loop
        assert ran, "the loop did not run while the producer added"
        assert ran[0] <= MAX_BATCH + TURN + 1, ran
        assert len(sink.accepted_at) == 2, sink.accepted_at
        # a turn lets the flusher cut it once MAX_BATCH are pending, the next one lets it start
        assert sink.accepted_at[1] <= MAX_BATCH + 3 * TURN, sink.accepted_at
        sink.gate.set()
    assert b.stats().committed == MAX_BATCH + n


async def test_a_tight_add_many_loop_lets_the_loop_run_while_a_batch_is_written() -> None:
    sink = HeldSink()
    group = 32
    async with _batcher(sink) as b:
        await _one_write_in_flight(b, sink)
        n = 4 * TURN
        for i in range(0, n, group):
            await b.add_many([{"id": j, "v": 0} for j in range(i, i + group)])
        assert len(sink.accepted_at) == 2, sink.accepted_at
        assert sink.accepted_at[1] <= MAX_BATCH + 3 * TURN + group, sink.accepted_at
        sink.gate.set()
    assert b.stats().committed == MAX_BATCH + n


async def test_with_nothing_being_written_a_producer_running_ahead_keeps_coalescing() -> None:
    sink = HeldSink()
    sink.gate.set()
    agents = 2 * MAX_BATCH
    async with _batcher(sink) as b:
        for beat in range(MAX_PENDING // agents):
            for a in range(agents):
                await b.add({"id": a, "v": beat})
        assert sink.accepted_at == []  # nothing cut while the producer ran: all coalesced
    s = b.stats()
    beats = MAX_PENDING // agents
    assert (s.committed, s.coalesced) == (agents, (beats - 1) * agents)


async def _cancel_at_the_turn(b: wb.AsyncBatcher, call: Any) -> None:
    """Run ``call()`` (an add due to give the loop its turn) in a task; cancel it there."""
    b._turn = 0  # the next add gives the loop its turn
    task = asyncio.create_task(call())
    await asyncio.sleep(0)  # the task runs up to the turn and waits there
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("when_full", ["block", "direct"])
async def test_an_add_cancelled_at_the_turn_has_taken_nothing(when_full: str) -> None:
    """CancelledError out of add() at the turn: the record was not taken, so the caller may
    add it again, and it is written, and counted, once."""
    sink = HeldSink()
    async with _batcher(sink, when_full=when_full) as b:
        await _one_write_in_flight(b, sink)
        await _cancel_at_the_turn(b, lambda: b.add({"id": 0, "v": 0}))
        assert b.stats().accepted == MAX_BATCH
        assert b.peek(0) is None
        receipt = await b.add({"id": 0, "v": 0})  # the caller adds it again
        sink.gate.set()
        await b.flush()
        assert await receipt is OC.COMMITTED
    s = b.stats()
    assert (s.accepted, s.committed, s.coalesced) == (MAX_BATCH + 1, MAX_BATCH + 1, 0)
    assert_conserved(s)
    assert sorted(r["id"] for r in sink.records) == list(range(-MAX_BATCH, 1))


async def test_an_add_many_cancelled_at_the_turn_has_taken_nothing() -> None:
    sink = HeldSink()
    async with _batcher(sink) as b:
        await _one_write_in_flight(b, sink)
        await _cancel_at_the_turn(b, lambda: b.add_many([{"id": i, "v": 0} for i in range(5)]))
        assert b.stats().accepted == MAX_BATCH
        group = await b.add_many([{"id": i, "v": 0} for i in range(5)])
        sink.gate.set()
        await b.flush()
        assert await group == {OC.COMMITTED: 5}
    s = b.stats()
    assert (s.accepted, s.committed) == (MAX_BATCH + 5, MAX_BATCH + 5)


async def test_the_turns_keep_the_order_of_one_producers_records() -> None:
    """Records of one key added across turns: the newest still wins, and each add's receipt
    is its own record's."""
    sink = HeldSink()
    n = 3 * TURN
    async with _batcher(sink) as b:
        await _one_write_in_flight(b, sink)
        receipts = [await b.add({"id": i % 7, "v": i}) for i in range(n)]
        assert all(r.record["v"] == i for i, r in enumerate(receipts))
        sink.gate.set()
    newest = {k: max(i for i in range(n) if i % 7 == k) for k in range(7)}
    written: dict[int, int] = {}
    for r in sink.records:  # batches in order: the last write of a key is its newest
        if r["id"] >= 0:
            written[r["id"]] = r["v"]
    assert written == newest
    assert_conserved(b.stats())
