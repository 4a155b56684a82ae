"""A full disk and I/O errors (injected ENOSPC/EIO on the Nth write, fsync, directory sync,
file creation or rename): nothing is reported durable whose bytes were not synced, waiters
hear about the error, and writing resumes by itself when the fault clears."""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path
from typing import Any

import pytest

from writebehind.spool import SpoolLog, SpoolWriteError
from writebehind.spool._frames import HEADER, scan
from writebehind.spool.testing import FaultyFileSystem, PowerLossFileSystem

from .spool_helpers import open_log, rec, spool_at

OPS = ["write", "fsync", "fsync_dir", "open"]


def wait_for_error(log: SpoolLog, seq: int) -> SpoolWriteError:
    """Wait on ``seq`` until the log reports its write failing."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if log.wait_durable(seq, timeout=0.5):
                raise AssertionError(f"seq {seq} was reported durable despite the fault")
        except SpoolWriteError as exc:
            return exc
    raise AssertionError("the fault was never reported")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("after", [0, 1, 3])
def test_a_fault_blocks_durability_until_it_clears(
    tmp_path: Path, op: Any, code: int, after: int
) -> None:
    """Under a fault nothing new is durable (the model's power loss keeps everything that
    was); once it clears the same records become durable, and survive a power loss."""
    fs = PowerLossFileSystem(str(tmp_path / "spool"))
    log = open_log(tmp_path, fs=fs)
    good = []
    for i in range(3):
        seq = log.append(rec(i))
        assert log.wait_durable(seq, timeout=10)
        good.append(seq)
    fs.fail(op, code, after=after)
    seqs = []
    error = None
    for i in range(3, 300):  # rotations at 4 KiB reach "open" and "fsync_dir" too
        seqs.append(log.append(rec(i)))
        try:
            ok = log.wait_durable(seqs[-1], timeout=10)
            assert ok
        except SpoolWriteError as exc:
            error = exc
            break
    assert error is not None, "the fault never hit"
    assert error.errno == code
    stalled = log.durable_seq
    assert stalled < seqs[-1]
    assert log.stats().write_errors >= 1
    assert "durable once the fault clears" in (log.stats().last_error or "")
    time.sleep(0.05)  # retries happen meanwhile, and fail
    assert log.durable_seq == stalled
    fs.clear()
    assert log.wait_durable(seqs[-1], timeout=10, tolerate_errors=True)  # resumes by itself
    more = log.append(rec(99))
    assert log.wait_durable(more, timeout=10)
    fs.crash(after, mode="drop")  # everything not synced is lost
    log.close()
    with open_log(tmp_path) as again:
        got = [s for s, _ in again.recovered()]
    assert got == [*good, *seqs, more]


def test_no_record_is_durable_until_synced(tmp_path: Path) -> None:
    """A power loss while fsync keeps failing loses only records never reported durable."""
    fs = PowerLossFileSystem(str(tmp_path / "spool"))
    log = open_log(tmp_path, fs=fs)
    durable = log.append_many(rec(i) for i in range(5))
    assert log.wait_durable(durable[-1], timeout=10)
    fs.fail("fsync", errno.EIO)
    pending = log.append_many(rec(i) for i in range(5, 10))
    wait_for_error(log, pending[-1])
    assert log.durable_seq == durable[-1]
    fs.crash(7, mode="drop")
    log.close()
    with open_log(tmp_path) as again:
        assert [s for s, _ in again.recovered()] == durable


def test_a_failed_fsync_moves_to_a_new_segment(tmp_path: Path) -> None:
    """After a failed fsync the unsynced frames are written again into a new segment (a
    retried fsync on the same file could report success for pages the kernel dropped); the
    abandoned segment is cut back to its synced length."""
    fs = FaultyFileSystem()
    log = open_log(tmp_path, fs=fs, segment_bytes=1 << 16)
    first = log.append(rec(0))
    assert log.wait_durable(first, timeout=10)
    before = sorted((tmp_path / "spool").glob("*.seg"))
    fs.fail("fsync", errno.EIO, times=1)
    seq = log.append(rec(1))
    assert log.wait_durable(seq, timeout=10, tolerate_errors=True)
    after = sorted((tmp_path / "spool").glob("*.seg"))
    new = [p for p in after if p not in before]
    assert len(new) == 1
    assert [f.seq for f in scan(new[0].read_bytes()).frames] == [seq]
    assert [f.seq for f in scan(before[0].read_bytes()).frames] == [first]
    log.close()
    with open_log(tmp_path) as again:
        assert [s for s, _ in again.recovered()] == [first, seq]
        assert again.damage.frames == 0


def test_a_short_write_then_enospc_leaves_no_damage(tmp_path: Path) -> None:
    """A write cut short by a full disk is truncated away: the next open finds no damage."""
    fs = FaultyFileSystem()
    log = open_log(tmp_path, fs=fs, segment_bytes=1 << 16)
    seq = log.append(rec(0))
    log.wait_durable(seq, timeout=10)
    fs.fail("write", errno.ENOSPC, times=3)
    big = log.append_many(rec(i) for i in range(1, 30))
    wait_for_error(log, big[-1])
    assert log.wait_durable(big[-1], timeout=10, tolerate_errors=True)
    log.close()
    with open_log(tmp_path) as again:
        assert [s for s, _ in again.recovered()] == [seq, *big]
        assert again.damage.frames == 0


def test_listeners_and_async_waiters_hear_the_error(tmp_path: Path) -> None:
    """on_durable listeners get (watermark, error); an awaiting task gets SpoolWriteError."""
    fs = FaultyFileSystem()
    log = open_log(tmp_path, fs=fs)
    heard: list[tuple[int, Any]] = []
    log.on_durable(lambda seq, err: heard.append((seq, err)))
    fs.fail("fsync", errno.ENOSPC)
    seq = log.append(rec(1))

    async def wait() -> None:
        await log.wait_durable_async(seq)

    with pytest.raises(SpoolWriteError, match="ENOSPC"):
        asyncio.run(wait())
    assert any(isinstance(err, SpoolWriteError) for _, err in heard)
    assert all(s < seq for s, err in heard if err is not None)
    fs.clear()

    async def patient() -> None:
        await log.wait_durable_async(seq, tolerate_errors=True)

    asyncio.run(patient())
    assert log.wait_durable(seq, timeout=10)
    log.close()


def test_close_during_a_fault_reports_what_was_not_durable(tmp_path: Path) -> None:
    """close() makes one last attempt; if it fails, it returns how many records were not
    made durable, and none of them was reported durable."""
    fs = FaultyFileSystem()
    log = open_log(tmp_path, fs=fs)
    ok = log.append(rec(0))
    log.wait_durable(ok, timeout=10)
    fs.fail("fsync", errno.EIO)
    log.append_many(rec(i) for i in range(1, 6))
    assert log.close() == 5
    assert log.durable_seq == ok


def test_a_failing_rename_at_open_still_opens(tmp_path: Path) -> None:
    """Repairs that fail (rename, EIO) are skipped: the open succeeds and counts the damage,
    and the next open repairs it."""
    with open_log(tmp_path, segment_bytes=1 << 16) as log:
        log.append_many(rec(i) for i in range(5))
    (seg,) = (tmp_path / "spool").glob("*-000000.seg")
    data = bytearray(seg.read_bytes())
    data[HEADER + 3] ^= 1
    seg.write_bytes(bytes(data))
    fs = FaultyFileSystem()
    fs.fail("rename", errno.EIO)
    with SpoolLog.open(spool_at(tmp_path, segment_bytes=1 << 16), fs=fs) as log:
        assert [s for s, _ in log.recovered()] == [2, 3, 4, 5]
        assert log.damage.frames == 1
    with open_log(tmp_path, segment_bytes=1 << 16) as log:
        assert [s for s, _ in log.recovered()] == [2, 3, 4, 5]
        assert log.damage.frames == 1  # not repaired the first time: found again
    with open_log(tmp_path, segment_bytes=1 << 16) as log:
        assert log.damage.frames == 0


def test_faults_while_marking_done_and_trimming(tmp_path: Path) -> None:
    """Unlink and done-file writes failing only delay trimming; nothing durable is lost and
    trimming catches up when the fault clears."""
    fs = FaultyFileSystem()
    log = open_log(tmp_path, fs=fs)
    seqs = []
    for i in range(200):
        seqs.append(log.append(rec(i)))
        if i % 10 == 9:
            assert log.wait_durable(seqs[-1], timeout=10)
    fs.fail("unlink", errno.EIO)
    log.done(seqs[:150])
    time.sleep(0.05)
    segments = log.stats().segments
    assert segments > 2
    fs.clear()
    log.done([seqs[150]])  # any later work lets the writer trim again
    deadline = time.monotonic() + 10
    while log.stats().segments >= segments and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.stats().segments < segments
    log.close()
    with open_log(tmp_path) as again:
        assert [s for s, _ in again.recovered()] == seqs[151:]


def test_done_while_the_write_is_failing(tmp_path: Path) -> None:
    """A record marked done while its write keeps failing is remembered, and marked on disk
    once the write goes through."""
    fs = FaultyFileSystem()
    log = open_log(tmp_path, fs=fs)
    fs.fail("fsync", errno.EIO)
    seqs = log.append_many(rec(i) for i in range(3))
    wait_for_error(log, seqs[-1])
    log.done([seqs[1]])
    time.sleep(0.02)
    fs.clear()
    assert log.wait_durable(seqs[-1], timeout=10, tolerate_errors=True)
    log.close()
    with open_log(tmp_path) as again:
        assert [s for s, _ in again.recovered()] == [seqs[0], seqs[2]]
