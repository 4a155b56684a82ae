"""Counters that add up: merge= sums the pending deltas, increment= makes the sink add them.

Page views arrive as one record per view ({"page": ..., "views": 1}). With
merge=wb.merge.sum_fields("views") the buffer keeps one record per page carrying the sum of
its pending views, and presence-style fields can keep their first value
(wb.merge.keep_first). Here the sink is a small callable that adds each batch to a dict, the
way SQL's `SET views = t.views + excluded.views` adds to a row.

Run: python examples/merge_counters.py
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import writebehind as wb

totals: Counter[str] = Counter()
statements = 0


async def add_to_totals(batch: list[dict[str, Any]]) -> None:
    """The sink: one 'statement' per batch that adds each page's views to its total."""
    global statements
    statements += 1
    for row in batch:
        totals[row["page"]] += row["views"]


async def main() -> None:
    merge = wb.merge.combine(wb.merge.keep_first("first_view"), wb.merge.sum_fields("views"))
    sink = wb.CallableSink(add_to_totals)
    async with wb.AsyncBatcher(sink, key="page", merge=merge, linger=0.05) as batcher:
        for i in range(10_000):
            page = ("/", "/pricing", "/docs")[i % 3]
            batcher.add_nowait({"page": page, "views": 1, "first_view": i})
        print("pending now:", batcher.peek("/"))
        await batcher.flush()
        print(batcher.stats())
    print(f"totals: {dict(sorted(totals.items()))} in {statements} statement(s)")


if __name__ == "__main__":
    asyncio.run(main())
