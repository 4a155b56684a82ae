"""Capacity: a budget of cost units per second that batchers spend as they write.

Every record has a **cost** (``cost=`` on the batcher: a number, a field name or a callable;
default 1) and a batch costs the sum of its records'. A **capacity** is a token bucket that
holds at most one second of credit: ``ProvisionedCapacity(per_second)`` for this process,
``RedisSharedCapacity`` (in :mod:`writebehind.scale.redis_capacity`) for a fleet. Every
batcher that holds the same object spends from the same bucket, so several batchers (one per
table, say) stay within one database's budget together.

The flusher asks the capacity before it cuts a batch: :meth:`Capacity.take` grants up to
what a full batch would cost if at least the oldest record's cost (or a tenth of a second's
credit) is available; the batch is cut to fit what was granted, and what it did not use is
given back. When too little is there, :meth:`Capacity.wait_for` says how long until it
would be, and the flusher sleeps that long (one timer; a change of rate wakes it sooner).
Batchers sharing a capacity take turns: one refused credit has what it needs kept for it
ahead of later takers. Every attempt that reaches the datastore is paid for: a retry, each
half of a split batch and a ``when_full="direct"`` write wait for their cost too. The bucket
never goes into debt: a cost above the current rate waits for the rate to rise. What a
record costs is read by :mod:`._cost`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._clock import Clock, MonotonicClock
from ._retry import check_number

__all__ = ["Capacity", "Listener", "ProvisionedCapacity", "TokenBucket"]

_GRANT = 0.1
"""Seconds of credit a taker waits for before it takes (unless what it asks for costs less):
a batcher held back by its capacity writes about ten batches a second, not one record per
refill (go-batcher's capacity interval)."""
_WAIT_GRACE = 1.0
"""Seconds past its expected wait that a refused taker's claim on credit is kept: a taker
that does not come back by then (closed, or its loop stalled) stops holding credit back."""

Listener = Callable[[str], None]
"""Called (from any thread) with a reason when a capacity's rate changes."""


class TokenBucket:
    """Credit that refills at ``rate`` per second and holds at most one second of it.

    Thread-safe: batchers on different loops and threads may share one. The rate may change
    (a fleet member wins or loses partitions); credit never exceeds the new rate.
    """

    def __init__(self, rate: float, clock: Clock, *, full: bool = True) -> None:
        self._lock = threading.Lock()
        self.clock = clock
        self.rate = rate
        self.tokens = rate if full else 0.0
        self._at = clock.monotonic()
        # takers that found too little credit, in order: who -> (ticket, need, expires)
        self._waiting: dict[object, tuple[int, float, float]] = {}
        self._tickets = itertools.count()

    def _refill(self) -> None:  # lock held
        now = self.clock.monotonic()
        if now > self._at:
            self.tokens = min(self.rate, self.tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._refill()
            self.rate = rate
            self.tokens = min(self.tokens, rate)

    def _held_for_others(self, who: object, now: float) -> float:  # lock held
        """Credit kept for the taker that has waited longest (not ``who``, and only if it
        came before ``who``): what it needs, so takers of cheaper records arriving as credit
        refills cannot starve it. A wait not renewed in time is forgotten."""
        head: tuple[int, float, float] | None = None
        for w, entry in list(self._waiting.items()):
            if entry[2] < now:
                del self._waiting[w]  # its taker went away or came back too late
            elif w is not who and (head is None or entry[0] < head[0]):
                head = entry
        if head is None:
            return 0.0
        mine = self._waiting.get(who)
        return 0.0 if mine is not None and mine[0] < head[0] else min(head[1], self.rate)

    def take(self, minimum: float, maximum: float, who: object = None) -> float | None:
        """Take up to ``maximum`` credit if at least ``minimum`` is there; None if not. A
        ``minimum`` above the rate is never granted (the bucket never goes into debt): it
        waits for a higher rate (a fleet member that leases more partitions).

        ``who`` (the taker: a batcher's flusher) makes sharing fair: a taker refused for want
        of credit is remembered, and the credit it needs is kept for it ahead of takers that
        came later, until it takes (or stops asking for :data:`_WAIT_GRACE` seconds past
        the time :meth:`wait_for` gave it)."""
        with self._lock:
            self._refill()
            now = self._at
            held = self._held_for_others(who, now) if self._waiting else 0.0
            free = self.tokens - held
            need = self._need(minimum, maximum) * (1 - 1e-9)  # float credit: enough is enough
            if minimum > self.rate * (1 + 1e-9):
                return None  # more than a second's credit: only a higher rate can grant it
            if minimum > 0 and (self.rate <= 0 or free < need):
                if who is not None:
                    ticket = self._waiting[who][0] if who in self._waiting else next(self._tickets)
                    wait = (held + need - self.tokens) / self.rate if self.rate > 0 else 0.0
                    self._waiting[who] = (ticket, need, now + wait + _WAIT_GRACE)
                return None
            granted = max(minimum, min(max(free, 0.0), maximum))
            self.tokens -= granted
            self._waiting.pop(who, None)
            return granted

    def _need(self, minimum: float, maximum: float) -> float:  # lock held
        """What a take waits for: ``minimum``, or :data:`_GRANT` seconds of credit if the
        taker wants that much, and never more than one second's."""
        return min(max(minimum, min(maximum, self.rate * _GRANT)), self.rate)

    def forget(self, who: object) -> None:
        """``who`` takes no more (its batcher closed): keep no credit for it."""
        with self._lock:
            self._waiting.pop(who, None)

    def give_back(self, amount: float) -> None:
        """Return credit that a cut did not use."""
        if amount > 0:
            with self._lock:
                self._refill()
                self.tokens = min(self.rate, self.tokens + amount)

    def spend(self, amount: float) -> None:
        """Spend now, into debt if need be (a write that does not wait for credit)."""
        with self._lock:
            self._refill()
            self.tokens -= amount

    def wait_for(
        self, minimum: float, who: object = None, maximum: float | None = None
    ) -> float | None:
        """Seconds until :meth:`take` (with the same ``minimum`` and ``maximum``) could grant
        credit to ``who``, after the credit kept for a taker waiting before it; None while
        the rate is 0."""
        with self._lock:
            self._refill()
            if self.rate <= 0 or minimum > self.rate * (1 + 1e-9):
                return None  # nothing, or too little ever: wait for the rate to change
            held = self._held_for_others(who, self._at) if self._waiting else 0.0
            want = self._need(minimum, minimum if maximum is None else maximum)
            return max(0.0, (held + want - self.tokens) / self.rate)


class Capacity:
    """The budget that batchers holding this object share: use :class:`ProvisionedCapacity`
    or :class:`~writebehind.RedisSharedCapacity` (this base is not meant to be subclassed
    by users yet: the rate is set through private hooks).

    A batcher attaches when it starts (the first attach starts the capacity) and detaches
    when it closes (the last detach stops it); ``async with cap:`` or ``with cap:`` holds it
    open too. ``attach``, ``detach``, ``take``, ``give_back``, ``spend`` and ``wait_for``
    are what batchers call (thread-safe); users need none of them. Batchers take turns:
    one that found too little credit for its oldest record is served before batchers that
    ask later, so cheap records do not starve costly ones.
    """

    def __init__(self, rate: float, clock: Clock | None, *, full: bool = True) -> None:
        self._clock_given = clock is not None
        self._bucket = TokenBucket(rate, clock or MonotonicClock(), full=full)
        self._holders = 0
        self._hold_lock = threading.Lock()
        self._listeners: list[Listener] = []
        _ALL.add(self)
        self._needs: dict[Callable[[], float], Callable[[], float]] = {}

    # -- what subclasses define ---------------------------------------------------------------
    @property
    def max_cost(self) -> float:
        """The most one record may cost: what this capacity could ever grant in a second."""
        raise NotImplementedError

    def _start(self) -> None:
        """Begin (connect, start a background thread). Called by the first holder."""

    def _stop(self) -> None:
        """End. Called when the last holder lets go."""

    def describe(self) -> dict[str, Any]:
        """What the capacity holds now, for stats and metrics (no secrets)."""
        return {"per_second": self.rate}

    def _forked(self) -> None:
        """In a forked child (``os.register_at_fork``): no batcher of the child holds this
        capacity yet (the parent's batchers and threads did not cross the fork), so the
        child's first batcher starts it afresh. Locks are new: a thread of the parent may
        have held them at the fork."""
        self._hold_lock = threading.Lock()
        self._holders = 0
        self._needs.clear()
        self._listeners.clear()
        self._bucket._lock = threading.Lock()
        self._bucket._waiting.clear()
        self._after_fork()

    def _after_fork(self) -> None:
        """What a subclass resets in a forked child (its thread, leases, client)."""

    # -- holders -------------------------------------------------------------------------------
    def attach(self, needs: Callable[[], float], listener: Listener, clock: Clock) -> None:
        """A batcher starts using this capacity: ``needs()`` says what it needs (its
        pending and in-flight cost), ``listener`` hears rate changes."""
        with self._hold_lock:
            if not self._clock_given and self._holders == 0:
                self._bucket.clock = clock  # one clock for the bucket and its first user
                self._bucket._at = clock.monotonic()
            self._needs[needs] = needs  # a bound method: equal for the same holder
            self._listeners.append(listener)
            self._hold()

    def detach(self, needs: Callable[[], float], listener: Listener, who: object = None) -> None:
        """The batcher closed: forget its ``needs`` and ``listener`` (and the credit kept
        for ``who``, its flusher, if it was waiting)."""
        if who is not None:
            self._bucket.forget(who)
        with self._hold_lock:
            self._needs.pop(needs, None)
            if listener in self._listeners:
                self._listeners.remove(listener)
            self._release()

    def _hold(self) -> None:  # _hold_lock held
        self._holders += 1
        if self._holders == 1:
            try:
                self._start()
            except BaseException:
                self._holders -= 1
                raise

    def _release(self) -> None:  # _hold_lock held
        self._holders -= 1
        if self._holders == 0:
            self._stop()

    def needs(self) -> float:
        """The cost everything its batchers hold (pending or in flight) adds up to."""
        with self._hold_lock:
            sources = list(self._needs.values())
        return sum(need() for need in sources)

    def _changed(self, reason: str) -> None:
        """Tell every holder the rate changed (they wake their flushers)."""
        with self._hold_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(reason)

    def __enter__(self) -> Capacity:
        with self._hold_lock:
            self._hold()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._hold_lock:
            self._release()

    async def __aenter__(self) -> Capacity:
        await asyncio.to_thread(self.__enter__)  # a start may connect: not on the loop
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.__exit__)

    # -- spending ------------------------------------------------------------------------------
    @property
    def rate(self) -> float:
        """Cost units per second granted now."""
        return self._bucket.rate

    def take(self, minimum: float, maximum: float, who: object = None) -> float | None:
        """Take between ``minimum`` and ``maximum`` cost units of credit now, or None when
        there is not ``minimum`` to take (see :meth:`wait_for`). ``who`` is the taker (a
        batcher's flusher): a taker refused is served before later ones."""
        return self._bucket.take(minimum, maximum, who)

    def give_back(self, amount: float) -> None:
        """Return credit taken but not used (a batch cut smaller than what was granted)."""
        self._bucket.give_back(amount)

    def spend(self, amount: float) -> None:
        """Spend ``amount`` now, into debt if need be (a write that does not wait)."""
        self._bucket.spend(amount)

    def wait_for(
        self, minimum: float, who: object = None, maximum: float | None = None
    ) -> float | None:
        """Seconds until :meth:`take` could grant ``who`` credit; None while the rate is 0
        (wait for a rate change instead)."""
        return self._bucket.wait_for(minimum, who, maximum)


_ALL: weakref.WeakSet[Capacity] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for capacity in list(_ALL):
        capacity._forked()


os.register_at_fork(after_in_child=_reset_after_fork)


class ProvisionedCapacity(Capacity):
    """A fixed budget: ``per_second`` cost units per second for every batcher holding this
    object, with at most one second of burst (go-batcher's ``ProvisionedResource``). It
    starts full, so the first second may see up to twice ``per_second``; after that, writes
    keep to the rate. A record costing more than ``per_second`` (``max_cost``) is refused at
    ``add()`` with ``RecordError``.

    ``clock``: a :class:`~writebehind.Clock` (tests pass a ``ManualClock``); by default the
    clock of the first batcher that uses it.
    """

    def __init__(self, per_second: float, *, clock: Clock | None = None) -> None:
        check_number("per_second", per_second, minimum=0, inclusive=False, finite=True)
        self.per_second = float(per_second)
        super().__init__(self.per_second, clock)

    @property
    def max_cost(self) -> float:
        return self.per_second

    def __repr__(self) -> str:
        return f"ProvisionedCapacity(per_second={self.per_second:g})"
