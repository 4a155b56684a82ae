"""Durable writes: a spool directory makes ``add()`` return only once the record is fsynced,
so a record whose ``add()`` returned survives ``kill -9`` and power loss.

Part one: a process adds 500 job-state records into SQLite through a batcher with
``spool=``, and is SIGKILLed while the sink is slow (nothing has reached the table yet).
Part two: a new batcher on the same spool delivers everything the first one acknowledged,
at start, before it takes anything new; then ``add_nowait()`` and ``await
receipt.durable()`` show the non-blocking way to the same guarantee.

Run it with ``python examples/spool_durable.py``; it uses a temporary directory and takes a
few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import writebehind as wb


class SlowSQLite:
    """A SQLite sink that takes its time: the writes are still pending when the kill comes."""

    def __init__(self, path: Path) -> None:
        self.inner = wb.SQLiteSink(path, table="jobs", key="id", version="v")

    async def start(self) -> None:
        await self.inner.start()

    async def write(self, batch: list[dict[str, object]]) -> None:
        await asyncio.sleep(60)
        await self.inner.write(batch)

    async def close(self) -> None:
        await self.inner.close()


async def produce(db: Path, spool: Path) -> None:
    async with wb.AsyncBatcher(SlowSQLite(db), key="id", version="v", spool=spool) as b:
        for i in range(500):
            await b.add({"id": f"job-{i}", "state": "done", "v": 1})  # durable on return
        print(f"acknowledged 500 records; spooled: {b.stats().spooled}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a crash: no close(), no flush


async def recover(db: Path, spool: Path) -> None:
    sink = wb.SQLiteSink(db, table="jobs", key="id", version="v")
    async with wb.AsyncBatcher(sink, key="id", version="v", spool=wb.Spool(spool)) as b:
        await b.flush()  # returns once every recovered record is delivered
        s = b.stats()
        print(f"recovered from the spool: {s.recovered}, committed: {s.committed}")
        r = b.add_nowait({"id": "job-500", "state": "queued", "v": 1})  # returns at once
        await r.durable()  # ... and this waits for the group commit that made it durable
        print(f"add_nowait: durable before committed: {r.outcome is None}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db, spool = Path(tmp) / "jobs.db", Path(tmp) / "spool"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT, v INTEGER)")
        child = subprocess.run(
            [sys.executable, __file__, "--produce", str(db), str(spool)], check=False
        )
        print(f"the producer was killed (exit status {child.returncode})")
        asyncio.run(recover(db, spool))
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (rows,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        print(f"rows in the table: {rows}")
        assert rows == 501  # the 500 the producer acknowledged, and one more


if __name__ == "__main__":
    if sys.argv[1:2] == ["--produce"]:
        asyncio.run(produce(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        main()
