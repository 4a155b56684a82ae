"""A real ``kill -9``: a child process appends at full speed (fsync="batch", real disk) and
prints each record once it is durable; it is SIGKILLed at a random moment, and the next open
must give back every printed record not marked done, once, unchanged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from writebehind.spool import Spool, SpoolLog

ROOT = Path(__file__).resolve().parent.parent


def run_and_kill(path: Path, threads: int, after: float) -> tuple[dict[int, str], set[int]]:
    """Start the child, kill it ``after`` seconds after it is ready; what it printed."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.spool_child", str(path), str(threads)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(after)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    durable: dict[int, str] = {}
    done: set[int] = set()
    for line in child.stdout.read().splitlines():  # whatever it printed before the kill
        parts = line.split()
        if len(parts) == 3 and parts[0] == "A":
            durable[int(parts[1])] = parts[2]
        elif len(parts) == 2 and parts[0] == "D":
            done.add(int(parts[1]))
    child.stdout.close()
    return durable, done


def test_kill_9_loses_no_durable_record(tmp_path: Path) -> None:
    """Five kills at random moments, each reopening what the previous ones left."""
    rng = random.Random(os.getpid())
    path = tmp_path / "spool"
    seen: dict[int, str] = {}
    done: set[int] = set()
    printed = 0
    for _ in range(5):
        durable, marked = run_and_kill(path, rng.choice([1, 4, 16]), rng.uniform(0.05, 0.4))
        printed += len(durable)
        seen.update(durable)
        done |= marked
        with SpoolLog.open(Spool(path, max_bytes=1 << 26, segment_bytes=1 << 16)) as log:
            got = log.recovered()
            seqs = [s for s, _ in got]
            assert seqs == sorted(set(seqs))
            by_seq = dict(got)
            missing = [s for s in seen if s not in done and s not in by_seq]
            assert not missing, f"{len(missing)} durable records lost, e.g. {missing[:5]}"
            for s, ident in seen.items():
                if s in by_seq:
                    assert by_seq[s]["id"] == ident
            log.done(s for s in seqs if s in seen)  # delivered: the next round starts lean
            for s in seqs:
                if s in seen:
                    done.add(s)
    assert printed > 100  # the child did get going each time
