"""Hand over a list of records in one call: add_many.

A request carries 500 sensor readings; instead of add_nowait() in a loop, add_many() takes
the group in one lock round trip. Readings of one sensor coalesce (the newest wins), and the
group's receipt counts every record's outcome.

Run: python examples/add_many.py
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from pathlib import Path

import writebehind as wb


async def main(path: Path) -> None:
    sink = wb.SQLiteSink(path, table="readings", key="sensor", version="seq")
    async with wb.AsyncBatcher(sink, key="sensor", version="seq", linger=0.05) as batcher:
        request = [{"sensor": f"s{i % 50}", "seq": i, "celsius": 20 + i % 7} for i in range(500)]
        group = await batcher.add_many(request)
        await batcher.flush()
        counts = await group
        print(f"{len(group)} readings: {counts[wb.Outcome.COMMITTED]} rows written, "
              f"{counts[wb.Outcome.COALESCED]} superseded by a newer reading")  # fmt: skip
        try:  # a reading without a sensor refuses the whole group, naming it
            batcher.add_many_nowait([{"sensor": "s1", "seq": 999}, {"sensor": None, "seq": 1}])
        except wb.RecordError as exc:
            print(f"refused: {exc}")
        print(batcher.stats())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "readings.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE readings (sensor TEXT PRIMARY KEY, seq, celsius)")
        asyncio.run(main(db))
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows, newest = conn.execute("SELECT COUNT(*), MAX(seq) FROM readings").fetchone()
        print(f"rows: {rows}, newest seq: {newest}")
