"""SpoolLog: append, group commit, durability signals, done and trimming, room, stats."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.spool import SpoolClosed, SpoolFull, SpoolLog

from .spool_helpers import open_log, rec, spool_at


def test_records_survive_a_reopen(tmp_path: Path) -> None:
    """UUIDs, datetimes, decimals, nested dicts, lists and tuples come back in append order
    with their sequence numbers."""
    records: list[Any] = [
        {"id": uuid.uuid4(), "at": dt.datetime.now(dt.UTC), "n": decimal.Decimal("1.10")},
        {"nested": {"a": [1, (2, 3)], "b": {"c": None}}},
        (1, "two", 3.0),
        "plain",
    ]
    with open_log(tmp_path) as log:
        seqs = [log.append(r) for r in records]
        assert log.wait_durable(seqs[-1], timeout=10)
    with open_log(tmp_path) as log:
        assert log.recovered() == list(zip(seqs, records, strict=True))


def test_an_unencodable_record_writes_nothing(tmp_path: Path) -> None:
    """RecordError at append; no sequence number is used and nothing reaches the disk."""
    with open_log(tmp_path) as log:
        before = log.stats()
        with pytest.raises(wb.RecordError, match="cannot spool"):
            log.append({"callback": print})
        with pytest.raises(wb.RecordError, match="record 1"):
            log.append_many([rec(1), {"x": object()}])
        assert log.append(rec(1)) == before.durable_seq + 1
        assert log.wait_durable(before.durable_seq + 1, timeout=10)
    with open_log(tmp_path) as log:
        assert [r for _, r in log.recovered()] == [rec(1)]


def test_sequence_numbers_keep_rising_across_opens(tmp_path: Path) -> None:
    """Even with everything done and trimmed, the next log numbers after the last one."""
    with open_log(tmp_path) as log:
        seqs = log.append_many(rec(i) for i in range(10))
        log.wait_durable(seqs[-1], timeout=10)
        log.done(seqs)
    with open_log(tmp_path) as log:
        assert log.recovered() == []
        assert log.append(rec(99)) == 11


def test_done_records_are_not_recovered(tmp_path: Path) -> None:
    """Marked done, a record is not given back after a reopen."""
    with open_log(tmp_path) as log:
        seqs = log.append_many(rec(i) for i in range(50))
        log.wait_durable(seqs[-1], timeout=10)
        log.done(seqs[::2])
    with open_log(tmp_path) as log:
        assert [s for s, _ in log.recovered()] == seqs[1::2]


def test_done_segments_are_deleted(tmp_path: Path) -> None:
    """Once every record of a sealed segment is done, its files go; bytes fall."""
    with open_log(tmp_path) as log:
        seqs = []
        for i in range(400):  # ~20 segments of 4 KiB
            seqs.append(log.append(rec(i)))
            if i % 20 == 0:
                log.wait_durable(seqs[-1], timeout=10)
        log.wait_durable(seqs[-1], timeout=10)
        full = log.stats()
        assert full.segments > 5
        log.done(seqs)
        deadline = time.monotonic() + 10
        while log.stats().segments > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        after = log.stats()  # the active segment too, once all done and a quarter full
        assert after.segments == 1
        assert after.spooled == 0
        assert after.bytes == 0  # an empty new segment
        (seg,) = [f for f in os.listdir(log.path) if f.endswith((".seg", ".done"))]
        assert seg.startswith(f"{seqs[-1] + 1:020d}-")  # the sequence floor, on disk
        seq = log.append(rec(1))
        assert log.wait_durable(seq, timeout=10)
        assert log.stats().segments == 1


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    """32 threads appending and waiting concurrently: far fewer fsyncs than appends."""
    per_thread, threads = 30, 32
    with open_log(tmp_path, segment_bytes=1 << 18, max_bytes=1 << 22) as log:
        start = threading.Barrier(threads)

        def work() -> None:
            start.wait()
            for i in range(per_thread):
                assert log.wait_durable(log.append(rec(i)), timeout=30)

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stats = log.stats()
    appends = per_thread * threads
    assert stats.durable_seq == appends
    assert stats.fsyncs < appends / 3, stats


def test_one_thread_one_fsync_per_append(tmp_path: Path) -> None:
    """Alone, each append waits for its own fsync (the baseline the sharing beats)."""
    with open_log(tmp_path) as log:
        base = log.stats().fsyncs
        for i in range(20):
            log.wait_durable(log.append(rec(i)), timeout=10)
        assert log.stats().fsyncs - base >= 20


def test_never_mode_does_not_fsync(tmp_path: Path) -> None:
    """fsync='never' writes and reports durable without syncing anything."""
    with open_log(tmp_path, fsync="never") as log:
        seq = log.append_many(rec(i) for i in range(100))[-1]
        assert log.wait_durable(seq, timeout=10)
        assert log.stats().fsyncs == 0


def test_full_spool_raises_and_room_returns(tmp_path: Path) -> None:
    """At max_bytes, append raises SpoolFull (a BufferFull); wait_for_room returns once done
    records are trimmed."""
    with open_log(tmp_path, max_bytes=16384, segment_bytes=4096) as log:
        seqs: list[int] = []
        caught = None
        while caught is None:
            try:
                seqs.append(log.append(rec(len(seqs))))
            except SpoolFull as exc:
                caught = exc
        assert isinstance(caught, wb.BufferFull)
        assert "max_bytes=16384" in str(caught)
        assert not log.wait_for_room(timeout=0.05, nbytes=2000)
        log.wait_durable(seqs[-1], timeout=10)
        threading.Timer(0.05, log.done, [seqs]).start()
        assert log.wait_for_room(timeout=10, nbytes=2000)
        log.append(rec(0))


def test_stats(tmp_path: Path) -> None:
    """stats() counts spooled records, bytes, the oldest one's age and syncs."""
    with open_log(tmp_path) as log:
        s0 = log.stats()
        assert (s0.spooled, s0.oldest_age, s0.appended) == (0, None, 0)
        seqs = log.append_many(rec(i) for i in range(10))
        log.wait_durable(seqs[-1], timeout=10)
        time.sleep(0.02)
        s = log.stats()
        assert s.spooled == 10
        assert s.appended == 10
        assert s.queued == 0
        assert s.oldest_age is not None
        assert s.oldest_age >= 0.02
        assert s.bytes > s0.bytes
        assert s.fsyncs > s0.fsyncs
        assert s.segments == 1
        log.done(seqs[:4])
        deadline = time.monotonic() + 5
        while log.stats().spooled != 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.stats().spooled == 6


