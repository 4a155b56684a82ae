"""Counters and their frozen snapshots: ``Stats`` and ``CloseReport``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = ["SINK_STATES", "CloseReport", "SinkState", "Stats"]

SinkState = Literal["healthy", "throttled", "failing"]
"""A batcher's sink state: the one word for it in stats, events, metrics and the endpoint."""
SINK_STATES: tuple[SinkState, ...] = ("healthy", "throttled", "failing")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """A consistent snapshot of every counter, taken under the buffer's lock.

    The identity ``accepted == committed + coalesced + dead_lettered + dropped + pending +
    in_flight`` holds in every snapshot. After close, ``pending + in_flight`` equals ``lost``.
    """

    accepted: int = 0
    """Records an ``add()``/``add_nowait()`` took (including those a drop policy then dropped)."""
    committed: int = 0
    """Records the sink committed."""
    coalesced: int = 0
    """Records superseded in the buffer by a record with the same key and a newer version."""
    dead_lettered: int = 0
    """Records that can never be written (permanent error or retries exhausted)."""
    dropped: int = 0
    """Records dropped by a ``drop_newest``/``drop_oldest`` policy; see ``dropped_by_reason``."""
    pending: int = 0
    """Records waiting in the buffer."""
    in_flight: int = 0
    """Records in a batch the sink is writing (or will retry)."""
    batches: int = 0
    """Sink writes that committed."""
    retried: int = 0
    """Sink writes that failed with a retriable error and were tried again."""
    splits: int = 0
    """Batches split in two to isolate records that fail permanently."""
    write_errors: int = 0
    """Sink writes that raised (retriable or not)."""
    timeouts: int = 0
    """Sink writes that did not answer within ``write_timeout`` (also in ``write_errors``)."""
    throttled: int = 0
    """Sink writes refused with "retry after N s" (also in ``write_errors``)."""
    pauses: int = 0
    """Times the batcher paused: it left the healthy state (a throttle, or failing), or
    ``pause()`` was called."""
    dead_letter_errors: int = 0
    """Dead-lettered records the dead-letter store failed to keep (logged at ERROR)."""
    lost: int = 0
    """Records still pending or in flight when close() reached its deadline (0 while open)."""
    closed: bool = False
    sink_state: SinkState = "healthy"
    """``healthy``, ``throttled`` (paused until the sink's retry-after) or ``failing``
    (retriable errors; one probing write at a time)."""
    concurrency: int = 1
    """Batches that may be written at once now (adaptive, at most ``max_in_flight``)."""
    needs_capacity: float = 0.0
    """What every record pending or in flight costs together (``cost=``; 1 per record by
    default): go-batcher's "target", what this batcher asks its capacity for."""
    capacity: float | None = None
    """Cost units per second its capacity grants now (shared with every batcher holding
    it); None without ``capacity=``."""
    paused_for: float = 0.0
    """Seconds left of a ``pause()`` (0 when not paused)."""
    spooled: int = 0
    """Spool mode: records in the spool not yet done (committed, coalesced, dead-lettered or
    dropped); after close, those left in it for the next batcher."""
    recovered: int = 0
    """Spool mode: records a previous batcher left in the spool, taken again at start
    (counted in ``accepted``)."""
    stale: int = 0
    """Of ``committed``: records whose write changed nothing, because the store held the key
    at a newer version (``Outcome.STALE``; counted only by sinks that report it)."""
    bytes_held: int = 0
    """Bytes of the records held, pending and in flight, as ``size=`` (or the estimate)
    measured them; 0 without ``max_pending_bytes`` or ``max_batch_bytes``."""
    dropped_by_reason: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def held(self) -> int:
        """Records held in memory: ``pending + in_flight``."""
        return self.pending + self.in_flight


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseReport:
    """What ``close()`` achieved. ``lost`` counts records neither committed, coalesced,
    dead-lettered nor dropped: those still pending or in flight at the deadline."""

    stats: Stats
    lost: int
    timed_out: bool
    duration: float
    spooled: int = 0
    """Spool mode: records not written by the deadline and left in the spool (their
    receipts resolve ``SPOOLED``); the next batcher on the spool delivers them."""

    @property
    def ok(self) -> bool:
        """True when nothing was lost."""
        return self.lost == 0
