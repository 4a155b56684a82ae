"""Counters that add up: merge= sums the pending deltas, increment= makes the sink add them.

Page views arrive as one record per view ({"page": ..., "views": 1}). With
merge=wb.merge.sum_fields("views") the buffer keeps one record per page carrying the sum of
its pending views, and presence-style fields can keep their first value
(wb.merge.keep_first). SQLiteSink(..., increment=("views",)) writes that sum with
`SET views = views + excluded.views`, so it adds to what is in the table (here 100 views of
"/" another process wrote earlier) instead of overwriting it. PostgresSink takes the same
option.

Run: python examples/merge_counters.py
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import writebehind as wb


async def main(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE pages (page TEXT PRIMARY KEY, views INTEGER, first_view INTEGER)"
        )
        conn.execute("INSERT INTO pages VALUES ('/', 100, -1)")  # written earlier, elsewhere
    merge = wb.merge.combine(wb.merge.keep_first("first_view"), wb.merge.sum_fields("views"))
    sink = wb.SQLiteSink(db, table="pages", key="page", increment=("views",))
    async with wb.AsyncBatcher(sink, key="page", merge=merge, linger=0.05) as batcher:
        for i in range(10_000):
            page = ("/", "/pricing", "/docs")[i % 3]
            batcher.add_nowait({"page": page, "views": 1, "first_view": i})
        print("pending now:", batcher.peek("/"))
        await batcher.flush()
        print(batcher.stats())
    with sqlite3.connect(db) as conn:
        totals = dict(conn.execute("SELECT page, views FROM pages ORDER BY page"))
    print(f"totals: {totals} in {sink.statements} statement(s)")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp) / "pages.db"))
