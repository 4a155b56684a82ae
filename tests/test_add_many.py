"""add_many / add_many_nowait: a group taken in one lock round trip, through both APIs,
behaving exactly as the same records added one by one."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import writebehind as wb
from writebehind.testing import GatedSink, MemorySink

from .conftest import assert_conserved, settle

OC = wb.Outcome


async def test_a_group_coalesces_within_itself_and_with_what_is_pending() -> None:
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", version="v", linger=60) as b:
        b.add_nowait({"id": 0, "v": 100})  # pending, newer than anything in the group
        group = await b.add_many([{"id": i % 7, "v": i} for i in range(30)])
        assert len(group) == 30
        assert b.stats().pending == 7
        await b.flush()
        counted = await group
    assert counted == {OC.COMMITTED: 6, OC.COALESCED: 24}
    assert group.done
    newest = {k: max(i for i in range(30) if i % 7 == k) for k in range(1, 7)}
    assert {r["id"]: r["v"] for r in sink.records} == {0: 100, **newest}
    assert_conserved(b.stats())
    assert b.stats().accepted == 31


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"id": None, "v": 1}, "records[2]: key is None"),
        ({"id": 5, "v": None}, "records[2]: version is None"),
        ({"id": 5, "v": math.nan}, "records[2]: version nan is not equal to itself"),
        ({"id": 5, "v": object()}, None),  # a version that cannot be compared: refused later
    ],
)
@pytest.mark.parametrize("when_full", ["block", "direct"])  # direct: one put per record
async def test_a_record_the_buffer_could_never_take_refuses_the_whole_group(
    bad: dict[str, Any], says: str | None, when_full: str
) -> None:
    async with wb.AsyncBatcher(
        MemorySink(), key="id", version="v", linger=60, when_full=when_full
    ) as b:
        group = [{"id": 1, "v": 1}, {"id": 2, "v": 1}, bad, {"id": 3, "v": 1}]
        if says is None:  # object() == itself: taken, as add_nowait takes it
            assert len(b.add_many_nowait(group)) == 4
            return
        with pytest.raises(wb.RecordError, match=re.escape(says)) as caught:
            b.add_many_nowait(group)
        assert caught.value.receipts == []  # type: ignore[attr-defined]
        assert b.stats().accepted == 0


async def test_raise_policy_takes_what_fits_and_says_which() -> None:
    async with wb.AsyncBatcher(GatedSink(), key="id", max_pending=5, max_batch=5, linger=60,
                               when_full="raise") as b:  # fmt: skip
        with pytest.raises(wb.BufferFull) as caught:
            b.add_many_nowait([{"id": i} for i in range(8)])
        taken = caught.value.receipts  # type: ignore[attr-defined]
        assert [r.record["id"] for r in taken] == [0, 1, 2, 3, 4]
        s = b.stats()
        assert s.accepted == s.pending == 5
        # a key already pending still coalesces in a full buffer, as add_nowait's does
        assert b.add_many_nowait([{"id": 3}, {"id": 4}]).outcomes() == {}
        assert b.stats().coalesced == 2
        await b.close(timeout=0.1)


async def test_add_many_waits_for_room_and_takes_a_group_larger_than_the_buffer() -> None:
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", max_pending=8, max_batch=4, linger=0) as b:
        group = await b.add_many({"id": i} for i in range(100))  # any iterable
        assert len(group) == 100
        assert await group == {OC.COMMITTED: 100}
    assert sorted(r["id"] for r in sink.records) == list(range(100))


async def test_add_many_timeout_bounds_the_whole_group() -> None:
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="id", max_pending=4, max_batch=4, linger=60) as b:
        with pytest.raises(wb.BufferFull) as caught:
            await b.add_many([{"id": i} for i in range(10)], timeout=0.05)
        assert len(caught.value.receipts) == 4  # type: ignore[attr-defined]
        assert b.stats().accepted == 4
        sink.open()


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_drop_policies_count_as_one_by_one_adds(policy: str) -> None:
    async def run(many: bool) -> tuple[wb.Stats, list[Any]]:
        sink = GatedSink()
        async with wb.AsyncBatcher(sink, key="id", max_pending=4, max_batch=4, linger=60,
                                   when_full=policy) as b:  # fmt: skip
            records = [{"id": i % 6} for i in range(10)]
            if many:
                b.add_many_nowait(records)
            else:
                for r in records:
                    b.add_nowait(r)
            s = b.stats()
            sink.open()
        return s, sorted(r["id"] for r in sink.records)

    assert await run(True) == await run(False)


@dataclasses.dataclass
class Reading:
    sensor: uuid.UUID
    seq: int


async def test_attribute_records_uuid_keys_and_a_cost_field() -> None:
    sensors = [uuid.uuid4() for _ in range(3)]
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="sensor", version="seq", cost="seq", linger=60) as b:
        b.add_nowait(Reading(sensors[0], 50))  # the same UUID, added alone first
        group = b.add_many_nowait([Reading(sensors[i % 3], i) for i in range(9)])
        assert b.stats().pending == 3
        assert b.stats().needs_capacity == 50 + 7 + 8
        await b.flush()
        await group
    assert sorted((r.sensor, r.seq) for r in sink.records) == sorted(
        [(sensors[0], 50), (sensors[1], 7), (sensors[2], 8)]
    )


async def test_an_unhashable_key_part_way_stops_there() -> None:
    async with wb.AsyncBatcher(MemorySink(), key="id", linger=60) as b:
        with pytest.raises(wb.RecordError, match=r"records\[1\]: the key") as caught:
            b.add_many_nowait([{"id": 1}, {"id": [2]}, {"id": 3}])
        assert [r.record["id"] for r in caught.value.receipts] == [1]  # type: ignore[attr-defined]
        assert b.stats().accepted == 1


async def test_closed_and_unstarted_batchers_refuse_a_group() -> None:
    b = wb.AsyncBatcher(MemorySink(), key="id")
    with pytest.raises(wb.WriteBehindError, match="not started"):
        b.add_many_nowait([{"id": 1}])
    async with b:
        pass
    with pytest.raises(wb.BatcherClosed):
        await b.add_many([{"id": 1}])
    assert len(b.add_many_nowait([])) == 0  # an empty group: nothing to refuse


async def test_spool_mode_returns_once_the_last_record_is_durable(tmp_path: Path) -> None:
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="id", spool=tmp_path / "s", linger=60) as b:
        group = await b.add_many([{"id": i} for i in range(50)])
        assert all(b._spooling.is_durable(r) for r in group)  # type: ignore[union-attr]
        await b.close(timeout=0.1)  # nothing written: everything stays in the spool
    again = MemorySink()
    async with wb.AsyncBatcher(again, key="id", spool=tmp_path / "s") as b2:
        assert b2.stats().recovered == 50
    assert sorted(r["id"] for r in again.records) == list(range(50))


async def test_direct_policy_waits_for_the_records_written_alone() -> None:
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", max_pending=2, max_batch=2, linger=60,
                               when_full="direct") as b:  # fmt: skip
        group = await b.add_many([{"id": i} for i in range(5)])
        direct = [r for r in group if r.batch is not None and r.batch.reason == "direct"]
        assert direct
        assert all(r.outcome is OC.COMMITTED for r in direct)


def test_sync_batcher_add_many_blocks_for_room_and_result_counts() -> None:
    sink = MemorySink()
    with wb.Batcher(sink, key="id", max_pending=8, max_batch=4, linger=0) as b:
        group = b.add_many([{"id": i % 50} for i in range(200)], timeout=10)
        assert group.result(10).total() == 200
        assert b.add_many_nowait([{"id": 1000}]).result(10) == {OC.COMMITTED: 1}
    assert sorted(r["id"] for r in sink.records)[-1] == 1000
    assert_conserved(b.stats())


def test_threads_adding_groups_keep_the_identity_and_the_newest_version() -> None:
    sink = MemorySink()
    newest: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    bad: list[wb.Stats] = []
    with wb.Batcher(sink, key="id", version="v", max_pending=64, max_batch=16,
                    linger=0) as b:  # fmt: skip

        def watch() -> None:
            while not stop.is_set():
                s = b.stats()
                if s.accepted != s.committed + s.coalesced + s.pending + s.in_flight:
                    bad.append(s)

        def worker(t: int) -> None:
            for n in range(100):
                group = [{"id": (t * 7 + n + i) % 40, "v": n * 100 + i} for i in range(20)]
                b.add_many(group, timeout=30)
                with lock:
                    for rec in group:
                        if rec["v"] > newest.get(rec["id"], -1):
                            newest[rec["id"]] = rec["v"]

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        b.flush(30)
        stop.set()
        watcher.join()
    assert bad == []
    landed: dict[int, int] = {}
    for r in sink.records:
        landed[r["id"]] = max(landed.get(r["id"], -1), r["v"])
    assert landed == newest
    assert b.stats().accepted == 4 * 100 * 20


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(
        st.lists(st.tuples(st.integers(0, 9), st.integers(0, 5)), max_size=12), max_size=6
    )
)
def test_a_group_is_the_same_as_its_records_added_one_by_one(
    groups: list[list[tuple[int, int]]],
) -> None:
    async def run(many: bool) -> tuple[wb.Stats, list[Any], list[list[Any]]]:
        sink = MemorySink()
        outcomes: list[list[Any]] = []
        async with wb.AsyncBatcher(sink, key="k", version="v", max_pending=8, max_batch=4,
                                   linger=60, when_full="drop_oldest") as b:  # fmt: skip
            receipts = []
            for g in groups:
                records = [{"k": k, "v": v} for k, v in g]
                if many:
                    receipts.append(list(b.add_many_nowait(records)))
                else:
                    receipts.append([b.add_nowait(r) for r in records])
            await b.flush()
            for rs in receipts:
                outcomes.append([await r for r in rs])
        s = b.stats()
        return s, sorted((r["k"], r["v"]) for r in sink.records), outcomes

    assert asyncio.run(run(True)) == asyncio.run(run(False))


async def test_a_group_from_another_thread_wakes_the_flusher() -> None:
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", max_batch=4, linger=60) as b:
        await asyncio.to_thread(b.add_many_nowait, [{"id": i} for i in range(4)])
        await settle(lambda: len(sink.records) == 4)  # max_batch reached: cut at once
