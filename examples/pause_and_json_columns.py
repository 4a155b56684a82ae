"""Two small features: ``pause(seconds)`` and nested values in a JSON column.

- ``pause()``: the datastore says it is under pressure; the batcher cuts no batch and starts
  no write for that long while records keep arriving and coalescing, publishes ``Paused``
  and ``Resumed`` events, and ``stats().paused_for`` counts down.
- A SQLite table with a ``JSON`` column: a dict is written as JSON text through
  ``json_dumps=`` (here one that sorts keys; it replaces the sink's own encoder, which also
  writes nested dataclasses, pydantic models and msgspec Structs), and an Enum member as its
  value.

Run it with ``python examples/pause_and_json_columns.py``; it takes about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import writebehind as wb


class Status(enum.Enum):
    UP = "up"
    DOWN = "down"


async def main(db: Path) -> None:
    sink = wb.SQLiteSink(
        db, table="agents", key="id", version="v",
        json_dumps=lambda obj: json.dumps(obj, sort_keys=True),
    )  # fmt: skip
    async with wb.AsyncBatcher(sink, key="id", version="v", linger=0.05) as b:
        events = b.events()
        b.pause(0.5)  # e.g. the datastore answered "slow down"
        started = time.monotonic()
        for v in range(1, 4):
            b.add_nowait({"id": "a-1", "v": v, "status": Status.UP,
                          "meta": {"region": "eu", "rack": v}})  # fmt: skip
        print(f"paused, {b.stats().pending} pending, {b.stats().paused_for:.1f} s left")
        await b.flush()  # waits for the pause to end, then writes
        print(f"flushed after {time.monotonic() - started:.2f} s: {b.stats().committed} committed, "
              f"{b.stats().coalesced} coalesced")  # fmt: skip
        seen = []
        async for event in events:
            seen.append(type(event).__name__)
            if isinstance(event, wb.BatchCommitted):
                break
        print("events:", ", ".join(seen))
        assert seen[:2] == ["Paused", "Resumed"]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agents.db"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(
                "CREATE TABLE agents (id TEXT PRIMARY KEY, v INTEGER, status TEXT, meta JSON)"
            )
        asyncio.run(main(path))
        with contextlib.closing(sqlite3.connect(path)) as conn:
            row = conn.execute("SELECT v, status, meta FROM agents").fetchone()
        print("row:", row)
        assert row == (3, "up", '{"rack": 3, "region": "eu"}')
