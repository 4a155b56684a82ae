"""The demo's baseline: the same heartbeats written the naive way, one at a time.

Each heartbeat is one ``INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE excluded.updated_at
>= updated_at`` in its own transaction (autocommit: one statement, one commit). For SQLite
it runs against a fresh file with the settings the batched run used (WAL journal,
``synchronous=FULL``); for PostgreSQL (:mod:`._postgres`) against a scratch copy of the
table, on one connection. The replay stops after ``budget`` seconds; the time for the whole
workload is then extrapolated from the rate it reached.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["CHECK_EVERY", "COLUMNS", "NaiveResult", "heartbeats", "replay_sqlite", "upsert_sql"]

COLUMNS = ("id", "replica_id", "first_connected_at", "last_connected_at", "updated_at")
CHECK_EVERY = 64  # heartbeats between reads of the clock


@dataclass(frozen=True, slots=True, kw_only=True)
class NaiveResult:
    """How the naive replay went."""

    total: int
    """Heartbeats in the whole workload (and so statements, and commits)."""
    replayed: int
    """Heartbeats actually written before the budget ran out."""
    seconds: float
    """Time the replayed heartbeats took."""

    @property
    def rate(self) -> float:
        """The most heartbeats per second this way of writing sustains."""
        return self.replayed / self.seconds if self.seconds > 0 else float("inf")

    @property
    def estimated_seconds(self) -> float:
        """Time the whole workload takes this way (measured, or extrapolated)."""
        if self.replayed == self.total:
            return self.seconds
        return self.total / self.rate


def upsert_sql(table: str, placeholders: list[str]) -> str:
    """One heartbeat's version-conditional upsert into ``table`` (a quoted name)."""
    sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
    return (
        f"INSERT INTO {table} AS t ({', '.join(COLUMNS)}) VALUES ({', '.join(placeholders)}) "
        f"ON CONFLICT (id) DO UPDATE SET {sets} WHERE excluded.updated_at >= t.updated_at"
    )


def heartbeats(
    ids: list[Any], replicas: list[Any], *, interval: float, total: int
) -> Iterator[tuple[Any, Any, dt.datetime, dt.datetime]]:
    """The workload as ``(id, replica, first_connected_at, stamp)``, with synthetic stamps
    one ``interval / len(ids)`` apart, as the producer would have sent them."""
    n = len(ids)
    step = dt.timedelta(seconds=interval / n)
    start = dt.datetime.now(dt.UTC)
    for j in range(total):
        i = j % n
        yield ids[i], replicas[i], start + i * step, start + j * step


def replay_sqlite(
    path: str,
    *,
    schema: str,
    table: str,
    ids: list[str],
    replicas: list[str],
    interval: float,
    total: int,
    budget: float,
) -> NaiveResult:
    """Write ``total`` heartbeats of the fleet ``ids`` one statement and commit at a time."""
    sql = upsert_sql(table, ["?"] * len(COLUMNS))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(schema)
        replayed = 0
        t0 = time.perf_counter()
        for agent, replica, first, stamp in heartbeats(
            ids, replicas, interval=interval, total=total
        ):
            iso = stamp.isoformat(timespec="microseconds")
            first_iso = first.isoformat(timespec="microseconds")
            conn.execute(sql, (agent, replica, first_iso, iso, iso))  # autocommits
            replayed += 1
            if replayed % CHECK_EVERY == 0 and time.perf_counter() - t0 >= budget:
                break
        seconds = time.perf_counter() - t0
    return NaiveResult(total=total, replayed=replayed, seconds=seconds)
