"""Presence: answer reads from what is pending (peek), and drop what went stale (ttl).

A presence service accepts "user is online" updates and answers "is user X online?" from
the batcher before the flush (peek). When the datastore is down for longer than the
presence is worth (ttl=2 s here), the stale updates are dropped instead of being written
late: counted (dropped, reason "expired"), evented and logged.

Run: python examples/ttl_and_peek.py
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import writebehind as wb
from writebehind.testing import GatedSink


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    sink = GatedSink()  # a datastore that does not answer until we open it
    async with wb.AsyncBatcher(sink, key="user", version="seen_at", ttl=2.0, linger=0,
                               max_batch=1) as batcher:  # fmt: skip
        batcher.add_nowait({"user": "ada", "status": "online", "seen_at": 1})
        await asyncio.sleep(0.05)  # ada's write is in flight, held by the datastore
        batcher.add_nowait({"user": "bob", "status": "online", "seen_at": 1})
        answer: Any = batcher.peek("bob")
        print(f"bob before the flush: {answer['status']}")  # from the buffer
        print(f"ada, in flight: {batcher.peek('ada')['status']}")
        print(f"carol, never added: {batcher.peek('carol')}")
        await asyncio.sleep(2.1)  # the outage outlasts bob's ttl
        print(f"bob after 2.1 s: {batcher.peek('bob')}")  # expired: not an answer any more
        sink.open()
        await batcher.flush()
        s = batcher.stats()
        print(f"committed {s.committed}, expired {s.dropped_by_reason['expired']}")
    print(f"written: {[r['user'] for r in sink.records]}")


if __name__ == "__main__":
    asyncio.run(main())
