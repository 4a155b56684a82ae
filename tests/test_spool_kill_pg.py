"""kill -9 in spool mode, through the batcher, against the real PostgreSQL (the log alone is
tested in test_spool_kill.py): a child adds unique ids at full speed
and prints each once its add() returned; it is SIGKILLed at a random moment; the next
batcher on the spool delivers what the child left. Every printed id must be in the table."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

import writebehind as wb

from .pg import DSN

pytestmark = pytest.mark.server

POINTS = ("write", "fsync", "rename", "unlink")  # a torn write, mid-fsync, mid-rotation, mid-trim
# 50 in the normal test run (CI): 38 at random moments, 12 at named points (3 per point);
# `make bench` runs 200 (WRITEBEHIND_KILL_RUNS=200, benchmarks/spool_kill.py): 48 named
RUNS = int(os.environ.get("WRITEBEHIND_KILL_RUNS", "50"))
NAMED = 3 * len(POINTS) * max(1, RUNS // 50)


async def _drain(table: str, spool: Path) -> wb.CloseReport:
    sink = wb.PostgresSink(DSN, table=table, key="id", version="v")
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=spool) as b:
        await b.flush()
        report = await b.close()
    return report


def test_every_acknowledged_record_survives_kill_9(tmp_path: Path) -> None:
    table = f"spool_kill_{uuid.uuid4().hex[:10]}"

    async def setup() -> None:
        conn = await asyncpg.connect(DSN)
        await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, v int, note text)")
        await conn.close()

    async def ids() -> set[int]:
        conn = await asyncpg.connect(DSN)
        rows = await conn.fetch(f"SELECT id FROM {table}")
        await conn.close()
        return {r["id"] for r in rows}

    asyncio.run(setup())
    rng = random.Random(20261203)
    acked: set[int] = set()
    recovered = 0
    killed_itself = 0
    try:
        for run in range(RUNS):
            spool = tmp_path / "spool"
            start = run * 10_000_000
            named = run >= RUNS - NAMED  # the last ones, each point in turn
            op = POINTS[run % len(POINTS)]
            nth = rng.randint(2, 40) if op in ("write", "fsync") else rng.randint(1, 3)
            point = [f"{op}:{nth}"] if named else []
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.spool_kill_worker", DSN, table, str(spool),
                 str(start), *point],
                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            assert proc.stdout is not None
            started = proc.stdout.readline().strip() == "ready"
            assert started or named  # a named point may come during recovery, before it
            try:  # at a named point the child kills itself; else (or if never reached) here
                proc.wait(timeout=3.0 if named else rng.uniform(0.2, 1.2))
                killed_itself += 1
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL, proc.returncode
            printed = {int(x) for x in out.split() if x.isdigit()}
            assert printed or named, f"run {run}: nothing acknowledged before the kill"
            acked |= printed
            report = asyncio.run(_drain(table, spool))
            assert report.lost == 0
            recovered += report.stats.recovered
        missing = acked - asyncio.run(ids())
        assert not missing, f"{len(missing)} acknowledged ids missing, e.g. {sorted(missing)[:5]}"
        assert recovered > 0  # the kills left records behind that the next batcher delivered
        assert killed_itself >= 6  # the named points were reached, not just timed out
        print(
            f"\nkill -9 x {RUNS} ({killed_itself} at a named point): {len(acked)} "
            f"acknowledged ids, 0 missing; {recovered} records recovered from the spool"
        )
    finally:

        async def drop() -> None:
            conn = await asyncpg.connect(DSN)
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.close()

        asyncio.run(drop())
