"""Serve a batcher's stats endpoint while it works, and read it like ``writebehind top``.

Run: python examples/top_endpoint.py

An ``AsyncBatcher`` writes heartbeats (a few poison records, dead-lettered) into an
in-memory sink for two seconds with the local stats endpoint open on 127.0.0.1 (a free
port). Meanwhile a thread prints one ``writebehind top --once --plain`` snapshot of it. In
your own app, keep the endpoint open and run ``writebehind top --url URL`` in a terminal.
"""

from __future__ import annotations

import asyncio
import time

import writebehind as wb
from writebehind.cli.main import main as cli
from writebehind.integrations.serve import serve
from writebehind.testing import FlakySink


async def main() -> None:
    sink = FlakySink(fail_first=2, poison=lambda r: r["seq"] % 5000 == 4999)
    async with (
        wb.AsyncBatcher(sink, key="id", max_batch=200, linger=0.05, name="heartbeats") as b,
        await serve(b) as server,  # 127.0.0.1, a free port
    ):
        print(f"stats endpoint: {server.url} (try: writebehind top --url {server.url})")
        top = asyncio.create_task(
            asyncio.to_thread(cli, ["top", "--once", "--plain", "--url", server.url])
        )
        deadline, seq = time.monotonic() + 2.0, 0
        while time.monotonic() < deadline:
            for _ in range(500):
                await b.add({"id": seq % 1000, "seq": seq})
                seq += 1
            await asyncio.sleep(0.01)
        await top
    print(f"served {server.url} while {seq:,} heartbeats were added; then closed it")
    print(b.stats())


if __name__ == "__main__":
    asyncio.run(main())
