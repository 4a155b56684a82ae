"""What merge=, ttl= and the bytes bounds cost on the hot path, against the plain add.

200,000 heartbeat-like records over 50,000 keys (each key added four times, so three of four
adds coalesce) are handed to ``AsyncBatcher.add_nowait`` in chunks of 500, yielding to the
loop between chunks (the flusher writes to a ``MemorySink`` there); only the calls are
timed. Variants: the plain batcher (key and version); ``merge=wb.merge.sum_fields("n")``
(the merge runs on every add of a pending key); ``ttl=60`` (a clock read per record, a check
per record at the cut); ``max_pending_bytes`` with the default size estimate (a countdown per
add, one record in 128 measured), and with a ``size=`` function (called on every add).
Best of 5 interleaved rounds, per record.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from datetime import UTC, datetime, timedelta
from time import perf_counter_ns
from typing import Any

import writebehind as wb
from writebehind.testing import MemorySink

from ._common import Section, Table, Target, check, fmt_ratio, fmt_us

__all__ = ["measure"]

CHUNK = 500
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("plain `add_nowait` (key, version)", {"version": "at"}),
    "merge": ('`merge=wb.merge.sum_fields("n")`', {"merge": wb.merge.sum_fields("n")}),
    "ttl": ("`ttl=60`", {"version": "at", "ttl": 60.0}),
    "bytes": (
        "`max_pending_bytes`, default estimate",
        {"version": "at", "max_pending_bytes": 10**12},
    ),
    "bytes_fn": (
        "`max_pending_bytes`, `size=` a function",
        {"version": "at", "max_pending_bytes": 10**12, "size": lambda r: 120},
    ),
}


def _records(n: int) -> list[dict[str, Any]]:
    keys = [uuid.uuid4() for _ in range(n // 4)]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {"id": keys[i % len(keys)], "at": base + timedelta(microseconds=i), "n": 1,
         "status": "up"}
        for i in range(n)
    ]  # fmt: skip


async def _run(records: list[dict[str, Any]], options: dict[str, Any]) -> float:
    sink = MemorySink()
    batcher = wb.AsyncBatcher(sink, key="id", **options)
    await batcher.start()
    spent = 0
    for i in range(0, len(records), CHUNK):
        part = records[i : i + CHUNK]
        t0 = perf_counter_ns()
        for r in part:
            batcher.add_nowait(r)
        spent += perf_counter_ns() - t0
        await asyncio.sleep(0)
    await batcher.close()
    s = batcher.stats()
    check(
        s.accepted == len(records) and s.lost == 0 and s.dropped == 0,
        f"options {sorted(options)}: accepted {s.accepted}, lost {s.lost}, dropped {s.dropped}",
    )
    return spent / len(records)


def measure(quick: bool = False) -> Section:
    n = 20_000 if quick else 200_000
    rounds = 2 if quick else 5
    records = _records(n)
    best: dict[str, float] = {}
    for _ in range(rounds):
        for key, (_, options) in VARIANTS.items():
            gc.collect()
            ns = asyncio.run(_run(records, options))
            best[key] = min(best.get(key, ns), ns)
    plain = best["plain"]
    table = Table("add_nowait per record with each option", ["option", "µs per record", "vs plain"])
    for key, (label, _) in VARIANTS.items():
        table.rows.append([label, fmt_us(best[key]), fmt_ratio(best[key] / plain)])
    table.caption = (
        f"{n:,} records over {n // 4:,} `uuid.UUID` keys, chunks of {CHUNK}, best of "
        f"{rounds} interleaved rounds."
    )
    est = best["bytes"]
    return Section(
        key="options_cost",
        title="What merge=, ttl= and the bytes bounds cost per add",
        method=__doc__ or "",
        tables=[table],
        targets=[
            Target(
                "the default size estimate (`max_pending_bytes` without `size=`) costs no "
                "more than 5% over the plain add",
                est <= 1.05 * plain,
                f"{fmt_us(est)} µs vs {fmt_us(plain)} µs: {fmt_ratio(est / plain)}",
            )
        ],
        data={"ns_per_record": best, "records": n, "rounds": rounds},
    )
