"""``RedisStreamSink`` and ``consume_stream`` in one process, against the real Redis (and
PostgreSQL for the round trip). Never skipped: a missing server fails. Each test has a
stream of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec
import pydantic
import pytest
import redis.asyncio as aioredis

import writebehind as wb
from tests.pg import DSN
from tests.redis_server import SHARED_URL, shared_redis
from writebehind.testing import GatedSink, MemorySink

pytestmark = pytest.mark.server

FAST = {"max_batch": 50, "linger": 0.01}


@pytest.fixture
async def stream() -> AsyncIterator[str]:
    shared_redis().close()  # fails (never skips) without the server
    name = f"wb-test-{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.Redis.from_url(SHARED_URL)
    await client.delete(name)
    await client.aclose()


@pytest.fixture
async def r() -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(SHARED_URL)
    yield client
    await client.aclose()


async def produce(stream: str, records: list[Any], **options: Any) -> wb.Stats:
    async with wb.AsyncBatcher(wb.RedisStreamSink(SHARED_URL, stream=stream), **FAST) as b:
        for record in records:
            await b.add(record)
    return b.stats()


async def consume_until(
    batcher: wb.AsyncBatcher, stream: str, done: Any, timeout: float = 10.0, **kw: Any
) -> wb.StreamReport:
    """Run consume_stream until ``done()`` holds, then close the batcher; its report."""
    task = asyncio.ensure_future(
        wb.consume_stream(
            SHARED_URL,
            stream=stream,
            group=kw.pop("group", "g"),
            consumer=kw.pop("consumer", "c"),
            into=batcher,
            block=0.1,
            **kw,
        )
    )
    async with asyncio.timeout(timeout):
        while not done():
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
    await batcher.close()
    return await asyncio.wait_for(task, 10)


async def until(cond: Any, timeout: float = 10.0) -> None:
    """Poll ``cond()`` (sync, or returning an awaitable) until true."""
    async with asyncio.timeout(timeout):
        while True:
            value = cond()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(0.02)


async def settled(r: Any, stream: str) -> bool:
    return bool((await r.xpending(stream, "g"))["pending"] == 0)


# -- round trip of every record type the SQL sinks accept ---------------------------------------
@dataclasses.dataclass
class Beat:
    id: int
    at: dt.datetime
    who: uuid.UUID
    amount: decimal.Decimal
    day: dt.date
    blob: bytes
    ratio: float
    up: bool
    note: str | None
    doc: dict[str, Any]


class BeatTuple(NamedTuple):
    id: int
    at: dt.datetime
    who: uuid.UUID
    amount: decimal.Decimal
    day: dt.date
    blob: bytes
    ratio: float
    up: bool
    note: str | None
    doc: dict[str, Any]


class BeatStruct(msgspec.Struct):
    id: int
    at: dt.datetime
    who: uuid.UUID
    amount: decimal.Decimal
    day: dt.date
    blob: bytes
    ratio: float
    up: bool
    note: str | None
    doc: dict[str, Any]


class BeatModel(pydantic.BaseModel):
    id: int
    at: dt.datetime
    who: uuid.UUID
    amount: decimal.Decimal
    day: dt.date
    blob: bytes
    ratio: float
    up: bool
    note: str | None
    doc: dict[str, Any]


class BeatObject:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)
        self._private = "never a field"


def fields(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "at": dt.datetime(2026, 12, 3, 10, i % 60, 7, 123456, tzinfo=dt.UTC),
        "who": uuid.UUID(int=i * 7919),
        "amount": decimal.Decimal(f"{i}.000000001"),
        "day": dt.date(2026, 1, 1) + dt.timedelta(days=i),
        "blob": bytes([i % 256, 0, 255]),
        "ratio": [1e300, -0.0, 0.1, 5e-324, 2.5][i % 5],
        "up": i % 2 == 0,
        "note": None if i % 3 == 0 else f"n\u00e9{i}",
        "doc": {"nested": [1, "two", None], "$weird": True, "t": i},
    }


KINDS = {
    "dict": lambda f: f,
    "dataclass": lambda f: Beat(**f),
    "namedtuple": lambda f: BeatTuple(**f),
    "msgspec": lambda f: BeatStruct(**f),
    "pydantic": lambda f: BeatModel(**f),
    "object": lambda f: BeatObject(**f),
}

COLUMNS = (
    "id bigint PRIMARY KEY, at timestamptz, who uuid, amount numeric, day date, blob bytea, "
    "ratio double precision, up boolean, note text, doc jsonb"
)


async def test_round_trip_of_every_record_type_into_postgresql(stream: str) -> None:
    """Records of every kind the SQL sinks accept, through the stream into PostgreSQL, land
    as the same rows as the same records written to PostgreSQL directly (timestamps,
    UUIDs, decimals, dates, bytes, awkward floats, NULLs, JSON, a private attribute)."""
    conn = await asyncpg.connect(DSN)
    direct, via = (f"rt_{uuid.uuid4().hex[:10]}" for _ in range(2))
    try:
        for name in (direct, via):
            await conn.execute(f"CREATE TABLE {name} ({COLUMNS})")
        records = [
            make(fields(i * 10 + k)) for i in range(6) for k, make in enumerate(KINDS.values())
        ]
        options = {"key": "id", **FAST}
        async with wb.AsyncBatcher(wb.PostgresSink(DSN, table=direct, key="id"), **options) as b:
            for record in records:
                await b.add(record)
        stats = await produce(stream, records)
        assert stats.committed == len(records)
        sink = wb.PostgresSink(DSN, table=via, key="id")
        async with wb.AsyncBatcher(sink, **options) as flusher:
            report = await consume_until(
                flusher, stream, lambda: flusher.stats().committed == len(records)
            )
        assert report.acked == len(records)
        assert report.dead_lettered == 0
        want = await conn.fetch(f"SELECT * FROM {direct} ORDER BY id")
        got = await conn.fetch(f"SELECT * FROM {via} ORDER BY id")
        assert len(got) == len(records)
        assert [dict(r) for r in got] == [dict(r) for r in want]
    finally:
        for name in (direct, via):
            await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.close()


async def test_decoded_records_keep_their_python_types(stream: str) -> None:
    """What a flusher's sink receives: dicts of the record's fields, with datetimes, UUIDs,
    decimals, bytes, tuples and awkward floats as they were added."""
    record = {**fields(4), "pair": (1, "x"), "nan_free": float("inf")}
    await produce(stream, [record, Beat(**fields(5))])
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, **FAST) as flusher:
        await consume_until(flusher, stream, lambda: len(sink.records) == 2)
    assert sink.records == [record, fields(5)]


# -- the producer side ---------------------------------------------------------------------------
async def test_a_stream_at_maxlen_is_a_retriable_error_not_a_trim(stream: str, r: Any) -> None:
    """maxlen=10: a batch that does not fit is refused whole with RetriableSinkError (and a
    retry_after: the batcher pauses, its buffer fills, add() blocks); nothing is trimmed.
    Once a consumer deletes entries, the same batch goes in."""
    sink = wb.RedisStreamSink(SHARED_URL, stream=stream, maxlen=10)
    await sink.start()
    try:
        await sink.write([{"id": i} for i in range(8)])
        with pytest.raises(wb.RetriableSinkError, match="maxlen 10") as err:
            await sink.write([{"id": i} for i in range(8, 11)])
        assert err.value.retry_after
        assert err.value.retry_after > 0
        assert await r.xlen(stream) == 8  # refused whole, nothing trimmed
        first = (await r.xrange(stream, count=1))[0][0]
        await r.xdel(stream, first)
        await sink.write([{"id": i} for i in range(8, 11)])
        assert await r.xlen(stream) == 10
        with pytest.raises(wb.PermanentSinkError, match="more than maxlen"):
            await sink.write([{"id": i} for i in range(11)])  # never fits: split by the batcher
    finally:
        await sink.close()


async def test_a_full_stream_pauses_the_producer_until_consumers_catch_up(stream: str) -> None:
    """Through a batcher: with maxlen=100 and 300 records, the producer is throttled (not
    failing, nothing dead-lettered) until a consumer drains the stream; all 300 arrive."""
    sink = MemorySink()
    producer = wb.AsyncBatcher(
        wb.RedisStreamSink(SHARED_URL, stream=stream, maxlen=100),
        max_batch=40,
        linger=0.01,
        max_pending=400,
    )
    async with producer, wb.AsyncBatcher(sink, max_batch=40, linger=0.01) as flusher:
        for i in range(300):
            producer.add_nowait({"id": i})
        await asyncio.sleep(0.3)
        assert producer.stats().throttled > 0
        assert producer.stats().committed <= 100
        await consume_until(flusher, stream, lambda: len(sink.records) == 300, timeout=20)
    assert producer.stats().dead_lettered == 0
    assert sorted(rec["id"] for rec in sink.records) == list(range(300))


async def test_trim_is_explicit(stream: str, r: Any) -> None:
    """trim=True keeps about maxlen entries (XADD MAXLEN ~) and never refuses."""
    sink = wb.RedisStreamSink(SHARED_URL, stream=stream, maxlen=100, trim=True)
    await sink.start()
    try:
        for k in range(10):
            await sink.write([{"id": k * 100 + i} for i in range(100)])
    finally:
        await sink.close()
    assert 100 <= await r.xlen(stream) < 1000


async def test_a_record_the_codec_cannot_carry_is_dead_lettered_alone(stream: str) -> None:
    """A set is isolated by splitting and dead-lettered; the 9 others are in the stream."""
    letters: list[wb.DeadLetterEntry] = []
    sink = wb.RedisStreamSink(SHARED_URL, stream=stream)
    async with wb.AsyncBatcher(sink, dead_letter=letters.extend, **FAST) as b:
        for i in range(10):
            await b.add({"id": i, "tags": {1, 2}} if i == 4 else {"id": i})
    assert b.stats().committed == 9
    assert b.stats().dead_lettered == 1
    assert letters[0].record == {"id": 4, "tags": {1, 2}}


def test_arguments_are_checked_and_secrets_never_shown() -> None:
    url = "redis://:S3cr3t-pw@127.0.0.1:6379/0"
    sink = wb.RedisStreamSink(url, stream="s", maxlen=5)
    assert "S3cr3t" not in repr(sink)
    for bad in ({"stream": ""}, {"stream": "s", "maxlen": 0}, {"stream": "s", "trim": True}):
        with pytest.raises(wb.ConfigError):
            wb.RedisStreamSink(SHARED_URL, **bad)
    with pytest.raises(wb.ConfigError, match="not a Redis URL"):
        wb.RedisStreamSink("http://:S3cr3t@x/0", stream="s")
    import redis as sync_redis

    with pytest.raises(wb.ConfigError, match=r"sync redis\.Redis"):
        wb.RedisStreamSink(sync_redis.Redis(), stream="s")


async def test_start_against_a_dead_redis_fails_without_the_password() -> None:
    sink = wb.RedisStreamSink("redis://:S3cr3t-pw@127.0.0.1:1/0", stream="s")
    with pytest.raises(wb.SinkError) as err:
        await sink.start()
    assert err.value.retriable
    assert "S3cr3t" not in str(err.value)


async def test_a_key_that_is_not_a_stream_is_refused_at_start(stream: str, r: Any) -> None:
    await r.set(stream, "x")
    with pytest.raises(wb.ConfigError, match="not a stream"):
        async with wb.AsyncBatcher(wb.RedisStreamSink(SHARED_URL, stream=stream)):
            pass
    with pytest.raises(wb.ConfigError, match="WRONGTYPE"):
        async with wb.AsyncBatcher(MemorySink()) as b:
            await wb.consume_stream(SHARED_URL, stream=stream, group="g", consumer="c", into=b)


# -- the consumer side ---------------------------------------------------------------------------
async def test_acks_only_after_the_sink_commits(stream: str, r: Any) -> None:
    """While the flusher's sink holds its writes, every entry read stays pending; once it
    commits, they are acknowledged and deleted."""
    await produce(stream, [{"id": i} for i in range(20)])
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, **FAST) as flusher:
        task = asyncio.ensure_future(
            wb.consume_stream(
                SHARED_URL, stream=stream, group="g", consumer="c", into=flusher, block=0.1
            )
        )
        await until(lambda: flusher.stats().in_flight == 20)
        await asyncio.sleep(0.2)
        assert (await r.xpending(stream, "g"))["pending"] == 20
        sink.open()
        await until(lambda: settled(r, stream))
    report = await asyncio.wait_for(task, 5)
    assert report.acked == 20
    assert await r.xlen(stream) == 0


async def test_reads_no_more_than_the_batcher_has_room_for(stream: str, r: Any) -> None:
    """max_pending=30 and a held sink: of 500 entries at most 30 are delivered (pending)."""
    await produce(stream, [{"id": i} for i in range(500)])
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, max_batch=10, max_pending=30, linger=0.01) as flusher:
        task = asyncio.ensure_future(
            wb.consume_stream(
                SHARED_URL, stream=stream, group="g", consumer="c", into=flusher, block=0.1
            )
        )
        await asyncio.sleep(0.5)
        assert (await r.xpending(stream, "g"))["pending"] == 30
        sink.open()
        await until(lambda: len(sink.records) == 500)
    assert (await task).acked == 500


async def test_coalesced_and_dropped_records_are_acknowledged(stream: str, r: Any) -> None:
    """Ten versions of one key coalesce into one write; all ten entries are acknowledged
    once the newest commits, and the sink saw only the newest."""
    await produce(stream, [{"id": "k", "v": v} for v in range(10)])
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", version="v", max_batch=50, linger=0.2) as flusher:
        report = await consume_until(flusher, stream, lambda: flusher.stats().committed == 1)
    assert sink.records == [{"id": "k", "v": 9}]
    assert report.acked == 10
    assert (await r.xpending(stream, "g"))["pending"] == 0


async def test_undecodable_entries_are_dead_lettered_raw_and_acknowledged(
    stream: str, r: Any, tmp_path: Path
) -> None:
    """An entry that is not JSON, one without the field, and a record the batcher refuses
    (no key field) go to the batcher's dead-letter store as they were and are acknowledged;
    the good entry is written."""
    await r.xadd(stream, {"r": b"\xff not json"})
    await r.xadd(stream, {"other": "x"})
    await r.xadd(stream, {"r": '{"no_id": 1}'})
    await r.xadd(stream, {"r": '{"id": 1, "v": 2}'})
    store = wb.SQLiteDeadLetter(tmp_path / "dead.db")
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", dead_letter=store, **FAST) as flusher:
        report = await consume_until(flusher, stream, lambda: len(sink.records) == 1)
    assert report.dead_lettered == 3
    assert report.acked == 4
    entries = await store.list()
    assert len(entries) == 3
    records = [e.record() for e in entries]
    raw = [x for x in records if "fields" in x]
    assert {b"r": b"\xff not json"} in [x["fields"] for x in raw]
    assert await r.xlen(stream) == 0
    assert (await r.xpending(stream, "g"))["pending"] == 0
    await store.close()


async def test_claims_what_a_dead_consumer_left_pending(stream: str, r: Any) -> None:
    """A consumer reads 40 entries and dies without acknowledging: after claim_after
    another claims and writes them, and they are acknowledged."""
    await produce(stream, [{"id": i} for i in range(40)])
    await r.xgroup_create(stream, "g", id="0")
    await r.xreadgroup("g", "dead", {stream: ">"}, count=40)
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, **FAST) as flusher:
        report = await consume_until(
            flusher, stream, lambda: len(sink.records) == 40, claim_after=0.3, consumer="alive"
        )
    assert report.claimed == 40
    assert report.acked == 40
    assert (await r.xpending(stream, "g"))["pending"] == 0


async def test_a_restarted_consumer_reads_its_own_pending_entries_first(
    stream: str, r: Any
) -> None:
    """Entries delivered to consumer "c" and never acknowledged are read again when "c"
    starts again, without waiting for claim_after."""
    await produce(stream, [{"id": i} for i in range(15)])
    await r.xgroup_create(stream, "g", id="0")
    await r.xreadgroup("g", "c", {stream: ">"}, count=15)
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, **FAST) as flusher:
        report = await consume_until(flusher, stream, lambda: len(sink.records) == 15, timeout=3)
    assert report.claimed == 0
    assert report.acked == 15


async def test_cancelled_it_raises_and_leaves_entries_pending(stream: str, r: Any) -> None:
    await produce(stream, [{"id": i} for i in range(20)])
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, **FAST, close_timeout=0.2) as flusher:
        task = asyncio.ensure_future(
            wb.consume_stream(
                SHARED_URL, stream=stream, group="g", consumer="c", into=flusher, block=0.1
            )
        )
        await until(lambda: flusher.stats().in_flight == 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await r.xpending(stream, "g"))["pending"] == 20


async def test_records_lost_at_the_close_deadline_stay_pending(stream: str, r: Any) -> None:
    """The batcher closes with its writes held past close_timeout: the records are LOST,
    so their entries are not acknowledged (another consumer will claim them)."""
    await produce(stream, [{"id": i} for i in range(20)])
    flusher = wb.AsyncBatcher(GatedSink(), **FAST, close_timeout=0.3)
    async with flusher:
        report = await consume_until(flusher, stream, lambda: flusher.stats().in_flight == 20)
    assert report.acked == 0
    assert report.left_pending == 20
    assert (await r.xpending(stream, "g"))["pending"] == 20


async def test_an_existing_group_and_a_missing_stream_are_fine(stream: str, r: Any) -> None:
    """The group may exist already (BUSYGROUP is not an error), and the stream may not
    exist yet (it is created with the group); entries written afterwards are read."""
    await r.xgroup_create(stream, "g", id="0", mkstream=True)
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, **FAST) as flusher:
        task = asyncio.ensure_future(
            wb.consume_stream(
                SHARED_URL, stream=stream, group="g", consumer="c", into=flusher, block=0.1
            )
        )
        await asyncio.sleep(0.2)
        await produce(stream, [{"id": 1}])
        await until(lambda: bool(sink.records))
    assert (await task).acked == 1
    other = f"{stream}-new"
    async with wb.AsyncBatcher(MemorySink(), **FAST) as flusher:
        report = await consume_until(flusher, other, lambda: True, group="g2")
    assert report.read == 0
    assert await r.exists(other) == 1
    await r.delete(other)


def test_a_sync_batcher_runs_it_on_its_own_loop(stream: str) -> None:
    """With a sync Batcher, asyncio.run(consume_stream(...)) from a thread of its own reads
    on the batcher's loop; closing the batcher returns the report."""
    asyncio.run(produce(stream, [{"id": i} for i in range(30)]))
    sink = MemorySink()
    box: list[wb.StreamReport] = []
    with wb.Batcher(sink, **FAST) as batcher:
        reader = threading.Thread(
            target=lambda: box.append(
                asyncio.run(
                    wb.consume_stream(
                        SHARED_URL, stream=stream, group="g", consumer="c", into=batcher, block=0.1
                    )
                )
            )
        )
        reader.start()
        for _ in range(250):
            if len(sink.records) == 30:
                break
            threading.Event().wait(0.02)
    reader.join(10)
    assert box
    assert box[0].acked == 30


