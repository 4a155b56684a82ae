"""One process of ``writebehind demo --hosts N``: a producer or a flusher (``python -m``).

It reads its settings as one JSON line on stdin (so no DSN or Redis password shows in
``ps``) and prints one JSON line per tick. A producer heartbeats its agents as fast as its
batcher takes them, through a :class:`~writebehind.RedisStreamSink` (``await add()`` waits
while the stream is at ``maxlen``), for ``duration`` seconds, then closes. A flusher runs
:func:`~writebehind.consume_stream` into a :class:`~writebehind.PostgresSink` batcher until
its stdin closes (the parent's signal to stop), then closes and reports.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import sys
import time
import uuid
from typing import Any

from .. import AsyncBatcher, PostgresSink, RedisStreamSink, RetryPolicy, consume_stream

__all__ = ["main"]

_TICK = 0.5  # seconds between progress lines
_CHUNK = 256  # heartbeats offered between reads of the clock
_RETRY = RetryPolicy(base=0.05, cap=1.0, max_attempts=1000)  # ride out short outages


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _ticks(batcher: AsyncBatcher, role: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        s = batcher.stats()
        _say(event="tick", role=role, t=time.time(), committed=s.committed, accepted=s.accepted)
        await asyncio.sleep(_TICK)


async def _produce(cfg: dict[str, Any]) -> None:
    sink = RedisStreamSink(cfg["redis"], stream=cfg["stream"], maxlen=cfg["maxlen"])
    ids = [uuid.uuid4() for _ in range(cfg["agents"])]
    replica, first = uuid.uuid4(), dt.datetime.now(dt.UTC)
    batcher = AsyncBatcher(
        sink, key="id", version="updated_at", max_batch=500, linger=0.2, max_in_flight=2,
        retry=_RETRY, name=f"producer-{cfg['index']}",
    )  # fmt: skip
    stop = asyncio.Event()
    async with batcher as b:
        ticker = asyncio.create_task(_ticks(b, "producer", stop))
        stop_at = time.monotonic() + cfg["duration"]
        i = 0
        while time.monotonic() < stop_at:
            for _ in range(_CHUNK):
                stamp = dt.datetime.now(dt.UTC)
                await b.add(
                    {"id": ids[i % len(ids)], "replica_id": replica, "first_connected_at": first,
                     "last_connected_at": stamp, "updated_at": stamp}
                )  # fmt: skip
                i += 1
            await asyncio.sleep(0)
    stop.set()
    await ticker
    report = await batcher.close()
    s = report.stats
    _say(event="closed", role="producer", t=time.time(), committed=s.committed,
         accepted=s.accepted, coalesced=s.coalesced, lost=report.lost,
         dead_lettered=s.dead_lettered, offered=i)  # fmt: skip


async def _flush(cfg: dict[str, Any]) -> None:
    sink = PostgresSink(cfg["dsn"], table=cfg["table"], key="id", version="updated_at")
    batcher = AsyncBatcher(
        sink, key="id", version="updated_at", max_batch=cfg["max_batch"], linger=0.2,
        max_in_flight=2, retry=_RETRY, name=f"flusher-{cfg['index']}",
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with batcher as b:
        # the parent closes our stdin to stop us: then close the batcher, and consume_stream
        # returns once what was read is written and acknowledged
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def on_eof() -> None:
            await reader.read()
            await b.close()

        closer = asyncio.create_task(on_eof())
        ticker = asyncio.create_task(_ticks(b, "flusher", stop))
        consumer = f"{socket.gethostname()}-{os.getpid()}"
        report = await consume_stream(
            cfg["redis"], stream=cfg["stream"], group=cfg["group"], consumer=consumer,
            into=b, claim_after=5.0, block=0.2,
        )  # fmt: skip
        stop.set()
        await ticker
        await closer
    s = batcher.stats()
    _say(event="closed", role="flusher", t=time.time(), committed=s.committed,
         coalesced=s.coalesced, lost=s.lost, dead_lettered=s.dead_lettered, read=report.read,
         acked=report.acked, claimed=report.claimed, left_pending=report.left_pending)  # fmt: skip


def main() -> int:
    cfg = json.loads(sys.stdin.readline())
    try:
        asyncio.run(_produce(cfg) if cfg["role"] == "producer" else _flush(cfg))
    except Exception as exc:  # the parent prints it; never a secret (the library redacts)
        _say(event="failed", role=cfg["role"], error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
