"""The demo's baseline: the same heartbeats written the naive way, one at a time.

Each heartbeat is one ``INSERT ... ON CONFLICT (id) DO UPDATE`` in its own transaction
(autocommit: one statement, one commit), against a fresh SQLite file with the settings the
batched run used (WAL journal, ``synchronous=FULL``). The replay stops after ``budget``
seconds; the time for the whole workload is then extrapolated from the rate it reached.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import time
from dataclasses import dataclass

__all__ = ["NaiveResult", "replay_naive"]

_CHECK_EVERY = 64  # heartbeats between reads of the clock


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


def replay_naive(
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
    sql = (
        f"INSERT INTO {table} (id, replica_id, first_connected_at, last_connected_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "replica_id = excluded.replica_id, first_connected_at = excluded.first_connected_at, "
        "last_connected_at = excluded.last_connected_at, updated_at = excluded.updated_at "
        f"WHERE excluded.updated_at >= {table}.updated_at"
    )
    n = len(ids)
    step = dt.timedelta(seconds=interval / n)
    start = dt.datetime.now(dt.UTC)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(schema)
        replayed = 0
        t0 = time.perf_counter()
        for j in range(total):
            i = j % n
            stamp = (start + j * step).isoformat(timespec="microseconds")
            first = (start + i * step).isoformat(timespec="microseconds")
            conn.execute(sql, (ids[i], replicas[i], first, stamp, stamp))  # autocommits
            replayed += 1
            if replayed % _CHECK_EVERY == 0 and time.perf_counter() - t0 >= budget:
                break
        seconds = time.perf_counter() - t0
    return NaiveResult(total=total, replayed=replayed, seconds=seconds)
