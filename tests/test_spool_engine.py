"""The batcher in spool mode (``spool=``): durable adds, recovery by the next batcher,
``SPOOLED`` at the close deadline, done records trimmed, one batcher per spool, fork."""

from __future__ import annotations

import asyncio
import contextlib
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


# -- found by a hostile review -------------------------------------------------------------
@pytest.mark.parametrize("policy", ["block", "raise", "direct"])
async def test_a_record_coalescing_into_a_full_buffer_is_spooled(
    tmp_path: Path, policy: Any
) -> None:
    """The buffer is full but the key is pending: the record is taken (coalesced), so it
    must be in the spool too. Before, it was taken with no seq (not durable, LOST at close)
    and the version it replaced was marked done: the key vanished from the spool."""
    spool = tmp_path / "spool"
    gate = GatedSink()
    b = wb.AsyncBatcher(gate, key="id", version="v", spool=spool, linger=0, max_batch=2,
                        max_pending=4, when_full=policy)  # fmt: skip
    await b.start()
    for i in range(4):
        await b.add({"id": i, "v": 1})
    await settle(lambda: gate.waiting >= 1)
    r = await b.add({"id": 3, "v": 2})
    assert r._seq > 0
    report = await b.close(timeout=0.3)
    assert report.lost == 0
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=spool) as again:
        await again.flush()
    assert sorted((x["id"], x["v"]) for x in rows(sink)) == [(0, 1), (1, 1), (2, 1), (3, 2)]


async def test_a_record_whose_key_does_not_survive_the_spool_is_refused(tmp_path: Path) -> None:
    """A record comes back from the spool as plain data (a dataclass as a dict of its
    fields, an enum as its value). If this batcher's key, version or cost would read it
    differently after a round trip, recovery could not take it back: it is refused at add()
    with RecordError, not acknowledged and then stranded in the spool."""
    import dataclasses
    import enum

    @dataclasses.dataclass
    class Ev:
        id: int
        v: int

    class Kind(enum.Enum):
        A = "a"

    async with wb.AsyncBatcher(MemorySink(), key=lambda r: r.id, spool=tmp_path / "s") as b:
        with pytest.raises(wb.RecordError, match="spool"):
            await b.add(Ev(1, 1))
        assert b.stats().accepted == 0
    async with wb.AsyncBatcher(MemorySink(), key="kind", spool=tmp_path / "t") as b:
        with pytest.raises(wb.RecordError, match="spool"):
            await b.add({"kind": Kind.A})
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=tmp_path / "u") as b:
        await b.add(Ev(2, 5))  # a field name reads the dict as it read the dataclass
        await b.flush()
    assert rows(sink)[0].id == 2


