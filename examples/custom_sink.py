"""Your own sink: any object with ``async def write(self, batch)``, or a function.

``JsonLinesSink`` is a user-written sink class: it appends each batch to a file as JSON
lines, and fails once with ``RetriableSinkError`` to show the engine retrying the batch
(with backoff) until it commits. ``CallableSink`` turns a plain function into a sink; a
sync function runs in a worker thread so it cannot block the event loop. Raise
``wb.PermanentSinkError`` instead for data that can never be written: the engine then
splits the batch to isolate the bad records and dead-letters them.

Run it with ``python examples/custom_sink.py``; it writes to a temporary directory and
takes under a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import writebehind as wb


class JsonLinesSink:
    """Append every batch to a JSON-lines file, one line per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failures_left = 1  # the first write fails, to show a retry

    async def write(self, batch: list[Any]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise wb.RetriableSinkError("the disk is busy (simulated)")
        lines = "".join(json.dumps(record) + "\n" for record in batch)
        await asyncio.to_thread(self._append, lines)

    def _append(self, lines: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)


totals: dict[str, int] = {}


def add_to_totals(batch: list[dict[str, Any]]) -> None:
    """A plain function as a sink: sum page views per page (runs in a worker thread)."""
    for record in batch:
        totals[record["page"]] = totals.get(record["page"], 0) + record["views"]


async def main(directory: Path) -> None:
    events = directory / "events.jsonl"
    async with wb.AsyncBatcher(JsonLinesSink(events), max_batch=50, linger=0.1) as batcher:
        for i in range(120):
            await batcher.add({"event": "login", "user": f"user-{i % 7}", "n": i})
    # leaving the block closed the batcher: everything added is written (or reported lost)
    print(f"JsonLinesSink: {batcher.stats()}")
    print(f"  {events.name} holds {len(events.read_text(encoding='utf-8').splitlines())} lines")

    async with wb.AsyncBatcher(wb.CallableSink(add_to_totals), linger=0.1) as batcher:
        for i in range(1_000):
            batcher.add_nowait({"page": f"/page/{i % 3}", "views": 1})
        await batcher.flush()
        print(f"CallableSink: {batcher.stats()}")
    print(f"  totals: {dict(sorted(totals.items()))}")


if __name__ == "__main__":
    logging.basicConfig(format="log: %(message)s")  # shows the engine's retry warning
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
