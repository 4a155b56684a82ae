"""Hostile review of 61d7370: in spool mode the put appends the (pre-encoded) record to the
spool inside the buffer's locked section (``_intake_spool.spooled_steps``), instead of
checking room, appending, then putting.

Attacks: 8 threads on the sync ``Batcher`` (add / add_nowait + durable / add_many) with the
flusher cutting concurrently, checked against what the spool holds and against a SIGKILLed
child replayed into SQLite; a full spool under every ``when_full``; records that cannot be
encoded; coalescing under a full spool; a failing append; write faults then SIGKILL; close
mid-add; add after close; fork.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import writebehind as wb
from writebehind.spool import SpoolLog
from writebehind.testing import GatedSink, MemorySink

ROOT = Path(__file__).resolve().parent.parent


def spooled_records(path: Path) -> dict[int, Any]:
    """What a next batcher would find in the spool at ``path``: seq -> record."""
    with SpoolLog.open(wb.Spool(path)) as log:
        return dict(log.recovered())


def balanced(s: wb.Stats) -> bool:
    return s.accepted == (
        s.committed + s.coalesced + s.dead_lettered + s.dropped + s.pending + s.in_flight
    )


def make_table(db: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, who TEXT)")


def table_rows(db: Path) -> dict[int, int]:
    with sqlite3.connect(db) as c:
        return {k: v for k, v in c.execute("SELECT id, v FROM t")}


def run_child(
    script: str, *args: str, until: str, extra: int = 0, timeout: float = 60.0
) -> list[str]:
    """Run ``script`` in a child process, read its lines until one starts with ``until``
    and ``extra`` more (or it exits), then SIGKILL it; the lines read."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines: list[str] = []
    killer = threading.Timer(timeout, p.kill)  # a hang fails the test, never holds it
    killer.start()
    try:
        assert p.stdout is not None
        seen = -1
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if seen < 0 and line.startswith(until):
                seen = 0
            elif seen >= 0:
                seen += 1
            if seen >= extra:
                break
    finally:
        killer.cancel()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        if p.stdout is not None:
            p.stdout.close()
    assert any(x.startswith(until) for x in lines), lines[-5:]
    return lines


async def replay_into(db: Path, spool: Path) -> wb.Stats:
    """A new batcher on ``spool`` delivers what it recovers into the SQLite table."""
    sink = wb.SQLiteSink(db, table="t", key="id", version="v")
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=spool, linger=0) as b:
        await b.flush(timeout=60)
        s = b.stats()
    return s


# -- 8 threads on the sync Batcher ------------------------------------------------------


def test_eight_threads_every_receipt_carries_its_own_records_seq(tmp_path: Path) -> None:
    """add / add_nowait / add_many from 8 threads on overlapping and distinct keys, the
    flusher cutting (linger=0, max_batch=3) into a sink that holds every write: every
    receipt still pending when the batcher closes has the seq of its own record in the
    spool; every acknowledged key's newest version is what the spool replays; counters
    balance; no two receipts share a seq."""
    spool = tmp_path / "spool"
    gate = GatedSink()
    b = wb.Batcher(
        gate, key="id", version="v", spool=spool, linger=0, max_batch=3,
        max_pending=100_000, close_timeout=0.5,
    )  # fmt: skip
    b.start()
    spooling = b.engine._spooling
    assert spooling is not None
    receipts: list[wb.Receipt] = []
    lock = threading.Lock()
    ver = iter(range(1, 10**9))
    ver_lock = threading.Lock()
    acked: dict[int, int] = {}
    errors: list[BaseException] = []

    def nextv() -> int:
        with ver_lock:
            return next(ver)

    def worker(t: int) -> None:
        try:
            mine: list[wb.Receipt] = []
            done: list[tuple[int, int]] = []
            for i in range(150):
                k = i % 20 if i % 2 else 1000 + t * 1000 + i  # overlapping / distinct
                v = nextv()
                rec = {"id": k, "v": v, "who": f"t{t}-{i}"}
                mode = i % 3
                if mode == 0:
                    mine.append(b.add(rec))
                elif mode == 1:
                    r = b.add_nowait(rec)
                    assert spooling.wait_durable(r, 30)
                    mine.append(r)
                else:
                    v2 = nextv()
                    group = [rec, {"id": k + 500_000, "v": v2, "who": f"t{t}-{i}m"}]
                    mine.extend(b.add_many(group))
                    done.append((k + 500_000, v2))
                done.append((k, v))
            with lock:
                receipts.extend(mine)
                for k, v in done:
                    acked[k] = max(acked.get(k, 0), v)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[:3]
    s = b.stats()
    assert balanced(s), s
    report = b.close(timeout=0.5)
    assert report.lost == 0
    seqs = [r._seq for r in receipts]  # type: ignore[attr-defined]
    assert all(seqs)
    assert len(set(seqs)) == len(seqs)
    found = spooled_records(spool)
    for r in receipts:
        if r.outcome == wb.Outcome.SPOOLED and not r.superseded:
            assert found[r._seq] == r.record  # type: ignore[attr-defined]
    newest: dict[int, int] = {}
    for rec in found.values():
        newest[rec["id"]] = max(newest.get(rec["id"], 0), rec["v"])
    for batch in gate.batches:  # written before the gate closed (none: it never opens)
        for rec in batch:
            newest[rec["id"]] = max(newest.get(rec["id"], 0), rec["v"])
    for k, v in acked.items():
        assert newest.get(k, 0) >= v, (k, v, newest.get(k))


