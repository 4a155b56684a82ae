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
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from ._bytes_budget import bounds, measured
from ._config import Options
from ._counters import Counters
from ._errors import BufferFull, RecordError, WriteBehindError
from ._keys import fast_getter, make_getter
from ._overflow import DROP_LOG_EVERY, WHEN_FULL, carry_out, dropped_new, grown_full, log_drops
from ._put_many import make_put_many, put_each
from ._put_one import CLOSING, FORKED, NEW, OPEN, make_put, not_open, receipt_class
from ._receipt import Batch, Outcome, Receipt
from ._room import Room
from ._stats import Stats

__all__ = ["WHEN_FULL", "Intake"]

_NEVER_REFUSE = ("drop_newest", "drop_oldest")  # policies that take every record

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
        self.fields = _field_names(key, version, opts.cost)  # what key/version/cost read
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
        self.put_nowait: Callable[[Any], Receipt] = make_put(self)
        """Take a record or raise ``BufferFull`` (see ``_put_one.make_put``). The hot path."""
        self.put_many: Callable[[Iterable[Any]], list[Receipt]] = (
            make_put_many(self, OPEN, not_open)
            if self.when_full != "direct"  # each record may be written alone
            else partial(put_each, self.put_nowait)
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
        """Spool mode (``spooling``: a ``_spooling.Spooling``; typed loosely, as it imports
        this module): receipts take their record's sequence number (``spooling.current``,
        read as each is made, under the lock); ``spooling.done`` hears of every final fate.
        Returns the put that takes recovered records whatever the room (they were accepted
        already)."""
        self._receipt_type = receipt_class(self, spooling)
        self.on_done, self.is_durable = spooling.done, spooling.is_durable
        self.wait_durable, self.spool_full = spooling.durable, spooling.full
        recovered = make_put(self, room=False)
        if self.when_full == "spill":  # memory first; the spool takes what does not fit
            self.spilled = collections.deque()
            self.put_nowait = spooling.wrap_spill(
                make_put(self), make_put(self, spill=self.spilled), self
            )
        else:
            self.put_nowait = spooling.wrap(
                make_put(self), self, drops=self.when_full in _NEVER_REFUSE
            )
        self.put_many = partial(put_each, self.put_nowait)  # one spool append per record
        return recovered

    def would_take(self, record: Any) -> bool:
        """Whether a put would take ``record`` now (what a spooled put checks before it
        appends): there is room under ``when_full``, or its key is pending (it coalesces)."""
        with self._lock:
            if not self._full_for(self.when_full):
                return True
        try:
            k = self.identity(record)[0]
        except Exception:  # the put raises the record's own error
            return True
        with self._lock:
            try:
                return k is not None and k in self._pending
            except Exception:
                return True

    def key_of(self, record: Any) -> Any:
        """``record``'s key as the buffer holds it (a UUID as its int)."""
        k = self._key(record) if self._key is not None else None
        return k.int if type(k) is _UUID else k

    def pending_receipt(self, k: Any) -> tuple[Receipt | None, list[Receipt]]:
        """The receipt of the newest record with key ``k`` (as the buffer holds it) waiting
        to be written: in the spill queue (later adds of a key than memory's) or pending;
        None if there is none, or it has expired (``ttl=``). Also, read in the same step,
        the receipts of the last cut, which the flusher may not have registered as a write
        in flight yet (``peek`` reads those after)."""
        with self._lock:
            cutting = self.just_cut
            r: Receipt | None = None
            spilled = self.spilled
            try:
                if spilled and k in self._spilled_keys:
                    r = next((q for sk, q in reversed(spilled) if sk == k), None)
                else:
                    r = self._pending.get(k)
            except TypeError:  # unhashable: no record can have it
                return None, []
        if r is not None and self.ttl is not None:
            added: float = r._at  # type: ignore[attr-defined]
            if added < self._clock() - self.ttl:
                r = None  # dropped at the next cut
        return r, cutting

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

    def resize(self, record: Any) -> tuple[int, int]:
        """The default size estimate (no ``size=``): measure ``record`` (taken already, and
        not under the lock) and set the bounds in records that the bounds in bytes come to
        at the new mean; returns them (``max_pending``, ``max_batch``)."""
        assert self.estimate is not None
        self.max_pending, self.max_batch = most = self.estimate.observe(record)
        return most

    def identity(self, record: Any) -> tuple[Any, Any, float]:
        """``(key, version, cost)`` as the buffer reads them (a UUID key as its int)."""
        k = self._key(record) if self._key is not None else None
        if type(k) is _UUID:
            k = k.int
        v = self._version(record) if self._version is not None else None
        return k, v, (self._cost_of(record) if self._cost_of is not None else self.unit_cost)

    def drop_new(self, record: Any) -> Receipt:
        """Take ``record`` and drop it at once (``drop_*`` policies when the spool is full:
        accepted, counted ``dropped``, never written)."""
        r = self._receipt_type(record, None)
        with self._lock:
            if self._state != OPEN:
                raise not_open(self._state)
            self.counts.accepted += 1
            dropped_new(self, r)
            self._filled_since = True
            if not self._notice:
                self._notice = True
                self.call_in_loop(self._wake)
            log_drops(self)
        return r

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
    def _coalesce(self, k: Any, old: Receipt, r: Receipt) -> Receipt:
        """``r`` has the key of the pending ``old``: the newer (or later, on a tie) stays;
        with ``merge=``, ``merge(old, new)`` takes the place of both."""
        if self._merge is not None:
            return self._merged(k, old, r)
        newer = _newer(r, old)
        if newer and self._grows_past_budget(old, r):
            return grown_full(self, k, old, r)
        self.counts.accepted += 1
        return self._supersede(k, old, r, newer)

    def _grows_past_budget(self, old: Receipt, r: Receipt) -> bool:
        """Whether ``r`` taking ``old``'s slot needs more bytes than ``max_pending_bytes``
        leaves (a coalescing record is taken whatever the count, not whatever the bytes)."""
        budget = self.budget
        if budget is None or budget.max_held is None:
            return False
        grow: int = r._size - old._size  # type: ignore[attr-defined]
        return grow > 0 and not budget.fits(grow)

    def _merged(self, k: Any, old: Receipt, r: Receipt) -> Receipt:
        """``merge=``: ``r`` takes the merge of the two records, given in version order (the
        older version first; a tie, or no version, in arrival order). Lock held; a merge
        that raises, or returns what the buffer could not take (None, another key, a
        version of None or NaN), refuses ``r`` with ``RecordError``; ``old`` stays."""
        assert self._merge is not None
        first, then = (r, old) if not _newer(r, old) else (old, r)
        try:
            merged = self._merge(first.record, then.record)
            if merged is None:
                raise TypeError("merge returned None")
            version = self._version(merged) if self._version is not None else None
            if self.key_of(merged) != k:
                raise ValueError("merge returned a record of another key")
            if self._version is not None and (version is None or version != version):
                raise ValueError(f"merge returned a record of version {version!r}")
            size = None if self._size_of is None else self._size_of(merged)
        except Exception as exc:
            raise RecordError(
                f"merge raised {type(exc).__name__}: {exc} (key {k!r}); the record was not "
                f"accepted, the pending one is unchanged"
            ) from exc
        was = r.record, r.version, getattr(r, "_size", None)
        r.record, r.version = merged, version
        if size is not None:
            r._size = size  # type: ignore[attr-defined]  # what the buffer holds now
        if self._grows_past_budget(old, r):
            r.record, r.version = was[0], was[1]
            if was[2] is not None:
                r._size = was[2]  # type: ignore[attr-defined]
            return grown_full(self, k, old, r, merged=(merged, version, size))
        self.counts.accepted += 1
        return self._supersede(k, old, r, True)

    def _supersede(self, k: Any, old: Receipt, r: Receipt, newer: bool) -> Receipt:
        """``r`` and the pending ``old`` share key ``k``: the loser is superseded (lock held)."""
        self.counts.coalesced += 1
        if newer:
            old._succ = r
            self._pending[k] = r
            if self.budget is not None:
                self.budget.pending += r._size - old._size  # type: ignore[attr-defined]
        else:
            r._succ = old
        if self.on_done is not None:  # the superseded record's fate is final
            self.on_done([old if newer else r])
        return r

    def _spill(self, k: Any, r: Receipt, to_spill: Callable[[Any], None]) -> Receipt:
        """Queue ``r`` (key ``k``) in the spill queue (lock held); its version must compare
        with the pending one's, as a put's would."""
        old = self._pending.get(k)
        if old is not None and r.version is not None:
            try:
                r.version >= old.version  # noqa: B015 (compared for its error only)
            except Exception as exc:
                raise RecordError(
                    f"versions {r.version!r} and {old.version!r} cannot be compared"
                ) from exc
        to_spill((k, r))
        self._spilled_keys[k] = self._spilled_keys.get(k, 0) + 1
        self.counts.accepted += 1
        return r

    def refill(self) -> int:
        """``when_full="spill"``: move spilled records (accepted already) into the buffer
        while it has room, oldest first, coalescing as a put does; how many moved. Called
        by the flusher before each decision (the spill queue drains before new records
        take the room: a new record spills while the queue is not empty)."""
        spilled = self.spilled
        if not spilled:
            return 0
        moved = 0
        with self._lock:
            if self._abandoned:
                return 0
            pending, counts = self._pending, self.counts
            while spilled:
                k, r = spilled[0]
                old = pending.get(k)
                if old is None and len(pending) + counts.in_flight_held >= self.max_pending:
                    break
                spilled.popleft()
                moved += 1
                left = self._spilled_keys.pop(k) - 1
                if left:
                    self._spilled_keys[k] = left
                if old is not None:
                    try:
                        newer = r.version is None or r.version >= old.version
                    except Exception:  # checked at add() against what was pending then
                        newer = True  # the later add wins
                    self._supersede(k, old, r, newer)
                    continue
                if not pending:
                    self.oldest_at = self._clock()
                pending[k] = r
                self._order.append(k)
        return moved

    def locked(self) -> Any:
        """The intake's lock, to hold across a decision and a put (spill mode: reentrant)."""
        return self._lock

    def spill_next(self, record: Any) -> bool:
        """``when_full="spill"``: whether ``record`` goes to the spool: the buffer has no
        room for it, or spilled records wait (they go first) and its key is not pending in
        memory, or its key waits in the spill queue (a later add of a key follows it)."""
        if not self.spilled:
            return not self.would_take(record)
        try:
            k = self.identity(record)[0]
        except Exception:  # the put raises the record's own error
            return False
        with self._lock:
            try:
                return k is None or k in self._spilled_keys or k not in self._pending
            except Exception:
                return False

    def put(self, record: Any) -> Receipt | None:
        """Like :meth:`put_nowait`, but None instead of ``BufferFull``."""
        try:
            return self.put_nowait(record)
        except BufferFull as exc:
            if self.spool_full is not None and self.spool_full(exc):
                raise  # room in the buffer would not help: the caller waits for the spool
            return None

    def _full(self, k: Any, r: Receipt) -> Receipt:
        """Apply ``when_full`` to a record that needs a new slot (lock held): see
        ``_overflow.carry_out``."""
        return carry_out(self, k, r)

    def _has_room(self, size: int = 0) -> bool:
        """Room for one more record (of ``size`` bytes, with a bytes budget)."""
        budget = self.budget
        return len(self._pending) + self.counts.in_flight_held < self.max_pending and (
            budget is None or budget.fits(size)
        )

    def _size_for_room(self, record: Any) -> int:
        """What ``record`` needs of a bytes budget (0 without one, or if it cannot be
        measured: the put then raises the record's own error)."""
        if self._size_of is None:
            return 0
        try:
            return self._size_of(record)
        except RecordError:
            return 0

    def bytes_full(self) -> bool:
        """Whether ``max_batch_bytes`` are pending (a reason to cut a batch now)."""
        budget = self.budget
        if budget is None:
            return False
        with self._lock:
            return budget.full_batch()

    def _full_for(self, policy: str, size: int = 0) -> bool:
        """No room for one more record under ``policy`` (lock held); False once closed."""
        if self._state != OPEN:
            return False
        if self._has_room(size):
            return False
        if policy != "direct":
            return True
        c, budget = self.counts, self.budget
        return c.in_flight - c.in_flight_held >= self.max_pending or (
            budget is not None and not budget.fits(size)
        )

    def put_blocking(self, record: Any, timeout: float | None) -> Receipt:
        """Thread API: take ``record``, waiting (at most ``timeout`` s) for room under
        ``when_full="block"`` (and ``"direct"``); ``BufferFull`` after the timeout."""
        if self.when_full not in ("block", "direct"):
            return self.put_nowait(record)
        taken = self.put(record)  # the usual case: there is room
        if taken is not None:
            return taken
        size = self._size_for_room(record)
        r: Receipt = self.room.wait_in_thread(
            lambda: self.put(record), lambda: self._full_for(self.when_full, size), timeout
        )
        return r

    async def put_waiting(self, record: Any, timeout: float | None) -> Receipt:
        """Async API: the same as :meth:`put_blocking`, awaiting on the loop."""
        if self.when_full not in ("block", "direct"):
            return self.put_nowait(record)
        size = self._size_for_room(record)
        r: Receipt = await self.room.wait_on_loop(
            lambda: self.put(record), lambda: self._full_for(self.when_full, size), timeout
        )
        return r

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
                n = self._fit(n, budget)
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
                taken = self._unexpired(taken)
            self.counts.in_flight += len(taken)
            self.counts.in_flight_held += len(taken)
        self._notify_change()
        return taken, self.cost(taken)

    def _unexpired(self, taken: list[Receipt]) -> list[Receipt]:  # lock held
        """``ttl=``: drop the records of ``taken`` pending longer than ``ttl`` (``DROPPED``,
        reason ``expired``); the others."""
        horizon = self._clock() - (self.ttl or 0.0)
        live = [r for r in taken if r._at >= horizon]  # type: ignore[attr-defined]
        if len(live) < len(taken):
            expired = [r for r in taken if r._at < horizon]  # type: ignore[attr-defined]
            for r in expired:
                r._outcome = Outcome.DROPPED
            if self.budget is not None:
                self.budget.flying -= sum(r._size for r in expired)  # type: ignore[attr-defined]
            self.counts.dropped_expired += len(expired)
            if self.on_done is not None:
                self.on_done(expired)
            self._notice = True  # the flusher publishes RecordsDropped(reason="expired")
            now = time.monotonic()
            if now >= self._expiry_log_due:
                self._expiry_log_due = now + DROP_LOG_EVERY
                log.warning(
                    "writebehind: %d record(s) pending longer than ttl=%g s were dropped as "
                    "expired (%d so far; counted in dropped, reason 'expired')",
                    len(expired), self.ttl, self.counts.dropped_expired,
                )  # fmt: skip
        return live

    def _fit(self, n: int, budget: float) -> int:  # lock held
        """How many of the oldest ``n`` records cost no more than ``budget`` together."""
        slack = budget * 1e-9  # credit is a float: a budget of exactly k records buys k
        if self._cost_of is None:
            unit = self.unit_cost
            return n if unit <= 0 else min(n, int((budget + slack) / unit))
        total, k = 0.0, 0
        pending = self._pending
        for key in itertools.islice(self._order, n):
            total += pending[key]._cost
            if total > budget + slack:
                break
            k += 1
        return k

    def head_cost(self, n: int) -> tuple[float, float]:
        """The cost of the oldest pending record, and of the oldest ``n`` together."""
        with self._lock:
            if self._cost_of is None:
                k = min(n, len(self._pending))
                return (self.unit_cost if k else 0.0), self.unit_cost * k
            pending = self._pending
            costs = [pending[key]._cost for key in itertools.islice(self._order, n)]
        return (costs[0] if costs else 0.0), sum(costs)

    def cost(self, receipts: list[Receipt]) -> float:
        """What ``receipts`` cost together."""
        if self._cost_of is None:
            return self.unit_cost * len(receipts)
        return sum(r._cost for r in receipts)

    def pending_cost(self) -> float:
        """What every pending record costs together (``Stats.needs_capacity``, less what is
        in flight)."""
        with self._lock:
            if self._cost_of is None:
                return self.unit_cost * len(self._pending)
            held = list(self._pending.values())  # a copy under the lock; summed outside it
        return sum(r._cost for r in held)

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


def _newer(r: Receipt, old: Receipt) -> bool:
    """Whether ``r`` wins ``old``'s slot by version (newer or equal; no version: yes)."""
    try:
        return bool(r.version is None or r.version >= old.version)
    except Exception as exc:  # not comparable, or a comparison that raised
        raise RecordError(f"versions {r.version!r} and {old.version!r} cannot be compared") from exc


def _field_names(*specs: Any) -> tuple[str, ...] | None:
    """The record fields the key, version and cost read, if they are all field names (a
    str or a tuple of str; a number reads none); None if any is a callable."""
    names: list[str] = []
    for spec in specs:
        if spec is None or (isinstance(spec, int | float) and not isinstance(spec, bool)):
            continue
        if isinstance(spec, str):
            names.append(spec)
        elif isinstance(spec, tuple) and all(isinstance(n, str) for n in spec):
            names.extend(spec)
        else:
            return None
    return tuple(names)


def _nothing() -> None:
    return None


def _nothing_b(_: Batch) -> None:
    return None
