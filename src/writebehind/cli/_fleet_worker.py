"""One instance of ``writebehind demo --fleet``: a process of its own (``python -m``).

It reads its settings as one JSON line on stdin (so the DSN never shows in ``ps``), runs
an :class:`~writebehind.AsyncBatcher` into PostgreSQL whose writes spend a
:class:`~writebehind.RedisSharedCapacity` named by the parent, offers its agents'
heartbeats as fast as the batcher takes them (``await add()`` waits when the buffer is
full), and prints one JSON line per tick: the records committed so far and the capacity it
holds. At the end it prints its close report and exits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
import uuid
from typing import Any

from .. import AsyncBatcher, PostgresSink, RedisSharedCapacity

__all__ = ["main"]

_TICK = 0.5  # seconds between progress lines
_CHUNK = 256  # heartbeats offered between reads of the clock


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _run(cfg: dict[str, Any]) -> int:
    cap = RedisSharedCapacity(
        cfg["redis"], name=cfg["name"], shared=cfg["shared"], reserved=cfg["reserved"],
        partition=cfg["partition"], lease=cfg["lease"],
    )  # fmt: skip
    sink = PostgresSink(cfg["dsn"], table=cfg["table"], key="id", version="updated_at")
    ids = [uuid.uuid4() for _ in range(cfg["agents"])]
    replica = uuid.uuid4()
    first: dict[uuid.UUID, dt.datetime] = {}
    batcher = AsyncBatcher(
        sink, key="id", version="updated_at", capacity=cap, cost=1,
        max_batch=cfg["max_batch"], linger=cfg["linger"], name=f"instance-{cfg['index']}",
    )  # fmt: skip
    async with batcher as b:
        _say(event="started", t=time.time())
        stop_at = time.monotonic() + cfg["duration"]
        next_tick = time.monotonic() + _TICK
        i = 0
        while (now := time.monotonic()) < stop_at:
            for _ in range(_CHUNK):
                agent = ids[i % len(ids)]
                stamp = dt.datetime.now(dt.UTC)
                since = first.setdefault(agent, stamp)
                await b.add(
                    {"id": agent, "replica_id": replica, "first_connected_at": since,
                     "last_connected_at": stamp, "updated_at": stamp}
                )  # fmt: skip
                i += 1
            if now >= next_tick:
                s = b.stats()
                held = cap.describe().get("partitions")
                _say(event="tick", t=time.time(), committed=s.committed, capacity=s.capacity,
                     needs=s.needs_capacity, partitions=held)  # fmt: skip
                next_tick += _TICK
            await asyncio.sleep(0)
        _say(event="stopping", t=time.time(), committed=b.stats().committed, offered=i)
    report = await batcher.close()  # already closed: the report of that close
    s = report.stats
    _say(event="closed", t=time.time(), committed=s.committed, accepted=s.accepted,
         coalesced=s.coalesced, lost=report.lost, dead_lettered=s.dead_lettered)  # fmt: skip
    return 0


def main() -> int:
    cfg = json.loads(sys.stdin.readline())
    try:
        return asyncio.run(_run(cfg))
    except Exception as exc:  # the parent prints it; never the DSN (the library redacts)
        _say(event="failed", error=f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