_THREADS_CHILD = r"""
import itertools, sys, threading, time
import writebehind as wb
spool, db = sys.argv[1], sys.argv[2]
sink = wb.SQLiteSink(db, table="t", key="id", version="v")
b = wb.Batcher(sink, key="id", version="v", spool=spool, linger=0, max_batch=4,
               max_pending=50_000)
b.start()
spooling = b.engine._spooling
out = threading.Lock()
ver = itertools.count(1)
vlock = threading.Lock()
def nv():
    with vlock:
        return next(ver)
def say(pairs):
    with out:
        sys.stdout.write("".join(f"{k} {v}\n" for k, v in pairs))
        sys.stdout.flush()
def worker(t):
    i = 0
    while True:
        k = i % 37 if i % 2 else 100_000 + t * 100_000 + i
        v = nv()
        rec = {"id": k, "v": v, "who": f"t{t}"}
        m = i % 3
        if m == 0:
            b.add(rec); say([(k, v)])
        elif m == 1:
            r = b.add_nowait(rec)
            spooling.wait_durable(r, None); say([(k, v)])
        else:
            v2 = nv()
            b.add_many([rec, {"id": k + 50_000, "v": v2, "who": "m"}])
            say([(k, v), (k + 50_000, v2)])
        i += 1
        if i == 40 and t == 0:
            with out:
                print("go", flush=True)
for t in range(8):
    threading.Thread(target=worker, args=(t,), daemon=True).start()
time.sleep(600)
"""


