"""A process of the stream hand-off tests (tests/test_redis_stream_procs.py).

``produce OUT URL STREAM FIRST LAST``: add ids FIRST..LAST-1 through a ``RedisStreamSink``
batcher; write to OUT (JSON) the ids whose receipts resolved COMMITTED and the counts.

``flush OUT URL STREAM GROUP CONSUMER DSN TABLE CLAIM_AFTER [STALL_AFTER STALLED]``: run
``consume_stream`` into a ``PostgresSink`` batcher until SIGTERM; then close, and write the
report to OUT. With STALL_AFTER, the write after that many writes creates the file STALLED
and hangs before writing (the test SIGKILLs the process there: mid-batch).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import writebehind as wb

RETRY = wb.RetryPolicy(base=0.05, cap=0.5, max_attempts=10_000)  # outlive a Redis restart


class Stalling:
    """A PostgresSink that hangs (before writing) on its write number ``after + 1``."""

    def __init__(self, inner: wb.PostgresSink, after: int, stalled: Path) -> None:
        self.inner, self.after, self.stalled = inner, after, stalled
        self.key, self.version = inner.key, inner.version
        self.writes = 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, batch: list[Any]) -> None:
        self.writes += 1
        if self.writes > self.after:
            self.stalled.write_text(str(len(batch)))
            await asyncio.sleep(3600)
        await self.inner.write(batch)


async def produce(url: str, stream: str, first: int, last: int) -> dict[str, Any]:
    sink = wb.RedisStreamSink(url, stream=stream)
    receipts = []
    async with wb.AsyncBatcher(
        sink, max_batch=200, linger=0.02, max_in_flight=2, retry=RETRY, close_timeout=60
    ) as batcher:
        for i in range(first, last):
            receipts.append((i, await batcher.add({"id": i, "v": 1, "note": f"n{i}"})))
    committed = [i for i, r in receipts if r.outcome is wb.Outcome.COMMITTED]
    stats = batcher.stats()
    return {"committed": committed, "retried": stats.retried}


async def flush(args: list[str]) -> dict[str, Any]:
    url, stream, group, consumer, dsn, table, claim_after = args[:7]
    sink: Any = wb.PostgresSink(dsn, table=table, key="id", version="v", pool_size=2)
    if len(args) > 7:
        sink = Stalling(sink, int(args[7]), Path(args[8]))
    batcher = wb.AsyncBatcher(
        sink, key="id", version="v", max_batch=500, linger=0.05, max_in_flight=2, retry=RETRY
    )
    async with batcher:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(batcher.close()))
        report = await wb.consume_stream(
            url,
            stream=stream,
            group=group,
            consumer=consumer,
            into=batcher,
            claim_after=float(claim_after),
            block=0.2,
        )
    stats = batcher.stats()
    fields = ("read", "claimed", "added", "acked", "dead_lettered", "left_pending")
    return {f: getattr(report, f) for f in fields} | {"committed": stats.committed}


def main() -> None:
    mode, out, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if mode == "produce":
        url, stream, first, last = args
        result = asyncio.run(produce(url, stream, int(first), int(last)))
    else:
        result = asyncio.run(flush(args))
    out.write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
