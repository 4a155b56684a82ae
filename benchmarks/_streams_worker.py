"""One flusher process of ``benchmarks/streams.py`` (``python -m benchmarks._streams_worker``).

Reads its settings as a JSON line on stdin, prepares, prints ``{"event": "ready"}``, waits
for a ``go`` line, then writes into PostgreSQL, printing its committed count every 50 ms,
until its stdin closes. Mode ``stream``: ``consume_stream`` from the prefilled stream (its
own group per run, entries not deleted). Mode ``direct``: its share of the same records
added straight to its batcher (PostgreSQL without the stream: the ceiling). Its PostgreSQL
connections carry ``application_name`` from the settings, so the benchmark can find their
backends and count their CPU. With ``WB_BENCH_PROFILE=PATH`` in its environment it runs under
cProfile and writes the stats to ``PATH.<index>``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import writebehind as wb

from ._common import heartbeats

_TICK = 0.05


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _ticks(batcher: wb.AsyncBatcher) -> None:
    while True:
        _say(event="tick", t=time.time(), committed=batcher.stats().committed)
        await asyncio.sleep(_TICK)


async def _run(cfg: dict[str, Any]) -> None:
    dsn = cfg["dsn"] + ("&" if "?" in cfg["dsn"] else "?") + f"application_name={cfg['app']}"
    sink = wb.PostgresSink(dsn, table=cfg["table"], key="id", pool_size=2)
    batcher = wb.AsyncBatcher(sink, key="id", max_batch=500, linger=0.05, max_in_flight=2)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    mine: list[dict[str, Any]] = []
    if cfg["mode"] == "direct":
        records, _ = heartbeats(cfg["n"], 1, interval=1.0, seed=cfg["seed"])
        mine = records[cfg["index"] :: cfg["of"]]
    async with batcher as b:
        _say(event="ready")
        await reader.readline()  # go
        ticker = asyncio.create_task(_ticks(b))

        async def stop_at_eof() -> None:
            await reader.read()
            await b.close()

        stopper = asyncio.create_task(stop_at_eof())
        if cfg["mode"] == "stream":
            await wb.consume_stream(
                cfg["redis"], stream=cfg["stream"], group=cfg["group"],
                consumer=f"bench-{cfg['index']}", into=b, block=0.05, delete=False,
            )  # fmt: skip
        else:
            for record in mine:
                await b.add(record)
            await b.flush()
            await stopper
        ticker.cancel()
        _say(event="tick", t=time.time(), committed=b.stats().committed)
        await stopper


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    profile = os.environ.get("WB_BENCH_PROFILE")
    if not profile:
        asyncio.run(_run(cfg))
        return
    import cProfile

    with cProfile.Profile() as prof:
        asyncio.run(_run(cfg))
    prof.dump_stats(f"{profile}.{cfg['index']}")


if __name__ == "__main__":
    main()
