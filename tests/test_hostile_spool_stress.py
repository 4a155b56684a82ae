"""Hostile review of the durable spool: threads, dead letters, a failing dead-letter store,
a second life on the same spool. The conservation identity is read from another thread
the whole time; nothing acknowledged may vanish without a counter."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path
from typing import Any

import writebehind as wb
from writebehind.testing import FlakySink, MemorySink

from .conftest import assert_conserved


def _identity_ok(s: wb.Stats) -> bool:
    total = s.committed + s.coalesced + s.dead_lettered + s.dropped + s.pending + s.in_flight
    return s.accepted == total


class _Watcher:
    """Reads stats() in a loop from its own thread; keeps any snapshot that breaks the
    identity."""

    def __init__(self, batcher: Any) -> None:
        self.batcher, self.bad, self.reads = batcher, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self.batcher.stats()
            self.reads += 1
            if not _identity_ok(s):
                self.bad.append(s)

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _SlowFlaky(FlakySink):
    async def write(self, batch: list[Any]) -> None:
        await asyncio.sleep(0.001)
        await super().write(batch)


def test_threads_poison_and_a_failing_dead_letter_store_then_the_next_life(
    tmp_path: Path,
) -> None:
    """8 threads add() (durable) into a sync Batcher in spool mode; every 50th record is
    poison (dead-lettered) and the dead-letter store fails every other call. Every read of
    stats() keeps the identity; the poison records the store could not keep stay in the
    spool (as many as dead_letter_errors counted records) and the next batcher delivers
    them; everything else is written exactly once per acknowledged add()."""
    spool = tmp_path / "s"
    calls = itertools.count()
    kept: list[Any] = []

    def store(entries: list[Any]) -> None:
        if next(calls) % 2:
            raise OSError("dead-letter disk gone")
        kept.extend(e.record for e in entries)

    sink = _SlowFlaky(poison=lambda r: r["n"] % 50 == 0 and r["life"] == 1)
    acked: list[int] = []
    lock = threading.Lock()
    with wb.Batcher(sink, key="n", spool=wb.Spool(spool, fsync="never"), max_batch=1,
                    max_pending=64, linger=0, dead_letter=store) as b:  # fmt: skip

        def worker(t: int) -> None:
            for i in range(150):
                n = t * 1000 + i
                b.add({"n": n, "life": 1})
                with lock:
                    acked.append(n)

        with _Watcher(b) as w:
            threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            b.flush(60)
        s = b.stats()
        assert w.bad == []
        assert w.reads > 0
    assert_conserved(s)
    poison = {n for n in acked if n % 50 == 0}
    assert s.accepted == len(acked) == 1200
    assert s.dead_lettered == len(poison)
    written = [r["n"] for r in sink.records]
    assert sorted(written) == sorted(set(acked) - poison)  # each once
    kept_ns = {r["n"] for r in kept}
    assert kept_ns <= poison
    not_kept = poison - kept_ns
    # dead-letter errors count records the store failed to keep; those stay in the spool
    assert s.dead_letter_errors >= 1
    again = MemorySink()
    with wb.Batcher(again, key="n", spool=spool) as b2:
        assert b2.stats().recovered == len(not_kept)
        b2.flush(10)
    assert sorted(r["n"] for r in again.records) == sorted(not_kept)
    with wb.Batcher(MemorySink(), key="n", spool=spool) as b3:
        assert b3.stats().recovered == 0  # done: nothing delivered a third time


def test_spill_threads_keep_the_identity_and_the_newest_version(tmp_path: Path) -> None:
    """6 threads add_nowait() coalescing keys (shared by all threads, versions from one
    counter) into a spill-mode Batcher with a buffer of 8: every stats() read keeps the
    identity, nothing is lost, and the newest version of every key reaches the sink.
    (A record refused with BufferFull is left out: that is the race shown in
    tests/test_hostile_spool_failing.py.)"""
    counter = itertools.count(1)
    newest: dict[int, int] = {}
    refused: list[int] = []
    lock = threading.Lock()

    class Slow(MemorySink):
        async def write(self, batch: list[Any]) -> None:
            await asyncio.sleep(0.002)
            await super().write(batch)

    sink = Slow()
    with wb.Batcher(sink, key="id", version="v", when_full="spill", max_pending=8,
                    max_batch=4, linger=0,
                    spool=wb.Spool(tmp_path / "s", fsync="never")) as b:  # fmt: skip

        def worker(t: int) -> None:
            for i in range(600):
                k = (t * 7 + i * 13) % 40
                v = next(counter)
                try:
                    b.add_nowait({"id": k, "v": v})
                except wb.BufferFull:  # a race (tests/test_hostile_spool_failing.py)
                    with lock:
                        refused.append(v)
                    continue
                with lock:
                    newest[k] = max(newest.get(k, 0), v)

        with _Watcher(b) as w:
            threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            b.flush(60)
        s = b.stats()
        assert w.bad == []
    assert_conserved(s)
    assert s.accepted == 3600 - len(refused)
    assert s.pending == s.in_flight == s.lost == 0
    best: dict[int, int] = {}
    for r in sink.records:
        best[r["id"]] = max(best.get(r["id"], 0), r["v"])
    assert best == newest