def test_oldest_age_is_kept_across_opens(tmp_path: Path) -> None:
    """A recovered record's age counts from its original append."""
    with open_log(tmp_path) as log:
        log.wait_durable(log.append(rec(1)), timeout=10)
    time.sleep(0.05)
    with open_log(tmp_path) as log:
        age = log.stats().oldest_age
        assert age is not None
        assert age >= 0.05
        assert log.stats().recovered == 1


async def test_wait_durable_async(tmp_path: Path) -> None:
    """An event loop awaits durability without blocking; many waiters, one commit."""
    log = await asyncio.to_thread(open_log, tmp_path)
    try:
        seqs = log.append_many(rec(i) for i in range(100))
        await asyncio.gather(*(log.wait_durable_async(s) for s in seqs))
        assert log.durable_seq >= seqs[-1]
        await log.wait_durable_async(seqs[0])  # already durable: returns at once
    finally:
        await asyncio.to_thread(log.close)


def test_on_durable_reports_the_watermark(tmp_path: Path) -> None:
    """Listeners see the watermark rise, from the writer thread; unsubscribing stops them."""
    seen: list[tuple[int, Any]] = []
    with open_log(tmp_path) as log:
        off = log.on_durable(lambda seq, err: seen.append((seq, err)))
        seq = log.append(rec(1))
        log.wait_durable(seq, timeout=10)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.001)
        off()
        assert seen[-1] == (seq, None)
        n = len(seen)
        log.wait_durable(log.append(rec(2)), timeout=10)
        time.sleep(0.02)
        assert len(seen) == n


def test_a_raising_listener_does_not_stop_the_log(tmp_path: Path, caplog: Any) -> None:
    """A listener's exception is logged; commits go on."""

    def bad(seq: int, err: object) -> None:
        raise RuntimeError("listener bug")

    with open_log(tmp_path) as log:
        log.on_durable(bad)
        assert log.wait_durable(log.append(rec(1)), timeout=10)
        assert log.wait_durable(log.append(rec(2)), timeout=10)


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    """close() commits what is queued, returns 0 lost, and can be called again; afterwards
    appends raise SpoolClosed and the directory can be opened again."""
    log = open_log(tmp_path)
    seqs = log.append_many(rec(i) for i in range(20))
    assert log.close() == 0
    assert log.close() == 0
    assert log.durable_seq == seqs[-1]
    with pytest.raises(SpoolClosed):
        log.append(rec(0))
    with pytest.raises(SpoolClosed):
        log.wait_for_room(timeout=1)
    with open_log(tmp_path) as again:
        assert len(again.recovered()) == 20


