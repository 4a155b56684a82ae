"""Random interleavings of add, flush and the passage of time, checked against a plain dict:
the conservation identity holds after every step, and after each flush the store holds
exactly the newest version of every key (a tie going to the later add)."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import writebehind as wb
from writebehind.testing import ManualClock

from .conftest import assert_conserved


class VersionedStore:
    """A sink that applies each batch like the SQL sinks' conditional upsert (>=)."""

    def __init__(self) -> None:
        self.rows: dict[Any, dict[str, Any]] = {}
        self.writes = 0

    async def write(self, batch: list[dict[str, Any]]) -> None:
        self.writes += 1
        for r in batch:
            old = self.rows.get(r["id"])
            if old is None or r["v"] >= old["v"]:
                self.rows[r["id"]] = r


class CoalescingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.store = VersionedStore()
        self.batcher = wb.Batcher(
            self.store,
            key="id",
            version="v",
            max_batch=4,
            max_pending=8,
            linger=1.0,
            clock=self.clock,
            max_in_flight=1,
        )
        self.batcher.start()
        self.model: dict[int, dict[str, Any]] = {}
        self.seq = 0
        self.accepted = 0
        self.receipts: list[wb.Receipt] = []

    @rule(key=st.integers(0, 5), version=st.integers(0, 3))
    def add(self, key: int, version: int) -> None:
        self.seq += 1
        record = {"id": key, "v": version, "seq": self.seq}
        try:
            self.receipts.append(self.batcher.add_nowait(record))
        except wb.BufferFull:
            return  # not accepted: the model does not change
        self.accepted += 1
        old = self.model.get(key)
        if old is None or version >= old["v"]:
            self.model[key] = record

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def flush(self) -> None:
        self.batcher.flush(timeout=10)
        assert self.store.rows == self.model
        assert all(r.done for r in self.receipts)
        s = self.batcher.stats()
        assert s.pending == s.in_flight == 0
        assert s.committed + s.coalesced == self.accepted

    @invariant()
    def conserved(self) -> None:
        s = self.batcher.stats()
        assert_conserved(s)
        assert s.accepted == self.accepted
        assert s.dropped == s.dead_lettered == 0

    @invariant()
    def newest_never_loses(self) -> None:
        for key, row in self.store.rows.items():
            assert row["v"] <= self.model[key]["v"]

    def teardown(self) -> None:
        report = self.batcher.close(timeout=10)
        assert report.lost == 0
        assert self.store.rows == self.model


CoalescingMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestCoalescing = CoalescingMachine.TestCase


class AddingStore:
    """A sink that adds each record's ``n`` to its key's total (``SET n = t.n + excluded.n``)."""

    def __init__(self) -> None:
        self.totals: dict[Any, int] = {}

    async def write(self, batch: list[dict[str, Any]]) -> None:
        for r in batch:
            self.totals[r["id"]] = self.totals.get(r["id"], 0) + r["n"]


class MergeExpiryMachine(RuleBasedStateMachine):
    """merge= (sums) and ttl= together: whatever the interleaving of adds, time and flushes,
    the identity holds after every step, and every delta added ends in exactly one place:
    written (the store's totals) or dropped with its merged record as expired (counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.store = AddingStore()
        self.batcher = wb.Batcher(
            self.store, key="id", merge=wb.merge.sum_fields("n"), ttl=1.5, max_batch=3,
            max_pending=6, linger=1.0, clock=self.clock, when_full="raise",
        )  # fmt: skip
        self.batcher.start()
        self.receipts: list[wb.Receipt] = []
        self.added = 0

    @rule(key=st.integers(0, 4), n=st.integers(1, 5))
    def add(self, key: int, n: int) -> None:
        try:
            self.receipts.append(self.batcher.add_nowait({"id": key, "n": n}))
        except wb.BufferFull:
            return
        self.added += n

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def flush(self) -> None:
        self.batcher.flush(timeout=10)
        self.check_every_delta_is_accounted_for()

    def check_every_delta_is_accounted_for(self) -> None:
        assert all(r.done for r in self.receipts)
        heads = [r for r in self.receipts if not r.superseded]
        written = sum(r.record["n"] for r in heads if r.outcome is wb.Outcome.COMMITTED)
        expired = [r for r in heads if r.outcome is wb.Outcome.DROPPED]
        assert written == sum(self.store.totals.values())
        assert written + sum(r.record["n"] for r in expired) == self.added
        s = self.batcher.stats()
        assert s.dropped == s.dropped_by_reason["expired"] == len(expired)
        assert s.coalesced == len(self.receipts) - len(heads)

    @invariant()
    def conserved(self) -> None:
        s = self.batcher.stats()
        assert_conserved(s)
        assert s.accepted == len(self.receipts)

    def teardown(self) -> None:
        report = self.batcher.close(timeout=10)
        assert report.lost == 0
        self.check_every_delta_is_accounted_for()


MergeExpiryMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestMergeExpiry = MergeExpiryMachine.TestCase
