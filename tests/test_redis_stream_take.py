"""How ``consume_stream`` hands what it read to the batcher (``scale/streams.py``
``_Reader._take``): a read's records in one ``add_many_nowait``, the rest one by one when
that stops part-way, each entry tracked once, in order; and the decoder's fast path
(``_stream_entries.record_of``) on text that is not exactly one JSON value."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.scale._stream_acks import Acks
from writebehind.scale._stream_entries import record_of
from writebehind.scale.streams import _Reader
from writebehind.testing import GatedSink, MemorySink


def entries(records: list[Any]) -> list[tuple[bytes, Any]]:
    return [(f"1-{i}".encode(), {b"r": json.dumps(r).encode()}) for i, r in enumerate(records)]


def reader(into: wb.AsyncBatcher) -> _Reader:
    return _Reader(None, "s", "g", "c", into, 30.0, None, 1.0)  # type: ignore[arg-type]


def test_the_decoder_falls_back_to_json_for_whitespace_and_refuses_the_rest() -> None:
    assert record_of({b"r": b' {"a": 1}\n'}) == {"a": 1}
    assert record_of({"r": '{"a": [1, {"$uuid": "00000000-0000-0000-0000-000000000001"}]}'}) == {
        "a": [1, uuid.UUID(int=1)]
    }
    for text in (b'{"a": 1} x', b"[1] [2]", b"", b"   ", b"{", b'{"a": }'):
        with pytest.raises(json.JSONDecodeError):
            record_of({b"r": text})


async def test_a_refused_record_in_the_middle_of_a_read_is_dead_lettered_alone(
    tmp_path: Path,
) -> None:
    """The group is refused whole (a record with no key): the records go one by one, the
    refused one is dead-lettered and acknowledged, the others before and after it are
    tracked in order."""
    store = wb.SQLiteDeadLetter(tmp_path / "dead.db")
    async with wb.AsyncBatcher(MemorySink(), key="id", dead_letter=store, linger=10) as b:
        rd = reader(b)
        acks = Acks("s", "g", delete=False)
        await rd._take(entries([{"id": 1}, {"id": 2}, {"no_id": 3}, {"id": 4}]), acks)
        assert [i for i, _ in acks.tracked] == [b"1-0", b"1-1", b"1-3"]
        assert acks.to_ack == [b"1-2"]
        assert (rd.added, rd.dead_lettered) == (3, 1)
        assert b.stats().held == 3
    assert len(await store.list()) == 1
    await store.close()


async def test_a_read_that_fills_the_buffer_part_way_waits_for_room_for_the_rest() -> None:
    """add_many_nowait takes what fits (5 of 10) and raises BufferFull; the other 5 wait
    for room (add), and every entry is tracked once, in order."""
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, max_batch=5, max_pending=10, linger=0.01) as b:
        for i in range(5):
            b.add_nowait({"id": f"x{i}"})
        rd = reader(b)
        acks = Acks("s", "g", delete=False)
        take = asyncio.ensure_future(rd._take(entries([{"id": i} for i in range(10)]), acks))
        await asyncio.sleep(0.2)
        assert not take.done()
        assert [i for i, _ in acks.tracked] == [f"1-{i}".encode() for i in range(5)]
        sink.open()
        await asyncio.wait_for(take, 5)
        assert [i for i, _ in acks.tracked] == [f"1-{i}".encode() for i in range(10)]
        assert rd.added == 10
    assert len(sink.records) == 15


async def test_a_read_into_a_closed_batcher_leaves_its_entries_pending() -> None:
    """Nothing is tracked (so nothing acknowledged): the entries stay pending."""
    b = wb.AsyncBatcher(MemorySink())
    async with b:
        pass
    rd = reader(b)
    acks = Acks("s", "g", delete=False)
    with pytest.raises(wb.BatcherClosed):
        await rd._take(entries([{"id": 1}, {"id": 2}]), acks)
    assert (rd.added, rd.unadded, len(acks)) == (0, 2, 0)
