"""Where the demo writes: the fleet it simulates and what a datastore must provide for it.

A :class:`Target` (SQLite in :mod:`._sqlite`, PostgreSQL in :mod:`._postgres`) creates the
heartbeats table, makes the sink the batcher writes through, replays the workload the naive
way, and checks the table afterwards. The demo itself (:mod:`.demo`) knows none of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ._display import Row
from ._naive import NaiveResult

__all__ = ["Fleet", "Target", "check_rows"]


class Fleet:
    """The agents' identities and what the producer sent them (for the final check).

    ``stamp`` turns the producer's clock reading (an aware UTC ``datetime``) into the value a
    record carries: an ISO 8601 string for SQLite, the ``datetime`` itself for PostgreSQL.
    """

    def __init__(
        self, ids: list[Any], replicas: list[Any], stamp: Callable[[dt.datetime], Any]
    ) -> None:
        self.ids = ids
        self.replicas = replicas
        self.stamp = stamp
        n = len(ids)
        self.first: list[Any] = [None] * n
        self.last: list[Any] = [None] * n
        self.latencies_ns: list[int] = []
        self.sent = 0

    def expected(self) -> dict[Any, Any]:
        """Each agent that sent, with the version of its newest heartbeat."""
        return {k: v for k, v in zip(self.ids, self.last, strict=True) if v is not None}


class Target(Protocol):
    """A datastore the demo can run against."""

    label: str
    """A short name for titles: ``"SQLite"``, ``"PostgreSQL"``."""
    where: str
    """Where it writes, safe to print (no password)."""
    max_in_flight: int
    """Batches the batcher may write at once."""
    naive_how: str
    """Where and how the naive replay writes, for the note announcing it."""

    async def prepare(self, *, reset: bool) -> None:
        """Create the table if it is missing (and empty it when ``reset``)."""

    def new_fleet(self, agents: int) -> Fleet:
        """A fleet of ``agents`` with identities of the table's types."""

    def sink(self) -> Any:
        """A new sink for the table (it counts its ``statements``)."""

    async def replay_naive(
        self, fleet: Fleet, *, interval: float, total: int, budget: float
    ) -> NaiveResult:
        """Write the workload one statement and one commit per heartbeat, for at most
        ``budget`` seconds."""

    async def check(self, fleet: Fleet) -> tuple[bool, str]:
        """Whether the table holds one row per agent of ``fleet``, newest heartbeat each."""

    def kept(self) -> Row | None:
        """A line for the final table saying what the demo leaves behind, if anything."""

    async def close(self) -> None:
        """Release what :meth:`prepare` acquired (temporary files, connections)."""


def check_rows(
    expected: Mapping[Any, Any], found: Mapping[Any, Any], total: int
) -> tuple[bool, str]:
    """Compare the newest heartbeat of each agent with the rows read back.

    ``found`` holds the rows of the fleet's agents; ``total`` is every row in the table (those
    beyond the fleet's come from earlier runs).
    """
    missing = sum(1 for k in expected if k not in found)
    stale = sum(1 for k, v in expected.items() if k in found and found[k] != v)
    if missing or stale:
        return False, (
            f"FAILED: {len(expected):,} agents, {missing:,} missing, {stale:,} not holding "
            "their newest heartbeat"
        )
    text = f"OK: {len(expected):,} rows, one per agent, newest heartbeat each"
    extra = total - len(expected)
    if extra > 0:
        text += f" (plus {extra:,} rows from an earlier run)"
    return True, text
