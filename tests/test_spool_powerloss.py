"""Power loss, simulated: a spool run under ``PowerLossFileSystem`` loses power at every sync
of a scripted run, and at random moments of random runs; the next open must always succeed
and give back every record that had been reported durable and not marked done."""

from __future__ import annotations

import contextlib
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from writebehind.spool import SpoolClosed, SpoolLog, SpoolWriteError
from writebehind.spool.testing import CrashMode, PowerLossFileSystem, SimulatedCrash

from .spool_helpers import open_log, spool_at

COUNTS: dict[str, int] = {"crashes": 0, "checked": 0, "damaged": 0}


@dataclass
class Run:
    """What a run did before the power went: what it appended, what it marked done."""

    appended: dict[int, Any] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    durable: int = 0
    start: int = 0  # durable watermark when the run opened (recovered records count)
    crashed: bool = False


def record(rng: random.Random, i: int) -> dict[str, Any]:
    return {"i": i, "pad": "p" * rng.randrange(0, 300), "n": rng.random()}


def script(log: SpoolLog, run: Run, rng: random.Random, steps: int) -> None:
    """Append in groups, wait for each group to be durable, mark older records done now
    and then, close at the end; stops quietly when the power goes."""
    try:
        for step in range(steps):
            group = [record(rng, step * 100 + k) for k in range(rng.randint(1, 6))]
            seqs = log.append_many(group)
            run.appended.update(zip(seqs, group, strict=True))
            if not log.wait_durable(seqs[-1], timeout=10):
                raise AssertionError("a group commit took over 10 s")
            run.durable = max(run.durable, seqs[-1])
            if step % 3 == 2:
                done = [s for s in run.appended if s not in run.done and rng.random() < 0.7]
                log.done(done)
                run.done.update(done)
        log.close()
    except (SpoolClosed, SpoolWriteError):
        run.crashed = True


def verify(path: Path, run: Run, *, fs: PowerLossFileSystem | None = None) -> SpoolLog:
    """Reopen (under ``fs`` if given) and check the durability promise."""
    log = SpoolLog.open(spool_at(path), fs=fs)
    got = log.recovered()
    seqs = [s for s, _ in got]
    assert seqs == sorted(set(seqs)), "recovered out of order or twice"
    for seq, rec in got:
        assert seq in run.appended or seq <= run.start, f"seq {seq} was never appended"
        if seq in run.appended:
            assert rec == run.appended[seq], f"seq {seq} came back different"
    missing = [s for s in run.appended if run.start < s <= run.durable and s not in run.done]
    lost = sorted(set(missing) - set(seqs))
    assert not lost, f"durable records lost: {lost[:10]} (of {len(lost)})"
    COUNTS["checked"] += len(missing)
    COUNTS["damaged"] += log.damage.frames > 0
    return log


def crash_run(
    path: Path, crash_at: int | None, seed: int, mode: CrashMode, steps: int = 40
) -> tuple[Run, PowerLossFileSystem]:
    fs = PowerLossFileSystem(str(path / "spool"), crash_at_fsync=crash_at)
    run = Run()
    try:
        log = open_log(path, fs=fs)
    except SimulatedCrash:  # while opening: nothing of this run was durable
        log = None
    if log is not None:
        run.start = log.durable_seq
        script(log, run, random.Random(seed), steps)
        run.durable = max(run.durable, log.durable_seq)
    fs.crash(seed, mode=mode)  # power off now (after a completed run: still a power loss)
    if log is not None:
        log.close()  # the dead writer's thread ends; its files were closed by the crash
        run.durable = max(run.durable, log.durable_seq)
    COUNTS["crashes"] += 1
    return run, fs


def syncs_of_a_clean_run(path: Path) -> int:
    fs = PowerLossFileSystem(str(path / "spool"))
    run = Run()
    script(open_log(path, fs=fs), run, random.Random(0), 40)
    assert not run.crashed
    return fs.syncs


def test_power_loss_at_every_sync(tmp_path: Path) -> None:
    """Crash at each sync of a scripted run, in each crash mode (two seeds for the random
    ones), then reopen:
    every durable record not done comes back, and opening never fails."""
    total = syncs_of_a_clean_run(tmp_path / "probe")
    assert total > 30  # the script rotates, trims and syncs done marks
    n = 0
    modes: list[tuple[CrashMode, int]] = [
        ("random", 0),
        ("random", 1),
        ("drop", 0),
        ("garble", 0),
        ("garble", 1),
    ]
    for mode, salt in modes:
        for at in range(1, total + 3):
            where = tmp_path / f"{mode}-{salt}-{at}"
            run, _ = crash_run(where, at, seed=at + 1000 * salt, mode=mode)
            verify(where, run).close()
            n += 1
    assert n >= 5 * total


