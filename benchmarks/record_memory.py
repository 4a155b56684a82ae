"""Memory per pending record: what the buffer costs on top of the records themselves.

100,000 heartbeat records (a `uuid.UUID` id, a datetime version, two more fields) are made
first; then, with `tracemalloc` tracing, they are handed to a holder and the traced bytes it
added are divided by the number of records. Holders: `AsyncBatcher.add_nowait` (memory mode,
`linger` long enough that nothing is cut, so every record is pending), `add_many_nowait`
(groups of 500), a plain dict keyed by the record's id (the least a coalescing buffer can
hold: one slot per key), and that dict plus an arrival-order deque. Each in a fresh child
process, best of 3.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from ._common import Section, Table, check, fmt_ratio

__all__ = ["measure"]

N = 100_000
HOLDERS = ("add_nowait", "add_many_nowait", "dict", "dict_and_deque")


def _hold(holder: str, records: list[Any]) -> tuple[int, Any]:
    """Hand ``records`` to ``holder`` under tracemalloc; the traced bytes it added."""
    import writebehind as wb
    from writebehind.testing import MemorySink

    keep: Any = None
    if holder.startswith("add"):
        batcher = wb.AsyncBatcher(MemorySink(), key="id", version="updated_at", linger=3600,
                                  max_batch=N, max_pending=N)  # fmt: skip

        async def start() -> None:
            await batcher.start()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(start())
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        if holder == "add_nowait":
            for r in records:
                batcher.add_nowait(r)
        else:
            for i in range(0, len(records), 500):
                batcher.add_many_nowait(records[i : i + 500])
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        check(batcher.stats().pending == len(records), f"{holder}: not every record pending")
        keep = (batcher, loop)
    else:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        d: dict[Any, Any] = {}
        if holder == "dict":
            for r in records:
                d[r["id"]] = r
        else:
            order: deque[Any] = deque()
            for r in records:
                k = r["id"]
                d[k] = r
                order.append(k)
            keep = order
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        keep = (d, keep)
    return used, keep


def _records() -> list[dict[str, Any]]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {"id": uuid.uuid4(), "updated_at": base + timedelta(microseconds=i), "status": "up",
         "load": i % 100}
        for i in range(N)
    ]  # fmt: skip


def _child(holder: str) -> float:
    records = _records()
    used, _ = _hold(holder, records)
    return used / N


def _spawn(holder: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.record_memory", holder],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(quick: bool = False) -> Section:
    repeats = 1 if quick else 3
    best: dict[str, float] = {}
    for _ in range(repeats):
        for h in HOLDERS:
            b = _spawn(h)
            best[h] = min(best.get(h, b), b)
    base = best["dict"]
    table = Table(
        "Bytes per pending record, on top of the record",
        ["holder", "bytes per record", "vs a plain dict"],
    )
    labels = {
        "add_nowait": "`AsyncBatcher.add_nowait`",
        "add_many_nowait": "`AsyncBatcher.add_many_nowait` (groups of 500)",
        "dict": "`dict` keyed by id (baseline)",
        "dict_and_deque": "`dict` keyed by id + arrival-order `deque` (baseline)",
    }
    for h in HOLDERS:
        table.rows.append([labels[h], f"{best[h]:.0f}", fmt_ratio(best[h] / base)])
    table.caption = f"{N:,} records, best of {repeats} fresh processes each."
    per = best["add_nowait"]
    return Section(
        key="record_memory",
        title="Memory per pending record",
        method=__doc__ or "",
        tables=[table],
        notes=[
            f"`add_nowait` holds {per:.0f} bytes per pending record, {fmt_ratio(per / base)} "
            "a plain dict's slot. What it holds beyond the dict: a `Receipt` (5 slots and "
            "a GC header: the record, its version, and the batch, outcome and successor "
            "it is given later), the key as an int when it is a `uuid.UUID` (hashing a "
            "UUID runs Python code; its int hashes in C: about 44 bytes for speed), and "
            "the arrival-order deque. Before `_cost` and `_seq` became slots only of the "
            "batchers that use them (2026-12-03) it was 148.7 bytes (2.84x)."
        ],
        data={"bytes_per_record": best, "records": N, "repeats": repeats},
    )


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
