"""The bounded, coalescing, thread-safe intake that both APIs share.

Records arrive from the event loop (``AsyncBatcher``) or from any thread (``Batcher``) and
are taken under one ``threading.Lock`` held for about a microsecond. Nothing hops threads
per record: the flusher on the event loop is woken once, when a trigger fires (the first
record of a linger window, or ``max_batch`` records pending).

Pending records live in a dict in arrival order, keyed by the record's key (or a sequence
number when there is no key). A record whose key is pending replaces it in place if its
version is newer or equal (the later ``add()`` wins a tie); otherwise the incoming record
is itself superseded. Either way the loser counts as ``coalesced`` and its receipt follows
the winner's.

Every counter lives here, under the same lock, so a ``Stats`` snapshot always satisfies
``accepted == committed + coalesced + dead_lettered + dropped + pending + in_flight``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from ._errors import BatcherClosed, BufferFull, RecordError, WriteBehindError
from ._receipt import Batch, Outcome, Receipt
from ._stats import Stats

__all__ = ["WHEN_FULL", "Intake"]

WHEN_FULL = ("block", "raise", "drop_newest", "drop_oldest", "direct")

_NEW, _OPEN, _CLOSING = 0, 1, 2


class Intake:
    """Holds pending records and every counter. Thread-safe; see the module docstring."""

    def __init__(
        self,
        *,
        key: Callable[[Any], Any] | None,
        version: Callable[[Any], Any] | None,
        max_batch: int,
        max_pending: int,
        when_full: str,
        clock: Callable[[], float],
    ) -> None:
        self._key = key
        self._version = version
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.when_full = when_full
        self._clock = clock
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._pending: dict[Any, Receipt] = {}
        self._seq = 0
        self._state = _NEW
        self.oldest_at: float | None = None
        self._woken = False
        # counters
        self.accepted = 0
        self.committed = 0
        self.coalesced = 0
        self.dead_lettered = 0
        self.dropped_newest = 0
        self.dropped_oldest = 0
        self.in_flight = 0
        self.held = 0  # pending + in flight, not counting direct writes
        self.batches = 0
        self.retried = 0
        self.splits = 0
        self.write_errors = 0
        self.lost = 0
        self._abandoned = False
        # wiring to the event loop, set by bind()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self._wake: Callable[[], None] = _nothing
        self._direct: Callable[[Batch], None] = _nothing_b
        self._change: asyncio.Future[None] | None = None
        self._room_futures: list[asyncio.Future[None]] = []
        self._thread_waiters = 0

    # -- wiring ----------------------------------------------------------------------------
    def bind(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        direct: Callable[[Batch], None],
    ) -> None:
        """Attach to the event loop that runs the flusher; opens the intake."""
        self.loop = loop
        self.loop_thread = threading.get_ident()
        self._wake = wake
        self._direct = direct
        with self._lock:
            self._state = _OPEN

    def _call_in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(fn, *args)

    # -- the hot path ----------------------------------------------------------------------
    def put(self, record: Any) -> Receipt | None:
        """Take a record, applying the overflow policy. None means full under block/raise."""
        k = self._key(record) if self._key is not None else None
        r = Receipt(record, self._version(record) if self._version is not None else None, self)
        wake = False
        with self._lock:
            if self._state != _OPEN:
                raise _not_open(self._state)
            pending = self._pending
            if k is None:
                k = self._seq
                self._seq += 1
            else:
                old = pending.get(k)
                if old is not None:
                    self.accepted += 1
                    self.coalesced += 1
                    try:
                        newer = r.version is None or r.version >= old.version
                    except TypeError as exc:
                        self.accepted -= 1
                        self.coalesced -= 1
                        raise RecordError(
                            f"versions {r.version!r} and {old.version!r} cannot be compared"
                        ) from exc
                    if newer:
                        old._succ = r
                        pending[k] = r
                    else:
                        r._succ = old
                    return r
            if self.held >= self.max_pending:
                return self._full(k, r)
            pending[k] = r
            self.held += 1
            self.accepted += 1
            n = len(pending)
            if n == 1:
                self.oldest_at = self._clock()
                if not self._woken:
                    self._woken = wake = True
            elif n >= self.max_batch and not self._woken:
                self._woken = wake = True
        if wake:
            self._call_in_loop(self._wake)
        return r

    def _full(self, k: Any, r: Receipt) -> Receipt | None:
        """Apply ``when_full`` to a record that needs a new slot (lock held)."""
        policy = self.when_full
        if policy == "block" or policy == "raise":
            return None
        self.accepted += 1
        if policy == "drop_oldest" and self._pending:
            first = next(iter(self._pending))
            self._pending.pop(first)._outcome = Outcome.DROPPED
            self.dropped_oldest += 1
            self._pending[k] = r
            return r
        if policy == "direct":
            self.in_flight += 1
            assert self.loop is not None
            r._batch = batch = Batch([r], "direct", self.loop)
            if threading.get_ident() == self.loop_thread:
                self.loop.call_soon(self._direct, batch)
            else:
                self.loop.call_soon_threadsafe(self._direct, batch)
            return r
        r._outcome = Outcome.DROPPED  # drop_newest, or drop_oldest with nothing pending
        self.dropped_newest += 1
        return r

    def put_nowait(self, record: Any) -> Receipt:
        r = self.put(record)
        if r is None:
            raise BufferFull(
                f"buffer full: {self.max_pending} records held (max_pending); the record was "
                f"not accepted. Use add() to wait for room, or another when_full policy"
            )
        return r

    def put_blocking(self, record: Any, timeout: float | None) -> Receipt:
        """Thread API: wait (at most ``timeout`` s) for room under ``when_full="block"``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            r = self.put(record)
            if r is not None:
                return r
            if self.when_full != "block":
                return self.put_nowait(record)  # "raise": raises BufferFull
            with self._room:
                while self._state == _OPEN and self.held >= self.max_pending:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise BufferFull(f"no room in the buffer within {timeout} s")
                    self._thread_waiters += 1
                    try:
                        self._room.wait(remaining)
                    finally:
                        self._thread_waiters -= 1

    async def wait_room(self) -> None:
        """Async API: return when the buffer may have room (or the intake closed)."""
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        with self._lock:
            if self._state != _OPEN:
                raise _not_open(self._state)
            if self.held < self.max_pending:
                return
            self._room_futures.append(fut)
        await fut

    # -- the flusher's side (event loop thread) ---------------------------------------------
    def begin_decision(self) -> tuple[int, float | None]:
        """Clear the wake flag and return (pending, oldest_at) for the flush decision."""
        with self._lock:
            self._woken = False
            return len(self._pending), self.oldest_at

    def cut(self, n: int) -> list[Receipt]:
        """Take up to ``n`` of the oldest pending records; they become in flight."""
        with self._lock:
            pending = self._pending
            if n >= len(pending):
                taken = list(pending.values())
                self._pending = {}
                self.oldest_at = None
            else:
                items = list(pending.items())
                taken = [r for _, r in items[:n]]
                self._pending = dict(items[n:])
            self.in_flight += len(taken)
        self._notify_change()
        return taken

    def settle(self, receipts: list[Receipt], outcome: Outcome, *, direct: bool = False) -> None:
        """Record the final outcome of in-flight receipts and release their room."""
        n = len(receipts)
        for r in receipts:
            r._outcome = outcome
        with self._lock:
            if self._abandoned:
                return  # the close deadline already counted these as lost
            self.in_flight -= n
            if not direct:
                self.held -= n
            if outcome is Outcome.COMMITTED:
                self.committed += n
            elif outcome is Outcome.DEAD_LETTERED:
                self.dead_lettered += n
            self._release_locked()

    def count(self, **deltas: int) -> None:
        """Add to counters that the engine keeps (batches, retried, splits, write_errors)."""
        with self._lock:
            for name, d in deltas.items():
                setattr(self, name, getattr(self, name) + d)

    def _release_locked(self) -> None:
        if self._thread_waiters:
            self._room.notify_all()
        if self._room_futures:
            futures, self._room_futures = self._room_futures, []
            for f in futures:
                if not f.done():
                    f.set_result(None)

    def _notify_change(self) -> None:
        fut, self._change = self._change, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def next_change(self) -> None:
        """Wait for the next cut (or close): a pending receipt then has a batch."""
        assert self.loop is not None
        if self._change is None:
            self._change = self.loop.create_future()
        await asyncio.shield(self._change)

    def close(self) -> None:
        """Stop accepting; wake every waiter so it sees the intake closed."""
        with self._lock:
            self._state = _CLOSING
            self._release_locked()

    def abandon(self) -> list[Receipt]:
        """At the close deadline: count everything still held as lost and return it."""
        with self._lock:
            self._abandoned = True
            left = list(self._pending.values())  # kept in the dict: stats still count them
            self.lost = len(left) + self.in_flight
        for r in left:
            r._outcome = Outcome.LOST
        self._notify_change()
        return left

    @property
    def pending(self) -> int:
        return len(self._pending)

    def stats(self) -> Stats:
        with self._lock:
            pending = len(self._pending)
            return Stats(
                accepted=self.accepted,
                committed=self.committed,
                coalesced=self.coalesced,
                dead_lettered=self.dead_lettered,
                dropped=self.dropped_newest + self.dropped_oldest,
                pending=pending,
                in_flight=self.in_flight,
                batches=self.batches,
                retried=self.retried,
                splits=self.splits,
                write_errors=self.write_errors,
                lost=self.lost,
                closed=self._state == _CLOSING,
                dropped_by_reason=MappingProxyType(
                    {"drop_newest": self.dropped_newest, "drop_oldest": self.dropped_oldest}
                ),
            )


def _not_open(state: int) -> WriteBehindError:
    if state == _NEW:
        return WriteBehindError(
            "the batcher is not started: use 'async with AsyncBatcher(...)' (or 'with "
            "Batcher(...)'), or call start() first"
        )
    return BatcherClosed("the batcher is closed and takes no more records")


def _nothing() -> None:
    return None


def _nothing_b(_: Batch) -> None:
    return None
