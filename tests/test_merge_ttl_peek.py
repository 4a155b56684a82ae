"""merge= (one record from a pending one and a new one), ttl= (records pending too long are
dropped as expired) and peek(key) (read a pending or in-flight write), through both APIs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pydantic
import pytest

import writebehind as wb
from writebehind.testing import GatedSink, ManualClock, MemorySink

from .conftest import Open, assert_conserved, idle, settle

OC = wb.Outcome
FAR = 3600.0


# -- merge ---------------------------------------------------------------------------------
async def test_sum_fields_lands_many_deltas_as_one_row(api: Open) -> None:
    sink = MemorySink()
    async with api(sink, key="page", merge=wb.merge.sum_fields("views"), linger=FAR) as b:
        receipts = [b.add_nowait({"page": "/", "views": 1}) for _ in range(100)]
        b.add_nowait({"page": "/about", "views": 2})
        assert b.stats().pending == 2
        assert b.batcher.peek("/") == {"page": "/", "views": 100}
        await b.flush()
        assert await b.outcome(receipts[0]) is OC.COALESCED
        assert await b.outcome(receipts[-1]) is OC.COMMITTED
    assert sorted(sink.records, key=lambda r: r["page"]) == [
        {"page": "/", "views": 100},
        {"page": "/about", "views": 2},
    ]
    s = b.stats()
    assert (s.accepted, s.coalesced, s.committed) == (101, 99, 2)


async def test_presence_keeps_first_seen_and_the_latest_rest(api: Open) -> None:
    sink = MemorySink()
    merge = wb.merge.combine(wb.merge.keep_first("first_seen"), wb.merge.latest)
    async with api(sink, key="id", version="last_seen", merge=merge, linger=FAR) as b:
        for t in (10, 20, 30):
            b.add_nowait({"id": 1, "first_seen": t, "last_seen": t, "status": f"s{t}"})
        await b.flush()
    assert sink.records == [{"id": 1, "first_seen": 10, "last_seen": 30, "status": "s30"}]


async def test_a_merge_that_raises_refuses_the_record_and_leaves_the_pending_one(
    api: Open,
) -> None:
    def picky(old: Any, new: Any) -> Any:
        if new["n"] < 0:
            raise ValueError("negative")
        return {**new, "n": old["n"] + new["n"]}

    sink = MemorySink()
    async with api(sink, key="id", merge=picky, linger=FAR) as b:
        b.add_nowait({"id": 1, "n": 5})
        with pytest.raises(wb.RecordError, match=r"merge raised ValueError: negative \(key 1\)"):
            b.add_nowait({"id": 1, "n": -1})
        assert b.stats().accepted == 1
        await b.flush()
    assert sink.records == [{"id": 1, "n": 5}]


async def test_add_many_merges_within_a_group() -> None:
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="k", merge=wb.merge.sum_fields("n"), linger=FAR) as b:
        group = b.add_many_nowait([{"k": i % 3, "n": 1} for i in range(30)])
        await b.flush()
        assert await group == {OC.COMMITTED: 3, OC.COALESCED: 27}
    assert sorted(r["n"] for r in sink.records) == [10, 10, 10]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"key": "id", "merge": "sum"}, "merge: must be a function"),
        ({"merge": wb.merge.latest}, "merge: needs a key"),
        ({"key": "id", "merge": wb.merge.latest, "spool": "s"}, "merge: cannot be combined"),
    ],
)
def test_merge_config_errors(options: dict[str, Any], says: str) -> None:
    with pytest.raises(wb.ConfigError, match=says):
        wb.AsyncBatcher(MemorySink(), **options)


@dataclasses.dataclass(frozen=True)
class Hit:
    page: str
    views: int
    tags: frozenset[str] = frozenset()


class HitNT(NamedTuple):
    page: str
    views: int


class HitStruct(msgspec.Struct):
    page: str
    views: int


class HitModel(pydantic.BaseModel):
    page: str
    views: int


@pytest.mark.parametrize(
    "make", [dict, Hit, HitNT, HitStruct, HitModel], ids=lambda m: getattr(m, "__name__", "")
)
def test_sum_fields_on_every_record_type(make: Any) -> None:
    def rec(views: int) -> Any:
        return make(page="/", views=views)

    old, new = rec(3), rec(4)
    merged = wb.merge.sum_fields("views")(old, new)
    assert type(merged) is type(new)
    assert (merged["views"] if isinstance(merged, dict) else merged.views) == 7
    assert (old, new) == (rec(3), rec(4))  # neither input changed


def test_union_keep_first_and_bad_arguments() -> None:
    merged = wb.merge.union_fields("tags")(
        Hit("/", 1, frozenset({"a"})), Hit("/", 2, frozenset({"b"}))
    )
    assert merged.tags == frozenset({"a", "b"})
    assert wb.merge.keep_first("views")({"views": 1}, {"views": 2}) == {"views": 1}
    assert wb.merge.sum_fields("n")({}, {"n": None}) == {"n": 0}
    with pytest.raises(TypeError, match="field names"):
        wb.merge.sum_fields()
    with pytest.raises(TypeError, match="merge functions"):
        wb.merge.combine("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot make a changed copy of a object"):
        wb.merge.sum_fields("n")(object(), object())


# -- ttl -----------------------------------------------------------------------------------
async def test_records_pending_longer_than_ttl_are_dropped_as_expired(
    api: Open, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A write held at the gate keeps B and B' pending; 10 s pass (ttl=5); C is added. When
    the gate opens, A (in flight) commits, B' (B coalesced into it) expires, C is written."""
    sink = GatedSink()
    async with api(sink, key="id", version="v", ttl=5.0, linger=0, max_batch=10,
                   clock=clock) as b:  # fmt: skip
        a = b.add_nowait({"id": "A", "v": 1})
        await settle(lambda: sink.waiting == 1)
        b1 = b.add_nowait({"id": "B", "v": 1})
        b2 = b.add_nowait({"id": "B", "v": 2})
        clock.advance(10)
        assert b.batcher.peek("B") is None  # expired: never returned
        c = b.add_nowait({"id": "C", "v": 1})
        with caplog.at_level(logging.WARNING, logger="writebehind"):
            sink.open()
            await b.flush()
        assert [await b.outcome(r) for r in (a, b1, b2, c)] == [
            OC.COMMITTED, OC.DROPPED, OC.DROPPED, OC.COMMITTED
        ]  # fmt: skip
        s = b.stats()
        assert (s.dropped, s.dropped_by_reason["expired"], s.coalesced) == (1, 1, 1)
        assert_conserved(s)
        assert any("ttl=5 s were dropped as expired" in m for m in caplog.messages)
    assert sorted(r["id"] for r in sink.records) == ["A", "C"]


