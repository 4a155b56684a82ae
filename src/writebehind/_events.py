"""Typed, indexed events and the bounded buffer that holds them.

Events are frozen dataclasses; consumers ``match`` on the type. Each has an ``index`` (from
1, rising by one, no gaps) and ``at`` (wall-clock seconds). The buffer, in the shape of
Nomad's event buffer, has one writer (the event loop) and any number of readers: it keeps
the last ``size`` events, writers never wait, and a reader that falls so far behind that
its next event was dropped gets :class:`SubscriberLagged`, which says where to resume.
Events are published per batch or per state change, never per record.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import WriteBehindError
from ._stats import CloseReport

__all__ = [
    "BatchCommitted",
    "BatchFailed",
    "BufferFilled",
    "CapacityChanged",
    "Closed",
    "Event",
    "EventBuffer",
    "Paused",
    "RecordsDeadLettered",
    "RecordsDropped",
    "Resumed",
    "RetryScheduled",
    "SubscriberLagged",
    "Subscription",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    index: int
    """Position in the batcher's event sequence: 1, 2, 3, ... with no gaps."""
    at: float
    """Wall-clock time (``time.time()``) when the event was published."""
    batcher: str
    """The batcher's ``name``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchCommitted(_Base):
    """A sink write committed ``size`` records."""

    size: int
    duration: float
    """Seconds the successful write took."""
    reason: str
    """Why the batch was cut: ``size``, ``linger``, ``flush``, ``close`` or ``direct``."""
    attempts: int
    stale: int = 0
    """Of ``size``: records the sink reported as stale (its conditional write skipped them:
    the store held a newer version; ``Outcome.STALE``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFailed(_Base):
    """A sink write raised. ``retriable`` says whether it will be tried again."""

    size: int
    error: str
    """The error's class name (messages may carry data; see the log line)."""
    attempt: int
    retriable: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(_Base):
    """A failed write will be tried again after ``delay`` seconds."""

    size: int
    attempt: int
    delay: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordsDeadLettered(_Base):
    """``count`` records can never be written."""

    count: int
    error: str
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordsDropped(_Base):
    """An overflow policy dropped ``count`` records since the previous such event."""

    reason: str
    """``drop_newest`` or ``drop_oldest``."""
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferFilled(_Base):
    """The buffer reached ``max_pending`` records (published once per filling)."""

    max_pending: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Paused(_Base):
    """Writes are held back: the sink throttled, or is failing and is probed one write at a
    time, or ``pause()`` was called. Published when the state is entered (from healthy, or
    from the other one), and for each ``pause()``."""

    reason: str
    """``throttled`` (the sink said "retry after"), ``failing`` (retriable errors) or
    ``requested`` (``pause()``)."""
    error: str
    """The class name of the error that caused it (empty for ``requested``)."""
    seconds: float
    """How long until the next write may start."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed(_Base):
    """A ``Paused`` state ended: a write succeeded after a throttle or failures, or the
    time given to ``pause()`` ran out. Writes go at full pace again."""

    reason: str
    """The state that ended: ``throttled``, ``failing`` or ``requested``."""
    paused_for: float
    """Seconds since the state began."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityChanged(_Base):
    """The capacity this batcher spends from grants a new rate: this fleet member won or
    lost partitions, lost contact with Redis and fell back to its reserved capacity, heard
    from Redis again, or let its leases lapse (no lease step answered in time)."""

    per_second: float
    """Cost units per second granted now (shared by every batcher holding the capacity)."""
    reason: str
    """Why: ``won``, ``lost``, ``redis_unreachable``, ``redis_back`` or ``lease_lapsed``."""
    partitions: int | None
    """Partitions this process holds now (None for a capacity without partitions)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(_Base):
    """The batcher closed; the last event it publishes."""

    report: CloseReport


Event = (
    BatchCommitted
    | BatchFailed
    | RetryScheduled
    | RecordsDeadLettered
    | RecordsDropped
    | BufferFilled
    | Paused
    | Resumed
    | CapacityChanged
    | Closed
)

E = TypeVar("E", bound=_Base)


class SubscriberLagged(WriteBehindError):
    """The reader fell behind: event ``missed`` was dropped before it was read.

    Subscribe again with ``since=resume_from`` (the oldest event still held).
    """

    def __init__(self, missed: int, resume_from: int) -> None:
        super().__init__(
            f"subscriber lagged: event {missed} was dropped before it was read; resume from "
            f"event {resume_from} with events(since={resume_from})"
        )
        self.missed = missed
        self.resume_from = resume_from


class EventBuffer:
    """The last ``size`` events. Publish from the event loop only; read from anywhere via
    :meth:`subscribe` (async) or the sync facade's blocking iterator."""

    def __init__(self, size: int, batcher: str) -> None:
        self._items: deque[Any] = deque(maxlen=size)
        self._next = 1
        self._batcher = batcher
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the batcher's, once started

    @property
    def first(self) -> int:
        """Index of the oldest event held (``next_index`` when none is)."""
        return self._next - len(self._items)

    @property
    def next_index(self) -> int:
        """Index the next published event will get."""
        return self._next

    def publish(self, cls: type[E], **fields: Any) -> E:
        """Append an event; wakes waiting readers. Never waits."""
        event = cls(index=self._next, at=time.time(), batcher=self._batcher, **fields)
        self._next += 1
        self._items.append(event)
        self._wake()
        return event

    def close(self) -> None:
        """No more events: readers end after the last one."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _changed(self) -> None:
        running = asyncio.get_running_loop()
        if self.loop is not None and running is not self.loop:
            raise WriteBehindError(
                "AsyncBatcher.events() iterated on another event loop than the batcher's own: "
                "events are published on the batcher's loop and could never wake this one. "
                "Iterate on the batcher's loop, or use the sync Batcher, whose events() works "
                "from any thread"
            )
        if self._waiter is None:
            self._waiter = running.create_future()
        await asyncio.shield(self._waiter)

    def subscribe(self, since: int | None = None) -> Subscription:
        """A reader starting at event ``since``: the oldest held if ``since`` is gone, the
        next to be published if ``since`` is None or not published yet."""
        start = self._next if since is None else min(max(since, self.first), self._next)
        return Subscription(self, start)

    def take(self, start: int) -> list[Any]:
        """Events from ``start`` on, or ``SubscriberLagged`` if ``start`` was dropped."""
        first = self.first
        if start < first:
            raise SubscriberLagged(start, first)
        items = self._items  # deque indexing is O(1) near either end, where readers are
        return [items[-j] for j in range(self._next - start, 0, -1)]


class Subscription(AsyncIterator[Any]):
    """``async for event in batcher.events(since=...)``; ``started_at`` is the first index."""

    def __init__(self, buffer: EventBuffer, start: int) -> None:
        self._intake = buffer
        self._next = start
        self.started_at = start
        self._ready: deque[Any] = deque()

    def __aiter__(self) -> Subscription:
        return self

    async def next_chunk(self) -> list[Any]:
        """Every event available now (waiting for at least one); [] at the end."""
        while True:
            events = self._intake.take(self._next)
            if events:
                self._next = events[-1].index + 1
                return events
            if self._intake.closed:
                return []
            await self._intake._changed()

    def drain(self) -> list[Any]:
        """Every event held from here on, without waiting (for a stopped loop)."""
        events = self._intake.take(self._next)
        if events:
            self._next = events[-1].index + 1
        return events

    async def __anext__(self) -> Any:
        if not self._ready:
            self._ready.extend(await self.next_chunk())
            if not self._ready:
                raise StopAsyncIteration
        return self._ready.popleft()
