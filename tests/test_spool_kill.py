"""kill -9 in spool mode, against the real PostgreSQL: a child adds unique ids at full speed
and prints each once its add() returned; it is SIGKILLed at a random moment; the next
batcher on the spool delivers what the child left. Every printed id must be in the table."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

import writebehind as wb

from .pg import DSN

pytestmark = pytest.mark.server

RUNS = 8  # in the normal test run; make bench's reliability runs go further


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
    try:
        for run in range(RUNS):
            spool = tmp_path / "spool"
            start = run * 10_000_000
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.spool_kill_worker", DSN, table, str(spool),
                 str(start)],
                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.2, 1.2))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
            printed = {int(x) for x in out.split() if x.isdigit()}
            assert printed, f"run {run}: nothing acknowledged before the kill"
            acked |= printed
            report = asyncio.run(_drain(table, spool))
            assert report.lost == 0
            recovered += report.stats.recovered
        missing = acked - asyncio.run(ids())
        assert not missing, f"{len(missing)} acknowledged ids missing, e.g. {sorted(missing)[:5]}"
        assert recovered > 0  # the kills left records behind that the next batcher delivered
        print(
            f"\nkill -9 x {RUNS}: {len(acked)} acknowledged ids, 0 missing; "
            f"{recovered} records recovered from the spool by the next batcher"
        )
    finally:

        async def drop() -> None:
            conn = await asyncpg.connect(DSN)
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.close()

        asyncio.run(drop())