def test_power_loss_during_recovery(tmp_path: Path) -> None:
    """A second power loss at any sync of the recovery that follows the first (repairs,
    trims, the new segment) still loses nothing durable."""
    total = syncs_of_a_clean_run(tmp_path / "probe")
    for at in range(2, total, max(1, total // 12)):
        where = tmp_path / f"first-{at}"
        run, _ = crash_run(where, at, seed=at, mode="garble")
        for second in range(1, 8):
            fs = PowerLossFileSystem(str(where / "spool"), crash_at_fsync=second)
            with contextlib.suppress(SimulatedCrash):  # the crash may come while opening
                verify(where, run, fs=fs).close()
            fs.crash(second, mode="random")
            COUNTS["crashes"] += 1
            verify(where, run).close()


def test_power_loss_at_random_moments(tmp_path: Path) -> None:
    """Random seeds, random sync to crash at, several runs on the same spool in a row (so
    recovered records, done marks and old segments carry across crashes)."""
    rng = random.Random(1234)
    for trial in range(240):
        where = tmp_path / f"t{trial}"
        carried: dict[int, Any] = {}
        carried_done: set[int] = set()
        durable = 0
        for _life in range(rng.randint(1, 4)):
            run, _ = crash_run(
                where,
                rng.randint(1, 120),
                rng.randrange(10**9),
                rng.choice(["random", "drop", "garble"]),
                steps=rng.randint(3, 30),
            )
            # a sequence number never made durable may be used again after a crash
            run.appended = {**carried, **run.appended}
            run.done |= carried_done - {s for s in run.appended if s not in carried}
            run.start, run.durable = 0, max(run.durable, durable)
            verify(where, run).close()
            carried, carried_done, durable = run.appended, run.done, run.durable


def test_power_loss_under_concurrent_appends(tmp_path: Path) -> None:
    """Eight threads append and wait while the power goes at a random moment from outside."""
    rng = random.Random(99)
    for trial in range(20):
        where = tmp_path / f"c{trial}"
        fs = PowerLossFileSystem(str(where / "spool"))
        log = open_log(where, fs=fs)
        run = Run()
        stop = threading.Event()
        ts = [threading.Thread(target=produce, args=(log, run, k, stop)) for k in range(8)]
        for t in ts:
            t.start()
        threading.Event().wait(rng.uniform(0.01, 0.08))
        fs.crash(rng.randrange(10**9))
        stop.set()
        for t in ts:
            t.join()
        log.close()
        run.durable = log.durable_seq
        COUNTS["crashes"] += 1
        assert run.durable > 0
        verify(where, run).close()


_LOCK = threading.Lock()


def produce(log: SpoolLog, run: Run, k: int, stop: threading.Event) -> None:
    """Append and wait until ``stop`` or the power goes; mark every tenth record done."""
    i = 0
    while not stop.is_set():
        seq = log.append({"k": k, "i": i})
        with _LOCK:
            run.appended[seq] = {"k": k, "i": i}
        i += 1
        try:
            log.wait_durable(seq, timeout=10)
        except (SpoolClosed, SpoolWriteError):
            return
        if i % 10 == 0:
            log.done([seq])
            with _LOCK:
                run.done.add(seq)


@settings(max_examples=100, deadline=None)
@given(
    crash_at=st.integers(min_value=1, max_value=80),
    seed=st.integers(min_value=0, max_value=2**32),
    mode=st.sampled_from(["random", "drop", "garble"]),
    steps=st.integers(min_value=1, max_value=20),
)
def test_power_loss_hypothesis(
    tmp_path_factory: Any, crash_at: int, seed: int, mode: CrashMode, steps: int
) -> None:
    """Hypothesis picks the run, the sync and the damage; the promise holds."""
    where = tmp_path_factory.mktemp("h")
    run, _ = crash_run(where, crash_at, seed, mode, steps)
    verify(where, run).close()


def test_crash_count_is_reported(tmp_path: Path) -> None:
    """(Runs last in this module.) The module simulated at least 1,000 power losses."""
    assert COUNTS["crashes"] >= 1000, COUNTS
    assert COUNTS["checked"] >= 20_000, COUNTS  # durable records checked present after one
    assert COUNTS["damaged"] >= 50, COUNTS  # reopenings that found damage to move aside
    print(f"\nspool power-loss simulation: {COUNTS}")


def test_leftover_files_never_block_opening(tmp_path: Path) -> None:
    """A crash-shaped directory (leftover .tmp, orphan done file, empty segment) opens."""
    d = tmp_path / "spool"
    d.mkdir(mode=0o700)
    (d / "00000000000000000005-000001.seg.tmp").write_bytes(b"half")
    (d / "00000000000000000001-000000.done").write_bytes(b"\x00" * 10)
    (d / "00000000000000000009-000002.seg").write_bytes(b"")
    with open_log(tmp_path) as log:
        assert log.recovered() == []
        assert log.damage.temp_files == 1
        assert log.append({"x": 1}) == 9
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]
