"""Watch a batcher's typed event stream while it writes.

Run: python examples/events.py

A reader task follows ``batcher.events(since=0)`` and prints a line per event while the
batcher writes 1,000 records (a few poison ones, which are dead-lettered) to an in-memory
sink; the stream ends with the ``Closed`` event.
"""

from __future__ import annotations

import asyncio

import writebehind as wb
from writebehind.testing import FlakySink


async def watch(batcher: wb.AsyncBatcher) -> None:
    async for event in batcher.events(since=0):
        match event:
            case wb.BatchCommitted(index=i, size=n, reason=why, duration=d):
                print(f"#{i} committed {n} records ({why}) in {d * 1000:.2f} ms")
            case wb.BatchFailed(index=i, size=n, error=err, retriable=again):
                print(f"#{i} a write of {n} failed: {err} ({'retry' if again else 'split'})")
            case wb.RecordsDeadLettered(index=i, count=n, error=err):
                print(f"#{i} dead-lettered {n} record(s): {err}")
            case wb.Closed(index=i, report=report):
                print(f"#{i} closed: lost={report.lost}")
            case _:
                print(f"#{event.index} {type(event).__name__}")


async def main() -> None:
    sink = FlakySink(poison=lambda r: r["n"] % 400 == 399)  # 2 bad records in 1,000
    async with wb.AsyncBatcher(sink, max_batch=200, linger=0.05) as batcher:
        reader = asyncio.create_task(watch(batcher))
        for n in range(1000):
            await batcher.add({"n": n})
    await reader
    print(batcher.stats())


if __name__ == "__main__":
    asyncio.run(main())
