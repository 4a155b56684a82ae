"""Defects a hostile review of the spool and spill found; each test failed before its fix
(its docstring says what it showed and what is expected)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import writebehind as wb
from writebehind.testing import GatedSink

from .conftest import settle

OC = wb.Outcome


def settle_sync(cond: Any, timeout: float = 5.0) -> None:
    """Poll ``cond()`` from this thread until it is true; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


async def _spilled_then_coalesced_in_memory(sink: Any, tmp_path: Path, **kw: Any) -> list[Any]:
    """Buffer of 1, held by a write at the gate; K(n=1), X, K(n=2) spill (in that order);
    a pause keeps the refilled K(n=1) pending; then K(n=3) is added: its key is pending, so
    it coalesces in memory, jumping over the spilled K(n=2). Returns the receipts."""
    async with wb.AsyncBatcher(sink, key="id", spool=tmp_path / "s", when_full="spill",
                               max_pending=1, max_batch=1, linger=0, **kw) as b:  # fmt: skip
        b.add_nowait({"id": "Y", "n": 0, "v": 1})
        await settle(lambda: sink.waiting == 1)  # Y in flight: the buffer is full
        k1 = b.add_nowait({"id": "K", "n": 1, "v": 1})
        b.add_nowait({"id": "X", "n": 0, "v": 1})
        k2 = b.add_nowait({"id": "K", "n": 2, "v": 1})
        assert all(getattr(r, "_seq", 0) for r in (k1, k2))  # both spilled
        b.pause(3600)  # nothing is cut; the flusher still refills
        sink.open()
        await settle(lambda: b.stats().committed == 1)  # Y written: K(n=1) moved to memory
        await asyncio.sleep(0.05)
        k3 = b.add_nowait({"id": "K", "n": 3, "v": 1})  # the latest add of K
        # close() ends the pause and writes everything
    return [k1, k2, k3]


async def test_spill_unversioned_the_latest_add_of_a_key_wins(tmp_path: Path) -> None:
    """Without version=, the latest add() of a key must be what the sink ends with (the
    later add wins, as in memory mode). In spill mode a new record whose key is pending in
    memory coalesces there, ahead of an older record of the same key still waiting in the
    spill queue; that older record is then written last and overwrites the newest data
    (and both receipts say COMMITTED). Expected: the sink's last write of K is n=3 (the
    spilled K(n=2) is superseded, COALESCED)."""
    sink = GatedSink()
    _, k2, _ = await _spilled_then_coalesced_in_memory(sink, tmp_path)
    last = [r["n"] for r in sink.records if r["id"] == "K"][-1]
    assert last == 3, [r for r in sink.records if r["id"] == "K"]
    assert k2.outcome is OC.COALESCED


