"""Overflow policies: what ``when_full`` does when the sink cannot keep up.

A producer offers 100 records at once to a batcher holding at most 20 (``max_pending``)
in front of a sink that takes 50 ms per write (``writebehind.testing.SlowSink``):

- ``block``: ``add()`` waits for room; nothing is refused or dropped, the producer slows.
- ``raise``: ``add_nowait()`` raises ``BufferFull``; the caller keeps the refused records.
- ``drop_newest``: the incoming record is dropped (counted, its receipt says ``DROPPED``).
- ``drop_oldest``: the oldest pending record is dropped to make room for the new one.
- ``direct``: the record that found the buffer full is written alone, at once.

Each run prints the time it took, the stats (``accepted == committed + dropped`` here, no
keys so nothing coalesces) and ``dropped_by_reason``.

Run it with ``python examples/overflow_policies.py``; it takes about a second.
"""

from __future__ import annotations

import asyncio
import time

import writebehind as wb
from writebehind.testing import SlowSink

POLICIES = ("block", "raise", "drop_newest", "drop_oldest", "direct")
RECORDS = 100


async def run(policy: str) -> None:
    sink = SlowSink(delay=0.05)
    refused = 0
    started = time.perf_counter()
    async with wb.AsyncBatcher(
        sink, max_batch=10, max_pending=20, linger=0.01, when_full=policy
    ) as batcher:
        for i in range(RECORDS):
            record = {"n": i}
            if policy == "block":
                await batcher.add(record)  # waits for room
            else:
                try:
                    batcher.add_nowait(record)  # never waits
                except wb.BufferFull:
                    refused += 1  # not accepted: we still hold the record
    elapsed = time.perf_counter() - started
    s = batcher.stats()
    print(f"{policy:<12} {elapsed:5.2f} s  sink writes {sink.writes:>3}  refused {refused:>3}")
    print(
        f"{'':<12} accepted {s.accepted:>3}  committed {s.committed:>3}  dropped {s.dropped:>3}"
        f"  lost {s.lost}  dropped_by_reason {dict(s.dropped_by_reason)}"
    )


async def main() -> None:
    for policy in POLICIES:
        await run(policy)


if __name__ == "__main__":
    asyncio.run(main())