async def test_bad_arguments_are_refused(stream: str) -> None:
    async with wb.AsyncBatcher(MemorySink()) as b:
        for bad in (
            {"claim_after": 0},
            {"claim_after": float("nan")},
            {"count": 0},
            {"block": -1},
            {"group": ""},
            {"consumer": None},
        ):
            kw: dict[str, Any] = {"group": "g", "consumer": "c", **bad}
            with pytest.raises(wb.ConfigError):
                await wb.consume_stream(SHARED_URL, stream=stream, into=b, **kw)
        with pytest.raises(wb.ConfigError, match="into"):
            await wb.consume_stream(
                SHARED_URL, stream=stream, group="g", consumer="c", into=object()
            )  # type: ignore[arg-type]
    with pytest.raises(wb.WriteBehindError, match="start the batcher"):
        await wb.consume_stream(
            SHARED_URL, stream=stream, group="g", consumer="c", into=wb.AsyncBatcher(MemorySink())
        )


def test_the_consumers_fast_decoder_agrees_with_the_codec() -> None:
    """consume_stream decodes entries with a json object_hook; for every tag the codec
    writes (and a user dict that looks like a tag) it gives what the codec's decode does."""
    from writebehind.dlq._codec import decode, encode
    from writebehind.scale._stream_entries import record_of as _record

    values: list[Any] = [
        fields(3), Beat(**fields(8)), {"$dt": "not a date"}, {"$x": {"$uuid": 1}},
        {1: "int key", (1, 2): [b"\x00", (3, {"a": dt.time(1, 2)})]}, {"s": "a\x00b\ud800"},
        {"deep": [[[{"n": 1e-310}]]]}, (1, "t"), [], {},
    ]  # fmt: skip
    for value in values:
        text, _, _ = encode(value)
        assert _record({b"r": text.encode()}) == decode(text), value