class _GatedSQLite(GatedSink):
    """GatedSink in front of a real versioned SQLite upsert (``>=`` on the version)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.inner = wb.SQLiteSink(path, table="t", key="id", version="v")

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, batch: list[Any]) -> None:
        await super().write(batch)
        await self.inner.write(batch)


async def test_spill_tie_of_versions_the_later_add_wins_in_the_sink(tmp_path: Path) -> None:
    """With version= and a tie (all v=1), the later add() must win in the sink (the intake's
    own rule, and the versioned upsert's >=). In spill mode K(n=3), added last, coalesces in
    memory and is written first; the older spilled K(n=2) is refilled after it and written
    later, so the table ends with n=2. Expected: the table holds n=3."""
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, v INTEGER NOT NULL)")
    sink = _GatedSQLite(db)
    await _spilled_then_coalesced_in_memory(sink, tmp_path, version="v")
    with sqlite3.connect(db) as c:
        (n,) = c.execute("SELECT n FROM t WHERE id = 'K'").fetchone()
    assert n == 3


def test_spill_sync_add_never_raises_buffer_full_when_a_pending_key_is_cut_meanwhile(
    tmp_path: Path,
) -> None:
    """Under when_full="spill", add() never raises BufferFull for a full buffer: a record
    that does not fit goes to the spool. The spill path decides "key pending: coalesce in
    memory" under the append lock, but the flusher cuts batches without that lock: if the
    key is cut between the check and the put, the memory put finds the buffer full and
    raises BufferFull out of Batcher.add() (seen with plain key="id" and 6 threads too; a
    slow key= callable makes the window deterministic here). Expected: the record is
    spilled (add() returns, seq > 0)."""
    calls: dict[int, int] = {}

    def key(r: dict[str, Any]) -> Any:
        if r.get("slow"):
            n = calls[id(r)] = calls.get(id(r), 0) + 1
            if n == 2:  # the memory put's read of the key: the flusher cuts meanwhile
                time.sleep(0.8)
        return r["id"]

    sink = GatedSink()
    with wb.Batcher(sink, key=key, spool=tmp_path / "s", when_full="spill", max_pending=2,
                    max_batch=2, linger=0) as b:  # fmt: skip
        b.pause(0.4)  # A and B stay pending until then
        b.add({"id": "A"})
        b.add({"id": "B"})
        b.add({"id": "C"})  # spilled
        try:
            r = b.add({"id": "A", "slow": True}, timeout=5)  # A pending: coalesces... or not
        finally:
            sink.open()
        assert r.outcome in (None, OC.COMMITTED)
        b.flush(10)
        s = b.stats()  # A coalesced in memory (the key could not be cut meanwhile)
        assert (s.accepted, s.committed + s.coalesced, s.pending) == (4, 4, 0)


def test_spill_threads_add_nowait_never_raises_buffer_full(tmp_path: Path) -> None:
    """The same race with plain key="id": 6 threads add_nowait() keys shared between them
    into a spill-mode Batcher (buffer of 8) while another thread reads stats(). Under
    "spill" a record that does not fit goes to the spool, so add_nowait() never raises
    BufferFull while the spool has room (SpoolFull is the only refusal). It raised
    BufferFull from the memory put (Intake._full) in most runs on the review machine: the
    "key pending, coalesce in memory" decision goes stale when the flusher cuts that key.
    Expected: no BufferFull, 12000 accepted, nothing left in the spool for a next life."""
    counter = itertools.count(1)
    errors: list[BaseException] = []
    stop = threading.Event()

    class Slow(GatedSink):
        async def write(self, batch: list[Any]) -> None:
            await asyncio.sleep(0.002)
            await super().write(batch)

    sink = Slow()
    sink.open()
    spool = tmp_path / "s"
    with wb.Batcher(sink, key="id", version="v", when_full="spill", max_pending=8,
                    max_batch=4, linger=0, spool=wb.Spool(spool, fsync="never")) as b:  # fmt: skip

        def worker(t: int) -> None:
            for i in range(2000):
                try:
                    b.add_nowait({"id": (t * 7 + i * 13) % 40, "v": next(counter)})
                except wb.BufferFull as exc:
                    errors.append(exc)

        def reader() -> None:
            while not stop.is_set():
                b.stats()

        r = threading.Thread(target=reader)
        r.start()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stop.set()
        r.join()
        b.flush(60)
        accepted = b.stats().accepted
    with wb.Batcher(GatedSink(), key="id", version="v", spool=spool) as again:
        recovered = again.stats().recovered
    assert (errors, accepted, recovered) == ([], 12000, 0)


async def test_recovered_records_this_batcher_refuses_are_not_counted_as_recovered_or_lost(
    tmp_path: Path,
) -> None:
    """A spool left by a batcher with key="id" (5 records SPOOLED at its close deadline),
    opened by a batcher with key="uid": the 5 records do not fit its key and are not taken
    (logged; they stay in the spool). docs/durability.md: "Stats.recovered [counts] those
    taken back at start" and "Stats.spooled counts the records in the spool not yet done".
    Yet stats().recovered says 5 while accepted is 0, and after close() both the report's
    spooled and stats().spooled say 0 although the 5 records are still in the spool (the
    next batcher with key="id" delivers them). Expected: recovered == 0 (none taken back)
    and the close report/stats show the 5 records left in the spool."""
    spool = tmp_path / "s"
    first = wb.AsyncBatcher(GatedSink(), key="id", spool=spool)
    await first.start()
    for i in range(5):
        await first.add({"id": i})
    assert (await first.close(timeout=0.2)).spooled == 5
    other = wb.AsyncBatcher(GatedSink(), key="uid", spool=spool)
    await other.start()
    s = other.stats()
    report = await other.close(timeout=1)
    again = wb.AsyncBatcher(GatedSink(), key="id", spool=spool)
    await again.start()
    left = again.stats().recovered
    await again.close(timeout=0.2)
    assert left == 5  # they were in the spool all along
    assert (s.accepted, s.recovered) == (0, 0)
    assert (report.spooled, report.stats.spooled) == (5, 5)


class _Kind(enum.Enum):
    A = "a"
    B = "b"


async def test_spill_an_enum_key_is_refused_only_under_load(tmp_path: Path) -> None:
    """Spill mode with a plain Enum key field: while the buffer has room the record goes to
    memory and add() accepts it; the same record when the buffer is full is refused with
    RecordError (the spool cannot give the enum back). So whether add() raises depends on
    the load at that moment: code that passed every test at low load raises in production
    when the sink slows down. Expected: the same record gets the same answer whatever
    the load (refused up front, as spool mode does, or spilled)."""
    sink = GatedSink()
    async with wb.AsyncBatcher(sink, key="kind", spool=tmp_path / "s", when_full="spill",
                               max_pending=1, max_batch=1, linger=0) as b:  # fmt: skip
        answers = []
        for kind in (_Kind.A, _Kind.B):  # A: room in memory; B: the buffer is full
            try:
                await b.add({"kind": kind})
                answers.append("accepted")
                await settle(lambda: sink.waiting == 1)
            except wb.RecordError:
                answers.append("refused")
        sink.open()
    assert answers[0] == answers[1], answers


async def test_a_stray_directory_named_like_a_segment_does_not_crash_start(
    tmp_path: Path,
) -> None:
    """A directory in the spool named like a segment (an operator's mkdir, a restore
    tool): start() fails with a raw IsADirectoryError from the recovery scan (so do a
    directory named 'lock' or '<stem>.done'). docs/durability.md: damage is moved aside,
    "never a reason to refuse to start", and a spool that cannot be used is refused with
    ConfigError naming the problem. Expected: start() succeeds (the entry ignored or moved
    aside) or raises ConfigError, never a bare OSError."""
    spool = tmp_path / "s"
    spool.mkdir(mode=0o700)
    (spool / "00000000000000000001-000000.seg").mkdir()
    b = wb.AsyncBatcher(GatedSink(), key="id", spool=spool)
    try:
        await b.start()
    except wb.ConfigError:
        return
    await b.close(timeout=0.2)


def test_room_freed_between_the_spool_check_and_the_put_is_not_a_way_around_the_spool(
    tmp_path: Path,
) -> None:
    """Found by tests/test_hostile_spool_stress.py (8 threads, a stats() reader): a spooled
    put asked the buffer whether it would take the record (no: full), then called the plain
    put to raise the refusal; if a write settled in between, the plain put took the record
    into memory with no spool seq. add() returned, the record was accepted, and a crash (or
    a dead-letter store failing) lost it: the next batcher never saw it. Expected: every
    accepted record is in the spool (appended == accepted); a record the buffer refused at
    the check is refused (BufferFull) or appended, never taken around the spool."""
    sink = GatedSink()
    with wb.Batcher(sink, key="id", spool=wb.Spool(tmp_path / "s", fsync="never"),
                    max_pending=1, max_batch=1, linger=0, when_full="raise") as b:  # fmt: skip
        b.add({"id": 1})
        settle_sync(lambda: sink.waiting == 1)
        # held in flight, it keeps the buffer full (max_pending=1)
        intake = b._core._intake
        check = intake.would_take

        def racing_check(record: Any) -> bool:
            answer = check(record)
            if not answer:  # the race: a write settles and frees room right now
                sink.open()
                settle_sync(lambda: b.stats().pending == 0 and b.stats().in_flight == 0)
            return answer

        intake.would_take = racing_check
        with contextlib.suppress(wb.BufferFull):  # refused, or appended: both are fine
            b.add({"id": 3})
        intake.would_take = check
        sink.open()
        b.flush(10)
        s = b.stats()
        assert b._core._spooling.log.stats().appended == s.accepted
