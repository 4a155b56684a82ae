"""Quickstart: batch many small writes into SQLite with ``AsyncBatcher``.

A thousand presence updates for fifty users go in; records with the same key coalesce
(the newest ``seen_at`` wins), so the table gets one upsert statement and fifty rows.

Run it with ``python examples/quickstart.py``; it uses a temporary SQLite file and takes
under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from pathlib import Path

import writebehind as wb


async def main(path: Path) -> None:
    sink = wb.SQLiteSink(path, table="presence", key="user_id", version="seen_at")
    async with wb.AsyncBatcher(sink, key="user_id", version="seen_at", linger=0.5) as batcher:
        for i in range(1_000):
            await batcher.add({"user_id": f"user-{i % 50}", "status": "online", "seen_at": i})
        await batcher.flush()  # everything added so far is committed
        print(batcher.stats())
    print(f"statements: {sink.statements}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "quickstart.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE presence (user_id TEXT PRIMARY KEY, status TEXT, seen_at)")
        asyncio.run(main(db))
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows, newest = conn.execute("SELECT COUNT(*), MAX(seen_at) FROM presence").fetchone()
        print(f"rows: {rows}, newest seen_at: {newest}")