@pytest.mark.parametrize("extra", [0, 300, 1500])
async def test_eight_threads_sigkilled_then_replayed_into_sqlite(
    tmp_path: Path, extra: int
) -> None:
    """A child with 8 threads adding through the sync Batcher (into SQLite, the flusher
    cutting with linger=0) is SIGKILLed; a new batcher on its spool replays into the same
    table: every acknowledged (key, version) is there or superseded by a newer one."""
    db, spool = tmp_path / "t.db", tmp_path / "spool"
    make_table(db)
    lines = run_child(_THREADS_CHILD, str(spool), str(db), until="go", extra=extra)
    acked: dict[int, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            k, v = int(parts[0]), int(parts[1])
            acked[k] = max(acked.get(k, 0), v)
    assert acked
    s = await replay_into(db, spool)
    assert balanced(s)
    assert s.pending == 0
    got = table_rows(db)
    missing = {k: v for k, v in acked.items() if got.get(k, 0) < v}
    assert not missing, list(missing.items())[:5]


# -- a full spool, a full buffer, under every when_full ---------------------------------

POLICIES = ["block", "raise", "drop_newest", "drop_oldest", "direct"]


async def _spool_settled(b: wb.AsyncBatcher, spooled: int) -> None:
    async with asyncio.timeout(10):
        while b.stats().spooled != spooled:  # noqa: ASYNC110 - the writer thread marks done
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_full_spool_refuses_under_every_policy_and_the_coalescing_add_too(
    tmp_path: Path, policy: str
) -> None:
    """Fill the spool (64 KiB): the record it refuses is not in the buffer, not in the
    spool, not counted accepted (raise/block/direct), or accepted and counted dropped
    (drop_*). A newer version of a pending key then: refused/dropped, the pending version
    and its seq stay (it is still spooled, and the next batcher replays exactly the taken
    records, at their old versions)."""
    path = tmp_path / "spool"
    spool = wb.Spool(path, max_bytes=64 * 1024, segment_bytes=16 * 1024)
    gate = GatedSink()
    b = wb.AsyncBatcher(
        gate, key="id", version="v", spool=spool, when_full=policy, linger=3600,
        max_pending=100_000, close_timeout=0.3,
    )  # fmt: skip
    await b.start()
    drops = policy.startswith("drop")
    taken: list[wb.Receipt] = []
    for i in range(1000):
        try:
            r = b.add_nowait({"id": i, "v": 1, "pad": "y" * 200})
        except wb.SpoolFull:
            assert not drops
            break
        if r.outcome == wb.Outcome.DROPPED:
            assert drops
            break
        taken.append(r)
    n = len(taken)
    assert 0 < n < 1000
    assert b.peek(n) is None
    before = b.stats()
    assert before.pending == before.spooled == n
    assert before.accepted == n + (1 if drops else 0)
    assert balanced(before)
    old_seq = taken[0]._seq  # type: ignore[attr-defined]
    if drops:
        r = b.add_nowait({"id": 0, "v": 2, "pad": "z" * 200})
        assert r.outcome == wb.Outcome.DROPPED
    else:
        with pytest.raises(wb.SpoolFull):
            b.add_nowait({"id": 0, "v": 2, "pad": "z" * 200})
        if policy == "block":
            with pytest.raises(wb.BufferFull):
                await b.add({"id": 0, "v": 3, "pad": "z" * 200}, timeout=0.2)
    assert b.peek(0) == {"id": 0, "v": 1, "pad": "y" * 200}
    assert not taken[0].superseded
    assert taken[0]._seq == old_seq
    s = b.stats()
    assert s.pending == s.spooled == n
    assert balanced(s)
    assert s.accepted == before.accepted + (1 if drops else 0)
    await b.close(timeout=0.3)
    found = spooled_records(path)
    assert sorted(found) == sorted(r._seq for r in taken)  # type: ignore[attr-defined]
    assert all(rec["v"] == 1 for rec in found.values())


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_full_buffer_under_every_policy_spools_exactly_what_it_takes(
    tmp_path: Path, policy: str
) -> None:
    """max_pending=5 and room in the spool: the sixth record is refused (raise/block: not
    in the spool), dropped (drop_newest: its seq done), takes the oldest's place
    (drop_oldest: the oldest's seq done), or goes direct (in the spool until written).
    The next batcher replays exactly the records still owed."""
    path = tmp_path / "spool"
    gate = GatedSink()
    b = wb.AsyncBatcher(
        gate, key="id", version="v", spool=path, when_full=policy, linger=3600,
        max_pending=5, max_batch=5, close_timeout=0.3,
    )  # fmt: skip
    await b.start()
    b.pause(3600)  # no cut: the buffer stays full
    first = [await b.add({"id": i, "v": 1}) for i in range(5)]
    if policy in ("block", "raise"):
        with pytest.raises(wb.BufferFull):
            b.add_nowait({"id": 5, "v": 1})
        owed = {0, 1, 2, 3, 4}
        assert b.stats().accepted == 5
    else:
        r = b.add_nowait({"id": 5, "v": 1})  # add() under direct waits for the write
        await r.durable()
        assert r._seq > 0  # type: ignore[attr-defined]
        if policy == "drop_newest":
            assert r.outcome == wb.Outcome.DROPPED
            owed = {0, 1, 2, 3, 4}
        elif policy == "drop_oldest":
            assert first[0].outcome == wb.Outcome.DROPPED
            owed = {1, 2, 3, 4, 5}
        else:
            owed = {0, 1, 2, 3, 4, 5}  # direct: in flight at the gate
        assert b.stats().accepted == 6
    await _spool_settled(b, len(owed))
    assert balanced(b.stats())
    await b.close(timeout=0.3)
    assert {rec["id"] for rec in spooled_records(path).values()} == owed


# -- records that cannot be encoded -----------------------------------------------------


class _Opaque:
    pass


BAD = [
    pytest.param({"id": 1, "v": 1, "x": {1, 2}}, id="set"),
    pytest.param({"id": 1, "v": math.nan}, id="nan-version"),
    pytest.param({"id": 1, "v": None}, id="none-version"),
    pytest.param({"id": [1], "v": 1}, id="unhashable-key"),
    pytest.param({"id": 1, "v": 1, b"k": 1}, id="bytes-dict-key"),
    pytest.param({"id": 1, "v": 1, "x": b"\xff\x00"}, id="bytes-field"),
    pytest.param({"id": b"\x00k", "v": 1}, id="bytes-key"),
]


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("bad", BAD)
async def test_a_record_that_cannot_be_taken_changes_nothing(
    tmp_path: Path, bad: dict[Any, Any], full: bool
) -> None:
    """To an empty buffer, and to a full one whose key 1 is pending (the record would
    coalesce): RecordError (or taken whole, if the spool can hold it), and then nothing
    changed: no counter, no append, the pending record untouched."""
    path = tmp_path / "spool"
    b = wb.AsyncBatcher(
        GatedSink(), key="id", version="v", spool=path, when_full="raise", linger=3600,
        max_pending=3, max_batch=3, close_timeout=0.3,
    )  # fmt: skip
    await b.start()
    b.pause(3600)
    if full:
        for i in range(1, 4):
            await b.add({"id": i, "v": 0})
    spooling = b._spooling
    assert spooling is not None
    assert spooling.log is not None
    before, appended = b.stats(), spooling.log.stats().appended
    try:
        r = b.add_nowait(bad)
    except (wb.RecordError, wb.BufferFull):  # BufferFull: a new key to the full buffer
        s = b.stats()
        assert (s.accepted, s.pending, s.coalesced, s.spooled) == (
            before.accepted,
            before.pending,
            before.coalesced,
            before.spooled,
        )
        assert spooling.log.stats().appended == appended
        if full:
            assert b.peek(1) == {"id": 1, "v": 0}
    else:  # taken: then it must come back from the spool as it went in
        await r.durable()
        assert b.stats().accepted == before.accepted + 1
        await b.close(timeout=0.3)
        assert bad in spooled_records(path).values()
        return
    await b.close(timeout=0.3)


# -- a failing append -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["new-key", "coalesce", "full-drop_oldest"])
async def test_an_append_that_raises_leaves_nothing_in_the_buffer(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """append_encoded raising OSError (EIO) under the buffer's lock, for a new key, a
    coalescing one and the when_full step: the error reaches the caller, the buffer keeps
    the previous state (no record whose bytes the spool did not take), nothing counted,
    and the next add works."""
    path = tmp_path / "spool"
    policy = "drop_oldest" if where.startswith("full") else "raise"
    b = wb.AsyncBatcher(
        GatedSink(), key="id", version="v", spool=path, when_full=policy, linger=3600,
        max_pending=2 if where.startswith("full") else 100, max_batch=2, close_timeout=0.3,
    )  # fmt: skip
    await b.start()
    b.pause(3600)
    await b.add({"id": 1, "v": 1})
    await b.add({"id": 2, "v": 1})
    before = b.stats()

    def eio(self: SpoolLog, payload: bytes) -> int:
        raise OSError(5, "EIO (injected)")

    monkeypatch.setattr(SpoolLog, "append_encoded", eio)
    rec = {"id": 1, "v": 2} if where == "coalesce" else {"id": 3, "v": 1}
    with pytest.raises(OSError, match="injected"):
        b.add_nowait(rec)
    s = b.stats()
    assert (s.accepted, s.pending, s.coalesced, s.dropped) == (
        before.accepted,
        before.pending,
        before.coalesced,
        before.dropped,
    )
    assert b.peek(1) == {"id": 1, "v": 1}
    assert b.peek(2) == {"id": 2, "v": 1}
    assert b.peek(3) is None
    monkeypatch.undo()
    r = await b.add({"id": 4, "v": 1} if where != "full-drop_oldest" else {"id": 1, "v": 5})
    assert r._seq > 0
    assert balanced(b.stats())
    await b.close(timeout=0.3)


# -- write faults, coalescing, SIGKILL ----------------------------------------------------

_FAULT_CHILD = r"""
import asyncio, errno, sys
import writebehind as wb, writebehind._spooling
from writebehind.spool.testing import FaultyFileSystem
from writebehind.testing import GatedSink
fs = FaultyFileSystem()
writebehind._spooling._FILESYSTEM = fs
async def main():
    b = wb.AsyncBatcher(GatedSink(), key="id", version="v", spool=sys.argv[1], linger=3600,
                        max_pending=1000)
    await b.start()
    await b.add({"id": 1, "v": 1, "who": "acked"})
    print("acked", flush=True)
    fs.fail(sys.argv[2], errno.EIO)  # the disk fails from now on (EIO)
    r = b.add_nowait({"id": 1, "v": 2, "who": "never durable"})  # coalesces over v=1
    await asyncio.sleep(1.5)  # the writer retries, and marks and trims meanwhile
    print("ready", b._spooling.is_durable(r), flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.parametrize("op", ["fsync", "write"])
async def test_an_acknowledged_version_survives_a_failing_disk_and_kill_9(
    tmp_path: Path, op: str
) -> None:
    """add(v=1) returned (durable). The disk then fails (EIO on every fsync / write); an
    add_nowait(v=2) of the same key coalesces over it and is never durable (its add()
    would not have returned). SIGKILL. The next batcher must deliver v=1 (or v=2): the
    promise of the returned add(). It delivers nothing: supersede() marks v=1's seq done
    at once, and the writer applies done marks and trims though the write of v=2 failed."""
    db, spool = tmp_path / "t.db", tmp_path / "spool"
    make_table(db)
    lines = run_child(_FAULT_CHILD, str(spool), op, until="ready")
    assert "ready False" in lines  # v=2 never durable: the kill is within the promise
    s = await replay_into(db, spool)
    assert balanced(s)
    assert table_rows(db).get(1, 0) >= 1


_COALESCE_CHILD = r"""
import random, sys, threading, time
import writebehind as wb
spool, db, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
sink = wb.SQLiteSink(db, table="t", key="id", version="v")
b = wb.Batcher(sink, key="id", version="v", spool=spool, linger=0, max_batch=2,
               max_pending=10_000)
b.start()
out = threading.Lock()
def worker(t):
    rng = random.Random(seed * 100 + t)
    i = 0
    while True:
        k = rng.randrange(4)
        v = rng.randrange(1, 60)  # older after newer, equal versions, all mixed
        b.add({"id": k, "v": v, "who": f"t{t}-{i}"})
        with out:
            print(f"{k} {v}", flush=True)
        i += 1
with out:  # the workers print under the same lock: no line interleaves with this one
    for t in range(8):
        threading.Thread(target=worker, args=(t,), daemon=True).start()
    print("go", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(("seed", "extra"), [(1, 50), (2, 400), (3, 1200)])
async def test_coalescing_one_key_many_times_then_sigkill_the_newest_acked_wins(
    tmp_path: Path, seed: int, extra: int
) -> None:
    """8 threads add 4 keys at random versions (older after newer, ties) through the sync
    Batcher into SQLite (linger=0, max_batch=2: the flusher cuts all the time); SIGKILL
    after ``extra`` acknowledged adds; a new batcher replays the spool into the same
    table: each key holds at least its newest acknowledged version."""
    db, spool = tmp_path / "t.db", tmp_path / "spool"
    make_table(db)
    lines = run_child(_COALESCE_CHILD, str(spool), str(db), str(seed), until="go", extra=extra)
    acked: dict[int, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            acked[int(parts[0])] = max(acked.get(int(parts[0]), 0), int(parts[1]))
    assert acked
    s = await replay_into(db, spool)
    assert balanced(s)
    assert s.pending == 0
    got = table_rows(db)
    assert all(got.get(k, 0) >= v for k, v in acked.items()), (acked, got)


# -- close mid-add, add after close, fork ---------------------------------------------------


def test_close_while_eight_threads_add_then_add_after_close(tmp_path: Path) -> None:
    """8 threads adding (add / add_nowait / add_many) while another closes: each call
    either returns (and its record is delivered, or left in the spool for the next
    batcher) or raises BatcherClosed; no hang; counters balance; afterwards every add
    raises BatcherClosed and appends nothing."""
    spool = tmp_path / "spool"
    sink = MemorySink()
    b = wb.Batcher(sink, key="id", spool=spool, linger=0, max_batch=7, max_pending=100_000)
    b.start()
    taken: list[dict[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()
    unexpected: list[BaseException] = []

    def worker(t: int) -> None:
        i = 0
        while not stop.is_set():
            rec = {"id": t * 1_000_000 + i}
            try:
                if i % 3 == 0:
                    b.add(rec)
                elif i % 3 == 1:
                    b.add_nowait(rec)
                else:
                    b.add_many([rec])
            except wb.BatcherClosed:
                return
            except wb.WriteBehindError as exc:
                if "closed" not in str(exc):
                    unexpected.append(exc)
                return
            with lock:
                taken.append(rec)
            i += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    report = b.close(timeout=20)
    assert time.monotonic() - t0 < 30
    stop.set()
    for th in threads:
        th.join(30)
        assert not th.is_alive()
    assert not unexpected, unexpected[:3]
    assert report.lost == 0
    assert balanced(report.stats)
    delivered = {r["id"] for batch in sink.batches for r in batch}
    left = {r["id"] for r in spooled_records(spool).values()}
    missing = [r["id"] for r in taken if r["id"] not in delivered | left]
    assert not missing, missing[:5]
    for call in (b.add, b.add_nowait, lambda r: b.add_many([r])):
        with pytest.raises(wb.BatcherClosed):
            call({"id": -1})
    assert -1 not in {r["id"] for r in spooled_records(spool).values()}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_clear_error_and_appends_nothing(tmp_path: Path) -> None:
    """The sync Batcher in spool mode, forked while another thread adds: the child's add,
    add_nowait and add_many raise an error naming the spool, at once; the parent's spool
    holds none of the child's records."""
    spool = tmp_path / "spool"
    b = wb.Batcher(GatedSink(), key="id", spool=spool, linger=3600, close_timeout=0.3)
    b.start()
    stop = threading.Event()

    def busy() -> None:
        i = 0
        while not stop.is_set() and i < 2000:  # below max_pending: never BufferFull
            b.add_nowait({"id": i})
            i += 1

    th = threading.Thread(target=busy)
    th.start()
    time.sleep(0.05)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        code = 0
        try:
            for call in (b.add, b.add_nowait, lambda x: b.add_many([x])):
                try:
                    call({"id": -7})
                    code |= 1
                except wb.WriteBehindError as exc:
                    if "spool" not in str(exc) or "fork" not in str(exc):
                        code |= 2
        except BaseException:
            code |= 4
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    stop.set()
    th.join(30)
    try:
        with os.fdopen(r, "rb") as f:
            got = f.read()
    finally:
        os.waitpid(pid, 0)
    assert got == b"\x00"
    b.close(timeout=0.3)
    assert -7 not in {x["id"] for x in spooled_records(spool).values()}


class _SlowSink(MemorySink):
    """A sink that takes 20 ms a write and notes the spool's peak bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self.batcher: Any = None

    async def write(self, batch: list[Any]) -> None:
        if self.batcher is not None:
            self.peak = max(self.peak, self.batcher.engine._spooling.log.stats().bytes)
        await asyncio.sleep(0.02)
        await super().write(batch)


@pytest.mark.parametrize("policy", ["block", "direct"])
def test_a_full_spool_under_waiting_policies_takes_every_record_once(
    tmp_path: Path, policy: str
) -> None:
    """A 64 KiB spool far smaller than what 4 threads add through Batcher.add (the flusher
    trims as it commits): every add returns once (no hang), each record is in the sink
    exactly once, nothing refused was left in the buffer, counters balance."""
    spool = wb.Spool(tmp_path / "spool", max_bytes=64 * 1024, segment_bytes=16 * 1024)
    sink = _SlowSink()
    b = wb.Batcher(
        sink, key="id", spool=spool, when_full=policy, linger=0, max_batch=50,
        max_pending=10_000,
    )  # fmt: skip
    sink.batcher = b
    b.start()
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(400):
                b.add({"id": t * 10_000 + i, "pad": "p" * 200}, timeout=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(90)
        assert not th.is_alive()
    assert not errors, errors[:3]
    report = b.close(timeout=30)
    assert report.lost == 0
    s = report.stats
    assert balanced(s)
    assert s.accepted == s.committed == 1600
    ids = [r["id"] for batch in sink.batches for r in batch]
    assert sorted(ids) == sorted(t * 10_000 + i for t in range(4) for i in range(400))
    assert sink.peak >= 48 * 1024  # the spool did fill: the waits were exercised


# -- add_many with a record the buffer could never take -----------------------------------

_BAD_GROUP = [{"id": 1, "v": 1}, {"id": 2, "v": 1}, {"id": 3, "v": None}]


async def test_memory_mode_refuses_a_bad_group_whole(tmp_path: Path) -> None:
    """The documented contract (docs/guide.md, add_many_nowait's docstring), in memory
    mode: a record with a version of None refuses the whole group, naming records[2],
    before any record is taken."""
    b = wb.AsyncBatcher(GatedSink(), key="id", version="v", linger=3600, close_timeout=0.2)
    await b.start()
    with pytest.raises(wb.RecordError, match=r"records\[2\]"):
        b.add_many_nowait(_BAD_GROUP)
    assert b.stats().accepted == 0
    await b.close(timeout=0.2)


async def _nowait(b: wb.AsyncBatcher, group: list[Any]) -> Any:
    return b.add_many_nowait(group)


@pytest.mark.parametrize("api", ["async-nowait", "async", "sync"])
async def test_spool_mode_refuses_a_bad_group_whole(tmp_path: Path, api: str) -> None:
    """The same group in spool mode: documented to be refused whole before any record is
    taken ("each record is taken exactly as add_nowait would"; spool mode only appends
    each on its own). _intake_spool.use_spool sets put_many = put_each(put_nowait): the
    two good records are taken (accepted, spooled, delivered after a crash) while the
    caller got RecordError for the group, and the message names no records[i]."""
    path = tmp_path / "spool"
    opts: dict[str, Any] = {"key": "id", "version": "v", "spool": path, "linger": 3600}
    if api == "sync":
        with wb.Batcher(GatedSink(), close_timeout=0.2, **opts) as sb:
            with pytest.raises(wb.RecordError) as info:
                sb.add_many(_BAD_GROUP)
            assert sb.stats().accepted == 0  # first: nothing taken
            assert "records[2]" in str(info.value)
        return
    b = wb.AsyncBatcher(GatedSink(), close_timeout=0.2, **opts)
    await b.start()
    try:
        with pytest.raises(wb.RecordError) as info:
            await (b.add_many(_BAD_GROUP) if api == "async" else _nowait(b, _BAD_GROUP))
        assert b.stats().accepted == 0  # first: nothing taken
        assert "records[2]" in str(info.value)
    finally:
        await b.close(timeout=0.2)
    assert spooled_records(path) == {}
