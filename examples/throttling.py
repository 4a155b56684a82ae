"""A sink that throttles: the batcher pauses for what the sink asks and settles at its rate.

Run: python examples/throttling.py

``ThrottlingSink`` (from ``writebehind.testing``) takes at most 1,000 records per second and
answers "retry after N s" above that, as a provisioned database or a rate-limited API does.
A producer offers about twice that for three seconds. The batcher pauses each time for the
time the sink asks (a throttle does not use up retry attempts), halves its concurrency
(``max_in_flight=4`` is only the ceiling), and the committed rate settles at the sink's
limit; nothing is lost. The script prints the events of the first few state changes and
the figures at the end.
"""

from __future__ import annotations

import asyncio
import time

import writebehind as wb
from writebehind.testing import ThrottlingSink


async def watch(batcher: wb.AsyncBatcher, shown: int = 4) -> None:
    async for event in batcher.events():
        match event:
            case wb.Paused(reason=why, seconds=s) if shown > 0:
                print(f"  paused ({why}) for {s * 1000:.0f} ms")
                shown -= 1
            case wb.Resumed(reason=why, paused_for=s) if shown > 0:
                print(f"  resumed after {s * 1000:.0f} ms ({why})")
                shown -= 1


async def main() -> None:
    rate = 1000.0
    sink = ThrottlingSink(rate=rate, burst=100)
    async with wb.AsyncBatcher(sink, max_batch=50, linger=0.05, max_in_flight=4) as batcher:
        watcher = asyncio.create_task(watch(batcher))
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 3.0:
            for _ in range(20):
                await batcher.add({"n": n})  # waits when the buffer is full: backpressure
                n += 1
            await asyncio.sleep(0.01)  # at most about 2,000 records/s offered
        await batcher.flush()
        elapsed = time.monotonic() - started
        s = batcher.stats()
    await watcher
    print(f"offered {n:,} records in {elapsed:.1f} s; the sink takes {rate:,.0f}/s")
    print(f"committed {s.committed:,} ({s.committed / elapsed:,.0f}/s), lost {s.lost}")
    print(f"throttled {s.throttled} times, concurrency now {s.concurrency} (ceiling 4)")


if __name__ == "__main__":
    asyncio.run(main())