@pytest.mark.parametrize("api", ["async", "sync"])
def test_a_full_spool_under_block_waits_within_the_timeout_and_close_returns(
    tmp_path: Path, api: str
) -> None:
    """The spool is full (the sink never answers): add(timeout=) waits for room without
    spinning or recursing (RecursionError before), raises BufferFull after its one
    deadline, and close() returns within its own deadline even with adds waiting (it hung:
    the waits held the default executor's threads that close needed)."""
    import threading
    import time

    spool = wb.Spool(tmp_path / "s", max_bytes=64 * 1024, segment_bytes=16 * 1024)
    gate = GatedSink()

    def fill(add: Any) -> int:
        n = 0
        while True:
            try:
                add({"id": n, "pad": "y" * 200})
            except wb.BufferFull:
                return n
            n += 1

    if api == "async":

        async def run() -> None:
            b = wb.AsyncBatcher(gate, key="id", spool=spool, linger=3600, max_pending=100000)
            await b.start()
            fill(b.add_nowait)
            t0 = time.monotonic()
            with pytest.raises(wb.BufferFull):
                await b.add({"id": "big", "pad": "z" * 8000}, timeout=0.5)
            assert 0.4 < time.monotonic() - t0 < 2.0
            waiters = [asyncio.ensure_future(b.add({"id": f"w{i}"})) for i in range(12)]
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            report = await b.close(timeout=1.0)
            assert time.monotonic() - t0 < 3.0
            assert report.lost == 0
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

        asyncio.run(run())
    else:
        b = wb.Batcher(gate, key="id", spool=spool, linger=3600, max_pending=100000)
        b.start()
        fill(b.add_nowait)
        t0 = time.monotonic()
        with pytest.raises(wb.BufferFull):
            b.add({"id": "big", "pad": "z" * 8000}, timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 2.0
        threads = [threading.Thread(target=_swallow, args=(b.add, {"id": f"w{i}"}))
                   for i in range(6)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        b.close(timeout=1.0)
        assert time.monotonic() - t0 < 3.0
        for t in threads:
            t.join(5)
            assert not t.is_alive()


def _swallow(fn: Any, *args: Any) -> None:
    with contextlib.suppress(wb.WriteBehindError):
        fn(*args)


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_a_drop_policy_drops_when_the_spool_is_full_instead_of_raising(
    tmp_path: Path, policy: Any
) -> None:
    spool = wb.Spool(tmp_path / "s", max_bytes=64 * 1024, segment_bytes=16 * 1024)
    opts: dict[str, Any] = {"linger": 3600, "max_pending": 100000, "close_timeout": 0.3}
    async with wb.AsyncBatcher(GatedSink(), key="id", spool=spool, when_full=policy, **opts) as b:
        outcomes = [b.add_nowait({"id": i, "pad": "y" * 200}).outcome for i in range(400)]
        assert wb.Outcome.DROPPED in outcomes
        s = b.stats()
        assert s.dropped > 0
        assert s.accepted == 400


async def test_a_spool_that_cannot_open_leaves_the_sink_unstarted(tmp_path: Path) -> None:
    """The spool opens before the sink starts: a spool path that is a file fails start()
    with ConfigError and the sink was never started (a PostgreSQL pool leaked before)."""

    class Counted(MemorySink):
        started = 0

        async def start(self) -> None:
            Counted.started += 1

    (tmp_path / "afile").write_text("x")
    b = wb.AsyncBatcher(Counted(), spool=tmp_path / "afile")
    with pytest.raises(wb.ConfigError):
        await b.start()
    assert Counted.started == 0


async def test_dead_letters_the_store_failed_to_keep_stay_in_the_spool(tmp_path: Path) -> None:
    """A poison record whose dead-letter store raises is counted (dead_letter_errors) and,
    in spool mode, not marked done: the next batcher on the spool tries it again (it was
    erased from the spool before, kept nowhere)."""
    from writebehind.testing import FlakySink

    spool = tmp_path / "spool"

    def broken_store(entries: Any) -> None:
        raise OSError("the dead-letter disk is gone")

    sink = FlakySink(poison=lambda r: r["id"] == 3)
    async with wb.AsyncBatcher(sink, key="id", spool=spool, dead_letter=broken_store) as b:
        for i in range(5):
            await b.add({"id": i})
        await b.flush()
        s = b.stats()
        assert (s.dead_lettered, s.dead_letter_errors) == (1, 1)
    healthy = MemorySink()
    async with wb.AsyncBatcher(healthy, key="id", spool=spool) as again:
        await again.flush()
        assert again.stats().recovered == 1
    assert rows(healthy) == [{"id": 3}]  # tried again, and this time written


async def test_keyless_records_recovered_and_new_ones_are_all_delivered(tmp_path: Path) -> None:
    """Without a key every record is its own: recovered ones and new ones must not take each
    other's place in the buffer (each put closure counted its own keyless slots from 0, so a
    new keyless record overwrote a recovered one, which was then never written)."""
    spool = tmp_path / "spool"
    gate = GatedSink()
    first = wb.AsyncBatcher(gate, spool=spool, linger=3600, max_batch=1000)
    await first.start()
    for i in range(20):
        await first.add({"n": i})
    report = await first.close(timeout=0.3)
    assert report.spooled == 20
    sink = MemorySink()
    async with wb.AsyncBatcher(sink, spool=spool, linger=3600, max_batch=1000) as second:
        assert second.stats().recovered == 20
        for i in range(20, 30):
            await second.add({"n": i})
        await asyncio.wait_for(second.flush(), 10)
        s = second.stats()
        assert (s.accepted, s.committed, s.pending) == (30, 30, 0)
    assert sorted(r["n"] for r in rows(sink)) == list(range(30))


async def test_a_record_the_full_spool_refuses_is_not_left_in_the_buffer(tmp_path: Path) -> None:
    """The spool append happens under the buffer's lock, once the put knows the buffer takes
    the record (one lock round trip per add): when the spool refuses it then (SpoolFull),
    the buffer must not keep it either, as a new key or coalesced into a pending one."""
    spool = wb.Spool(tmp_path / "s", max_bytes=64 * 1024, segment_bytes=16 * 1024)
    opts: dict[str, Any] = {"linger": 3600, "max_pending": 100000, "close_timeout": 0.3}
    async with wb.AsyncBatcher(GatedSink(), key="id", spool=spool, when_full="raise", **opts) as b:
        taken = 0
        while taken < 400:
            try:
                b.add_nowait({"id": taken, "pad": "y" * 200})
            except wb.SpoolFull:
                break
            taken += 1
        assert 0 < taken < 400
        with pytest.raises(wb.SpoolFull):
            b.add_nowait({"id": 0, "pad": "z" * 200})  # its key is pending
        s = b.stats()
        assert s.accepted == s.pending == s.spooled == taken
        assert b.peek(taken) is None
        assert b.peek(0) == {"id": 0, "pad": "y" * 200}
