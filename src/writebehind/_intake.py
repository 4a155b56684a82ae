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
import collections
import itertools
import logging
import operator
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from ._bytes_budget import bounds, measured
from ._config import Options
from ._cost import cost_of, fit
from ._counters import Counters
from ._errors import BufferFull, WriteBehindError
from ._expiry import unexpired
from ._intake_spool import drop_new, use_spool, would_take
from ._keys import fast_getter, field_names, make_getter
from ._overflow import WHEN_FULL, carry_out
from ._put_many import checked_each, make_put_many, put_each
from ._put_one import CLOSING, FORKED, NEW, OPEN, make_put, not_open, receipt_class
from ._receipt import Batch, Outcome, Receipt
from ._room import Room, put_blocking, put_waiting
from ._spill_queue import refill, spill_next
from ._stats import Stats

__all__ = ["WHEN_FULL", "Intake"]

_UUID = uuid.UUID

log = logging.getLogger("writebehind")


class Intake:
    """Holds pending records and every counter. Thread-safe; see the module docstring.

    It is the one owner of a receipt's outcome: records become in flight by :meth:`cut`, and
    leave it by :meth:`settle` (committed, dead-lettered) or :meth:`abandon` (lost at the
    close deadline); the overflow policies' drops happen here too.
    """

    def __init__(self, opts: Options) -> None:
        key, version = opts.key, opts.version
        self._key = make_getter(key, "key")
        self._version = make_getter(version, "version")
        self._kfast = fast_getter(key, "key") if key is not None else None
        self._vfast = fast_getter(version, "version") if version is not None else None
        self.unit_cost, self._cost_of = opts.costing()
        self.fields = field_names(key, version, opts.cost)  # what key/version/cost read
        self.max_batch = opts.max_batch
        self.max_pending = opts.pending_limit
        self.when_full = opts.when_full
        self._clock = opts.clock.monotonic
        self.ttl = opts.ttl  # seconds a record may stay pending (None: forever)
        self._merge = opts.merge  # merge(old, new) -> record, instead of replacing
        # max_pending_bytes / max_batch_bytes: with size=, the bytes held (receipts carry
        # their _size); without, an estimate that lowers max_pending and max_batch
        self.budget, self.estimate = bounds(
            opts.max_pending_bytes, opts.max_batch_bytes, opts.size, self.max_pending,
            self.max_batch,
        )  # fmt: skip
        self._size = opts.size
        self._size_of = (
            None if opts.size is None or self.budget is None
            else measured(opts.size, opts.max_pending_bytes)
        )  # fmt: skip
        # spill mode decides memory or spool and puts in one step against cut(): reentrant
        self._lock = threading.RLock() if opts.when_full == "spill" else threading.Lock()
        self.room = Room(self._lock)
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._pending: dict[Any, Receipt] = {}
        # the pending keys, oldest first (the dict's own order, kept beside it: taking from
        # the front of a dict leaves empty slots that every later look at its front scans)
        self._order: collections.deque[Any] = collections.deque()
        # the keys of keyless records: one count for every put this intake builds (each
        # counting from 0 made a recovered record and a new one share a slot)
        self._keyless = itertools.count()
        # when_full="spill": accepted records waiting in the spool for room, oldest first
        # (their keys beside them); None in the other modes
        self.spilled: collections.deque[tuple[Any, Receipt]] | None = None
        self._spilled_keys: dict[Any, int] = {}  # how many of each key wait there
        self._state = NEW
        self._owner_pid = 0
        self.oldest_at: float | None = None
        self._woken = False
        self.counts = Counters()
        self._abandoned = False
        self._drop_log_due = self._expiry_log_due = 0.0
        self._notice = False  # news for the flusher to publish (full, dropped, expired)
        self._room_freed = False
        self._noticed_newest = self._noticed_oldest = self._noticed_expired = 0
        self._filled_since = False  # the buffer was full since the flusher last looked
        # wiring to the event loop, set by bind()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self._wake: Callable[[], None] = _nothing
        self._direct: Callable[[Batch], None] = _nothing_b
        self._change: asyncio.Future[None] | None = None
        # spool=: told of every receipt whose fate is final; receipts carry their seq
        self.on_done: Callable[[list[Receipt]], None] | None = None
        self.is_durable: Callable[[Receipt], bool] | None = None
        self.wait_durable: Callable[[Receipt], Awaitable[None]] | None = None
        self.spool_full: Callable[[BaseException], bool] | None = None
        self._receipt_type: type[Receipt] = receipt_class(self)
        self.spooled = 0  # records left in the spool at the close deadline
        self.just_cut: list[Receipt] = []  # the last cut, until its batch is registered
        # the puts' copies of max_pending and max_batch (locals of their closures), which
        # resize() changes with these attributes: the intake is their one owner
        self.limit_copies: list[Callable[[int, int], None]] = []
        self.put_nowait: Callable[[Any], Receipt] = make_put(self)
        """Take a record or raise ``BufferFull`` (see ``_put_one.make_put``). The hot path."""
        self.put_many: Callable[[Iterable[Any]], list[Receipt]] = (
            make_put_many(self, OPEN, not_open)
            if self.when_full != "direct"  # each record may be written alone
            else checked_each(self, self.put_nowait)
        )
        """Take a group of records in one lock round trip (see ``_put_many``)."""

    # -- wiring ----------------------------------------------------------------------------
    def bind(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        direct: Callable[[Batch], None],
    ) -> None:
        """Attach to the event loop that runs the flusher; opens the intake."""
        self.loop = loop
        self.loop_thread = threading.get_ident()  # forgotten at close: see forget_thread()
        self._wake = wake
        self._direct = direct
        with self._lock:
            self._state = OPEN
            self._owner_pid = os.getpid()

    def use_spool(self, spooling: Any) -> Callable[[Any], Receipt]:
        """Spool mode: see ``_intake_spool.use_spool``; returns the put for recovered records."""
        return use_spool(self, spooling)

    def would_take(self, record: Any) -> bool:
        """Whether a put would take ``record`` now: see ``_intake_spool.would_take``."""
        return would_take(self, record)

    def drop_new(self, record: Any) -> Receipt:
        """Take ``record`` and drop it at once: see ``_intake_spool.drop_new``."""
        return drop_new(self, record)

    def key_of(self, record: Any) -> Any:
        """``record``'s key as the buffer holds it (a UUID as its int)."""
        k = self._key(record) if self._key is not None else None
        return k.int if type(k) is _UUID else k

    def refusal(self) -> BufferFull:
        """The error a put raises when the buffer has no room under ``when_full``."""
        more = " and as many direct writes in flight" if self.when_full == "direct" else ""
        est = self.estimate
        bound = "max_pending"
        if est is not None and est.max_held is not None and self.max_pending < est.max_pending:
            bound = f"max_pending_bytes={est.max_held}, at about {est.mean} bytes a record"
        return BufferFull(
            f"buffer full: {self.max_pending} records held ({bound}){more}; the record "
            f"was not accepted. Use add() to wait for room, or another when_full policy"
        )

    def resize(self, record: Any) -> int:
        """The default size estimate (no ``size=``): measure ``record`` (before it is taken,
        outside the lock) and set the bounds in records that the bounds in bytes come to at
        the new mean, here and in every put that keeps a copy of them; returns how many
        records to add before the next is measured."""
        assert self.estimate is not None
        most, batch, every = self.estimate.observe(record)
        self.max_pending, self.max_batch = most, batch
        for follow in self.limit_copies:
            follow(most, batch)
        return every

    def identity(self, record: Any) -> tuple[Any, Any, float]:
        """``(key, version, cost)`` as the buffer reads them (a UUID key as its int)."""
        k = self._key(record) if self._key is not None else None
        if type(k) is _UUID:
            k = k.int
        v = self._version(record) if self._version is not None else None
        return k, v, (self._cost_of(record) if self._cost_of is not None else self.unit_cost)

    async def durable(self, r: Receipt) -> None:
        """``await receipt.durable()``: spool mode only."""
        if self.wait_durable is None:
            raise WriteBehindError(
                "receipt.durable(): the batcher has no spool (spool=), so a record is never "
                "durable before it is committed; await the receipt for its outcome"
            )
        await self.wait_durable(r)

    def forked(self) -> None:
        """In a child process after ``os.fork()``: refuse everything from now on (the records
        and the event loop belong to the parent). The lock may have crossed the fork held
        by a thread that did not: a new one, and a ``put_nowait`` that never takes it."""
        self._lock = threading.RLock() if self.when_full == "spill" else threading.Lock()
        self.room = Room(self._lock)
        self._state = FORKED
        self._pending.clear()
        self._order.clear()

        def refuse(record: Any) -> Receipt:
            raise not_open(FORKED)

        self.put_nowait = refuse
        self.put_many = partial(put_each, refuse)

    def forget_thread(self) -> None:
        """At close: no call blocks on the loop any more, and a thread started after the
        loop's thread ended may get its identifier back; it is not the loop's thread."""
        self.loop_thread = None

    def on_loop_thread(self) -> bool:
        """True on the thread that runs the batcher's loop (where blocking would deadlock).
        The one "wrong thread" check: every API that blocks asks it."""
        return threading.get_ident() == self.loop_thread

    def call_in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop: now if this is its thread, else soon."""
        if threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(fn, *args)

    # -- the hot path ----------------------------------------------------------------------
    def refill(self) -> int:
        """``when_full="spill"``: move spilled records into the room there is (see
        ``_spill_queue.refill``); how many moved."""
        return refill(self)

    def spill_next(self, record: Any) -> bool:
        """``when_full="spill"``: whether ``record`` goes to the spool (see
        ``_spill_queue.spill_next``)."""
        return spill_next(self, record)

    def locked(self) -> Any:
        """The intake's lock, to hold across a decision and a put (spill mode: reentrant)."""
        return self._lock

    def put_blocking(self, record: Any, timeout: float | None) -> Receipt:
        """Thread API: take ``record``, waiting for room (see ``_room.put_blocking``)."""
        r: Receipt = put_blocking(self, record, timeout)
        return r

    async def put_waiting(self, record: Any, timeout: float | None) -> Receipt:
        """Async API: take ``record``, awaiting room (see ``_room.put_waiting``)."""
        r: Receipt = await put_waiting(self, record, timeout)
        return r

    def _full(self, k: Any, r: Receipt) -> Receipt:
        """Apply ``when_full`` to a record that needs a new slot (lock held): see
        ``_overflow.carry_out``."""
        return carry_out(self, k, r)

    def bytes_full(self) -> bool:
        """Whether ``max_batch_bytes`` are pending (a reason to cut a batch now)."""
        budget = self.budget
        if budget is None:
            return False
        with self._lock:
            return budget.full_batch()

    # -- the flusher's side (event loop thread) ---------------------------------------------
    def begin_decision(self) -> tuple[int, float | None]:
        """Clear the wake flag and return (pending, oldest_at) for the flush decision."""
        with self._lock:
            self._woken = False
            return len(self._pending), self.oldest_at

    def take_notice(self) -> tuple[bool, int, int, int] | None:
        """If the buffer was full, or records expired, since the last call: (whether it was
        full, then the records dropped by drop_newest, drop_oldest and expiry since then).
        None otherwise."""
        with self._lock:
            if not self._notice:
                return None
            self._notice = False
            filled, self._filled_since = self._filled_since, False
            c = self.counts
            newest = c.dropped_newest - self._noticed_newest
            oldest = c.dropped_oldest - self._noticed_oldest
            expired = c.dropped_expired - self._noticed_expired
            self._noticed_newest, self._noticed_oldest = c.dropped_newest, c.dropped_oldest
            self._noticed_expired = c.dropped_expired
            return filled, newest, oldest, expired

    def cut(self, n: int, budget: float | None = None) -> tuple[list[Receipt], float]:
        """Take up to ``n`` of the oldest pending records (they become in flight), and no
        more than ``budget`` cost of them; returns them and their cost."""
        with self._lock:
            pending = self._pending
            if budget is not None:
                n = fit(self, n, budget)
            held = self.budget
            if held is not None and held.max_batch is not None:  # max_batch_bytes
                n = held.batch_fit(
                    (pending[k]._size for k in itertools.islice(self._order, n)),  # type: ignore[attr-defined]
                    n,
                )
            if n >= len(pending):
                taken = list(pending.values())
                pending.clear()  # in place: the hot path holds this dict
                self._order.clear()
                self.oldest_at = None
            else:  # from the front, in time proportional to n whatever the backlog; in C
                # (no bytecode runs while the lock is held, so the GIL is not handed to a
                # producer that would then wait on the lock: no convoy)
                keys = map(operator.call, itertools.repeat(self._order.popleft, n))
                taken = list(map(pending.pop, keys))
            self.just_cut = taken  # peek() finds them here until the flusher has the batch
            if held is not None:
                held.cut(sum(r._size for r in taken))  # type: ignore[attr-defined]
            if self.ttl is not None:
                taken = unexpired(self, taken)
            self.counts.in_flight += len(taken)
            self.counts.in_flight_held += len(taken)
        self._notify_change()
        return taken, cost_of(self, taken)

    def settle(
        self, receipts: list[Receipt], outcome: Outcome, *, direct: bool = False, final: bool = True
    ) -> None:
        """Record the final outcome of in-flight receipts (none of them settled yet) and
        release their room. ``final=False``: not done in the spool (dead letters that the
        store failed to keep stay there for the next batcher)."""
        with self._lock:
            if self._abandoned:
                return  # the close deadline already counted these as lost
            _consume(map(setattr, receipts, _repeat("_outcome"), _repeat(outcome)))  # in C
            n = len(receipts)
            c = self.counts
            c.in_flight -= n
            if self.budget is not None:
                self.budget.flying -= sum(r._size for r in receipts)  # type: ignore[attr-defined]
            if not direct:
                c.in_flight_held -= n
            if outcome is Outcome.COMMITTED:
                c.committed += n
            elif outcome is Outcome.STALE:  # committed, the row unchanged
                c.committed += n
                c.stale += n
            elif outcome is Outcome.DEAD_LETTERED:
                c.dead_lettered += n
            else:
                raise ValueError(f"settle() takes COMMITTED, STALE or DEAD_LETTERED, not {outcome}")
            if self.on_done is not None and final:
                self.on_done(receipts)
            self._room_freed = True  # released by the flusher, after it cut the next batch

    def release_room(self) -> None:
        """Wake adders waiting for room, if settled writes freed some. The flusher calls it
        after cutting, so the next write starts before producers refill the buffer."""
        with self._lock:
            if self._room_freed:
                self._room_freed = False
                self._release_locked()

    def count(self, **deltas: int) -> None:
        """Add to the counters that the engine keeps (batches, retried, splits, ...)."""
        with self._lock:
            self.counts.add(deltas)

    def _release_locked(self) -> None:
        self.room.release_locked()

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
            if self._state != FORKED:
                self._state = CLOSING
            self._release_locked()

    @property
    def closed(self) -> bool:
        return self._state in (CLOSING, FORKED)

    @property
    def gone(self) -> bool:
        """The event loop will never run this intake's flusher again (closed, or left in
        the parent process by a fork)."""
        return self._state == FORKED or (self.loop is not None and self.loop.is_closed())

    def abandon(self, in_flight: list[Receipt]) -> int:
        """At the close deadline: count everything still held as lost (its receipts resolve
        ``LOST``) and return how many; in spool mode, a record durable in the spool is
        ``SPOOLED`` instead (the next batcher on the spool delivers it). ``in_flight`` are the
        receipts of the writes still running; later settlements no longer change anything,
        so the report is final."""
        with self._lock:
            self._abandoned = True
            left = list(self._pending.values())  # kept in the dict: stats still count them
            if self.spilled:
                left += [r for _, r in self.spilled]
            held = len(left) + self.counts.in_flight
            spooled, durable = 0, self.is_durable
            for r in (*left, *in_flight):
                if getattr(r, "_outcome", None) is None:
                    kept = durable is not None and durable(r)
                    r._outcome = Outcome.SPOOLED if kept else Outcome.LOST
                    spooled += kept
            self.spooled = spooled
            self.counts.lost = held - spooled
            self.just_cut = list(in_flight)  # not written: peek() still finds them
        self._notify_change()
        return self.counts.lost

    @property
    def pending(self) -> int:
        """Records accepted and not cut yet (the spill queue's included)."""
        return len(self._pending) + (len(self.spilled) if self.spilled is not None else 0)

    def stats(self) -> Stats:
        with self._lock:
            held = 0
            if self.budget is not None:
                held = self.budget.held()
            elif self.estimate is not None:
                held = self.estimate.held(self.pending + self.counts.in_flight)
            return self.counts.snapshot(self.pending, self._state == CLOSING, held)


_repeat = itertools.repeat
_consume: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend
"""Run an iterator to its end in C (a ``map`` that sets attributes, under the lock)."""


def _nothing() -> None:
    return None


def _nothing_b(_: Batch) -> None:
    return None
