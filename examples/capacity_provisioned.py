"""One database budget for two tables: two batchers holding one ``ProvisionedCapacity``.

Run: python examples/capacity_provisioned.py

The database may take 2,000 cost units a second (request units, say). Two batchers write two
tables of it, ``orders`` and ``audit``, and each record carries what it costs in its ``ru``
field (``cost="ru"``): an order 10 or 20, an audit line 2 or 4. Both producers offer far
more than the budget for three seconds; ``add()`` waits whenever a batcher's buffer is full,
so the budget paces the producers too. A record costing more than the budget could ever
grant in a second is refused at ``add()`` with ``RecordError``.

Each table stamps the time a row landed (a column default), so the database itself says
what was spent per second. The first second spends up to twice the budget: the capacity
starts with one second of credit (its burst); from then on the two tables together stay at
the budget. How the budget divides between the tables is printed too: it goes to whichever
batcher is ready to write when credit is there, and today a batcher with cheaper records can
take all of it while both have a backlog (see docs/capacity.md, "Several batchers, one
budget"). It runs in about four seconds against SQLite in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path

import writebehind as wb

BUDGET = 2_000.0  # cost units per second, for both tables together
SECONDS = 3.0  # how long the producers offer more than the budget
LANDED = "(julianday('now') - 2440587.5) * 86400.0"  # unix time, when a row was written


async def produce(batcher: wb.AsyncBatcher, ru: int, until: float) -> int:
    """Add records costing ``ru`` and ``2 * ru`` in turn until ``until``; how many."""
    n = 0
    while time.time() < until:
        await batcher.add({"id": n, "ru": ru * (1 + n % 2)})  # waits while the buffer is full
        n += 1
    return n


async def main(db: Path) -> tuple[float, float]:
    capacity = wb.ProvisionedCapacity(per_second=BUDGET)
    orders_sink = wb.SQLiteSink(db, table="orders", key="id", synchronous="NORMAL")
    audit_sink = wb.SQLiteSink(db, table="audit", key="id", synchronous="NORMAL")

    def batcher(sink: wb.SQLiteSink, name: str) -> wb.AsyncBatcher:
        return wb.AsyncBatcher(
            sink, name=name, cost="ru", capacity=capacity, max_batch=50, max_pending=100,
            linger=0.05,
        )  # fmt: skip

    async with batcher(orders_sink, "orders") as orders, batcher(audit_sink, "audit") as audit:
        try:
            orders.add_nowait({"id": -1, "ru": 5_000})
        except wb.RecordError as exc:
            print(f"refused at add(): {exc}")
        started = time.time()
        until = started + SECONDS
        offered = await asyncio.gather(produce(orders, 10, until), produce(audit, 2, until))
        s = orders.stats()
        print(f"offered {offered[0]:,} orders and {offered[1]:,} audit lines in {SECONDS:g} s")
        print(f"orders now: capacity {s.capacity:,.0f}/s (shared), needs {s.needs_capacity:,.0f}")
    return started, time.time()


def spent_per_second(db: Path, started: float, ended: float) -> None:
    """What each table took in each whole second of the run, read back from the rows."""
    seconds = int(ended - started)
    spent = {table: [0.0] * seconds for table in ("orders", "audit")}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for table, per_second in spent.items():
            rows = conn.execute(
                f"SELECT CAST(landed - ? AS INTEGER), SUM(ru) FROM {table} GROUP BY 1",
                (started,),
            )
            for second, ru in rows:
                if 0 <= second < seconds:
                    per_second[second] = ru
    print(f"\nsecond   orders    audit    total   (budget {BUDGET:,.0f}/s)")
    for i in range(seconds):
        o, a = spent["orders"][i], spent["audit"][i]
        note = "  (one second of burst credit on top)" if i == 0 else ""
        print(f"{i:>6} {o:>8,.0f} {a:>8,.0f} {o + a:>8,.0f}{note}")
    steady = [spent["orders"][i] + spent["audit"][i] for i in range(1, seconds)]
    rate = sum(steady) / len(steady)
    print(f"seconds 1 to {seconds - 1}: {rate:,.0f}/s against {BUDGET:,.0f}/s "
          f"({rate / BUDGET:.0%} of the budget)")  # fmt: skip


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "capacity.db"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            for name in ("orders", "audit"):
                conn.execute(
                    f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, ru INTEGER, "
                    f"landed REAL DEFAULT ({LANDED}))"
                )
            conn.commit()
        start, end = asyncio.run(main(path))
        spent_per_second(path, start, end)