async def test_an_expired_record_is_published_as_dropped(clock: ManualClock) -> None:
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="id", ttl=1.0, linger=0, clock=clock) as b:
        sub = b.events()
        b.add_nowait({"id": 1})
        await settle(lambda: sink.waiting == 1)
        b.add_nowait({"id": 2})
        clock.advance(2)
        sink.open()
        await b.flush()
        seen = []
        async with asyncio.timeout(2):
            async for e in sub:
                seen.append(e)
                if isinstance(e, wb.RecordsDropped):
                    break
        drop = seen[-1]
        assert isinstance(drop, wb.RecordsDropped)
        assert (drop.reason, drop.count) == ("expired", 1)


async def test_expired_records_are_done_in_the_spool(tmp_path: Path, clock: ManualClock) -> None:
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="id", ttl=1.0, linger=0, clock=clock,
                               spool=tmp_path / "s") as b:  # fmt: skip
        await b.add({"id": 1})
        await settle(lambda: sink.waiting == 1)
        await b.add({"id": 2})
        clock.advance(2)
        sink.open()
        await b.flush()
        assert b.stats().dropped_by_reason["expired"] == 1
    async with wb.AsyncBatcher(MemorySink(), key="id", spool=tmp_path / "s") as again:
        assert again.stats().recovered == 0


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, "5", True])
def test_ttl_must_be_a_positive_finite_number(ttl: Any) -> None:
    with pytest.raises(wb.ConfigError, match="ttl"):
        wb.AsyncBatcher(MemorySink(), key="id", ttl=ttl)


# -- peek ----------------------------------------------------------------------------------
async def test_peek_finds_pending_then_in_flight_then_nothing(api: Open) -> None:
    sink = GatedSink()
    key = uuid.uuid4()
    async with api(sink, key="id", version="v", linger=0, max_batch=1) as b:
        assert b.batcher.peek(key) is None
        b.add_nowait({"id": key, "v": 1})
        await settle(lambda: sink.waiting == 1)
        assert b.batcher.peek(key) == {"id": key, "v": 1}  # in flight
        b.add_nowait({"id": key, "v": 2})
        assert b.batcher.peek(key) == {"id": key, "v": 2}  # pending, newer
        assert b.batcher.peek(uuid.uuid4()) is None
        assert b.batcher.peek([1]) is None  # unhashable: no record can have it
        sink.open()
        await b.flush()
        assert b.batcher.peek(key) is None  # written: read the datastore


async def test_peek_prefers_a_newer_version_in_flight_over_an_older_pending_one() -> None:
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key=("tenant", "id"), version="v", linger=0,
                               max_batch=1) as b:  # fmt: skip
        b.add_nowait({"tenant": "t", "id": 1, "v": 5})
        await settle(lambda: sink.waiting == 1)
        b.add_nowait({"tenant": "t", "id": 1, "v": 3})  # late and older: loses at the sink
        assert b.peek(("t", 1)) == {"tenant": "t", "id": 1, "v": 5}
        sink.open()


def test_sync_peek_from_threads() -> None:
    sink = MemorySink()
    with wb.Batcher(sink, key="id", linger=FAR) as b:
        b.add({"id": "x", "n": 1})
        assert b.peek("x") == {"id": "x", "n": 1}
        b.flush(5)
        assert b.peek("x") is None


async def test_peek_sees_the_spill_queue_first(tmp_path: Path) -> None:
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="id", spool=tmp_path / "s", when_full="spill",
                               max_pending=1, max_batch=1, linger=0) as b:  # fmt: skip
        b.add_nowait({"id": "Y", "n": 0})
        await settle(lambda: sink.waiting == 1)  # the buffer is full: the next ones spill
        b.add_nowait({"id": "K", "n": 1})
        b.add_nowait({"id": "K", "n": 2})
        assert b.peek("K") == {"id": "K", "n": 2}
        sink.open()
        await b.flush()
        await idle()
        assert b.peek("K") is None
