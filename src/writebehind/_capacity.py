"""Capacity: a budget of cost units per second that batchers spend as they write.

Every record has a **cost** (``cost=`` on the batcher: a number, a field name or a callable;
default 1) and a batch costs the sum of its records'. A **capacity** is a token bucket that
holds at most one second of credit: ``ProvisionedCapacity(per_second)`` for this process,
``RedisSharedCapacity`` (in :mod:`writebehind.scale.redis_capacity`) for a fleet. Every
batcher that holds the same object spends from the same bucket, so several batchers (one per
table, say) stay within one database's budget together.

The flusher asks the capacity before it cuts a batch: :meth:`Capacity.take` grants up to
what a full batch would cost if at least the oldest record's cost is available; the batch is
cut to fit what was granted (never left to starve behind a costlier one), and what it did
not use is given back. When not even the oldest record fits, :meth:`Capacity.wait_for` says
how long until it would, and the flusher sleeps that long (one timer; a change of rate wakes
it sooner). Retries and the halves of a split batch are not charged again: the sink's
throttling and the adaptive concurrency pace those.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

from ._clock import Clock, MonotonicClock
from ._errors import ConfigError, RecordError
from ._keys import make_getter

__all__ = ["Capacity", "CostSpec", "ProvisionedCapacity", "TokenBucket", "cost_getter"]

CostSpec = int | float | str | Callable[[Any], Any]
"""``cost=``: a number (every record costs it), a field name, or a callable on the record."""

Listener = Callable[[str], None]
"""Called (from any thread) with a reason when a capacity's rate changes."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def cost_getter(spec: CostSpec) -> tuple[float, Callable[[Any], float] | None]:
    """``(constant, None)`` when every record costs the same; ``(0, getter)`` otherwise.
    The getter raises ``RecordError`` for a cost that is not a finite number >= 0."""
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        if not (math.isfinite(spec) and spec >= 0):
            raise ConfigError(f"cost: must be a finite number >= 0, got {spec!r}")
        return float(spec), None
    if isinstance(spec, tuple) or not (isinstance(spec, str) or callable(spec)):
        raise ConfigError(
            f"cost: must be a number, a field name or a callable on the record, got {spec!r}"
        )
    read = make_getter(spec, "cost")
    assert read is not None

    def cost_of(record: Any) -> float:
        value = read(record)
        if not _is_number(value) or not (math.isfinite(value) and value >= 0):
            raise RecordError(
                f"cost {value!r} is not a finite number >= 0; the record was not accepted"
            )
        return float(value)

    return 0.0, cost_of


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

    def take(self, minimum: float, maximum: float) -> float | None:
        """Take up to ``maximum`` credit if at least ``minimum`` is there; None if not. A
        ``minimum`` above one second's credit is granted once the bucket is full, leaving it
        in debt, so a record that costs more than the rate still goes, at the rate."""
        with self._lock:
            self._refill()
            need = min(minimum, self.rate) * (1 - 1e-9)  # float credit: exactly enough is enough
            if minimum > 0 and (self.rate <= 0 or self.tokens < need):
                return None
            granted = max(minimum, min(max(self.tokens, 0.0), maximum))
            self.tokens -= granted
            return granted

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

    def wait_for(self, minimum: float) -> float | None:
        """Seconds until :meth:`take` could grant ``minimum``; None while the rate is 0."""
        with self._lock:
            self._refill()
            if self.rate <= 0:
                return None
            deficit = min(minimum, self.rate) - self.tokens
            return max(0.0, deficit / self.rate)


class Capacity:
    """The budget that batchers holding this object share. Subclasses set the rate.

    A batcher attaches when it starts (the first attach starts the capacity) and detaches
    when it closes (the last detach stops it); ``async with cap:`` or ``with cap:`` holds it
    open too. The methods batchers call are thread-safe.
    """

    def __init__(self, rate: float, clock: Clock | None, *, full: bool = True) -> None:
        self._clock_given = clock is not None
        self._bucket = TokenBucket(rate, clock or MonotonicClock(), full=full)
        self._holders = 0
        self._hold_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._needs: dict[int, Callable[[], float]] = {}

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

    # -- holders -------------------------------------------------------------------------------
    def attach(self, needs: Callable[[], float], listener: Listener, clock: Clock) -> None:
        """A batcher starts using this capacity: ``needs()`` says what it needs (its
        pending and in-flight cost), ``listener`` hears rate changes."""
        with self._hold_lock:
            if not self._clock_given and self._holders == 0:
                self._bucket.clock = clock  # one clock for the bucket and its first user
                self._bucket._at = clock.monotonic()
            self._needs[id(needs)] = needs
            self._listeners.append(listener)
            self._hold()

    def detach(self, needs: Callable[[], float], listener: Listener) -> None:
        with self._hold_lock:
            self._needs.pop(id(needs), None)
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

    def take(self, minimum: float, maximum: float) -> float | None:
        return self._bucket.take(minimum, maximum)

    def give_back(self, amount: float) -> None:
        self._bucket.give_back(amount)

    def spend(self, amount: float) -> None:
        self._bucket.spend(amount)

    def wait_for(self, minimum: float) -> float | None:
        return self._bucket.wait_for(minimum)


class ProvisionedCapacity(Capacity):
    """A fixed budget: ``per_second`` cost units per second for every batcher holding this
    object, with at most one second of burst (go-batcher's ``ProvisionedResource``).

    ``clock``: a :class:`~writebehind.Clock` (tests pass a ``ManualClock``); by default the
    clock of the first batcher that uses it.
    """

    def __init__(self, per_second: float, *, clock: Clock | None = None) -> None:
        if not _is_number(per_second) or not (math.isfinite(per_second) and per_second > 0):
            raise ConfigError(f"per_second: must be a finite number > 0, got {per_second!r}")
        self.per_second = float(per_second)
        super().__init__(self.per_second, clock)

    @property
    def max_cost(self) -> float:
        return self.per_second

    def __repr__(self) -> str:
        return f"ProvisionedCapacity(per_second={self.per_second:g})"