def test_threads_and_an_event_loop_append_together(tmp_path: Path) -> None:
    """Appends from several threads get distinct, gap-free sequence numbers."""
    with open_log(tmp_path) as log:
        got: list[int] = []
        lock = threading.Lock()

        def work(base: int) -> None:
            mine = [log.append(rec(base + i)) for i in range(200)]
            with lock:
                got.extend(mine)

        ts = [threading.Thread(target=work, args=(k * 1000,)) for k in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sorted(got) == list(range(1, 1601))
        assert log.wait_durable(1600, timeout=10)


def test_open_accepts_a_plain_path(tmp_path: Path) -> None:
    """SpoolLog.open takes a path and applies the defaults."""
    with SpoolLog.open(tmp_path / "plain") as log:
        assert log.spool.max_bytes == 1 << 30
    assert spool_at(tmp_path).segment_bytes == 4096


def test_done_before_durable_is_kept(tmp_path: Path) -> None:
    """A record marked done before its group commit (delivered straight from memory) is
    not given back after a reopen."""
    with open_log(tmp_path) as log:
        seqs = log.append_many(rec(i) for i in range(5))
        log.done(seqs[1:3])  # maybe before the writer even saw them
        log.wait_durable(seqs[-1], timeout=10)
    with open_log(tmp_path) as log:
        assert [s for s, _ in log.recovered()] == [seqs[0], *seqs[3:]]


def test_recovered_records_marked_done_are_trimmed(tmp_path: Path) -> None:
    """Marking recovered records done in the next life removes their old segments."""
    with open_log(tmp_path) as log:
        for i in range(300):
            log.wait_durable(log.append(rec(i)), timeout=10)
        assert log.stats().segments > 3
    with open_log(tmp_path) as log:
        got = log.recovered()
        assert len(got) == 300
        log.done(s for s, _ in got)
        deadline = time.monotonic() + 10
        while log.stats().segments > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.stats().segments == 1
        assert log.stats().spooled == 0
    with open_log(tmp_path) as log:
        assert log.recovered() == []


def test_a_record_larger_than_a_segment_is_refused(tmp_path: Path) -> None:
    """A record that could never fit is a RecordError naming the limit, not a SpoolFull."""
    with open_log(tmp_path) as log:
        with pytest.raises(wb.RecordError, match=r"segment_bytes \(4096\)"):
            log.append({"blob": "x" * 5000})
        assert log.stats().appended == 0


def fsyncs_per_append(tmp_path: Path, threads: int, per_thread: int) -> float:
    with open_log(tmp_path, segment_bytes=1 << 18, max_bytes=1 << 22) as log:
        start = threading.Barrier(threads)
        base = log.stats().fsyncs

        def work() -> None:
            start.wait()
            for i in range(per_thread):
                assert log.wait_durable(log.append(rec(i)), timeout=30)

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return (log.stats().fsyncs - base) / (threads * per_thread)


def test_sharing_grows_with_concurrency(tmp_path: Path) -> None:
    """Fsyncs per durable append: about 1 alone, far fewer with 16 threads waiting."""
    alone = fsyncs_per_append(tmp_path / "1", 1, 30)
    sixteen = fsyncs_per_append(tmp_path / "16", 16, 30)
    assert alone >= 0.95
    assert sixteen < alone / 3


async def test_256_tasks_share_fsyncs(tmp_path: Path) -> None:
    """256 asyncio tasks appending and awaiting durability: at least 20 appends per fsync."""
    log = await asyncio.to_thread(open_log, tmp_path, None, segment_bytes=1 << 18)
    try:
        base = log.stats().fsyncs

        async def work(k: int) -> None:
            for i in range(10):
                await log.wait_durable_async(log.append(rec(k * 100 + i)))

        await asyncio.gather(*(work(k) for k in range(256)))
        fsyncs = log.stats().fsyncs - base
        assert fsyncs < 2560 / 20
    finally:
        await asyncio.to_thread(log.close)
