"""Fakes for tests, yours and ours: a clock you move by hand, and sinks that remember,
fail or stall on demand.

- :class:`ManualClock`: time moves only on ``advance()``; pass it as ``clock=`` so linger
  and backoff happen instantly and exactly.
- :class:`MemorySink`: keeps ``.batches``, each the list of records it received.
- :class:`FlakySink`: fails the first ``fail_first`` writes, and any batch holding a record
  that ``poison`` picks, with the error you choose.
- :class:`SlowSink`: takes ``delay`` seconds per write (``math.inf``: never answers).
- :class:`GatedSink`: holds every write until the test calls ``open()``.
- :class:`ThrottlingSink`: accepts at most ``rate`` records per second and answers "retry
  after N s" above it, the way a provisioned database or a rate-limited API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

from ._clock import Clock, MonotonicClock
from ._errors import PermanentSinkError, RetriableSinkError

__all__ = ["FlakySink", "GatedSink", "ManualClock", "MemorySink", "SlowSink", "ThrottlingSink"]


class ManualClock:
    """A clock that stands still until ``advance()`` moves it. Thread-safe.

    Sleepers and linger timers due at or before the new time wake, in order of their
    deadlines, on their own event loops.

    ``autojump=0.0`` makes it advance by itself, like trio's ``MockClock(autojump_threshold=
    0)``: when a sleeper is waiting and its loop has run ``autojump_turns`` turns with
    nothing else moving the clock, time jumps to the earliest deadline. Tests then just
    ``await`` what they want (a linger flush, a backoff) and it happens at once, at exactly
    the clock time it is due, with no polling of :attr:`sleepers`. A positive ``autojump``
    first waits that many real seconds (for work on other threads, such as a sync sink).
    """

    def __init__(
        self, start: float = 0.0, *, autojump: float | None = None, autojump_turns: int = 5
    ) -> None:
        if autojump is not None and not autojump >= 0:
            raise ValueError("autojump: seconds >= 0, or None")
        self._now = float(start)
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        self._seq = itertools.count()
        self.autojump = autojump
        self.autojump_turns = autojump_turns
        self._moves = 0  # advances so far: a jump is off if anything moved the clock

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake everything now due."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        with self._lock:
            self._now += seconds
            self._moves += 1
            due = []
            while self._timers and self._timers[0][0] <= self._now:
                due.append(heapq.heappop(self._timers))
        for _, _, loop, fut in due:
            if not loop.is_closed():  # a sleeper of a loop that has gone: nobody waits
                with contextlib.suppress(RuntimeError):  # it closed just now
                    loop.call_soon_threadsafe(_resolve, fut)

    @property
    def sleepers(self) -> int:
        """How many sleeps and timed waits are pending on this clock."""
        with self._lock:
            return sum(1 for t in self._timers if not t[3].done())

    def _timer(self, seconds: float) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if seconds <= 0:
                fut.set_result(None)
                return fut
            heapq.heappush(self._timers, (self._now + seconds, next(self._seq), loop, fut))
            moves = self._moves
        if self.autojump is not None:
            loop.call_later(self.autojump, self._jump_later, loop, moves, self.autojump_turns)
        return fut

    def _jump_later(self, loop: asyncio.AbstractEventLoop, moves: int, turns: int) -> None:
        """After ``turns`` quiet loop turns, jump to the earliest pending deadline."""
        if self._moves != moves:
            return  # the clock moved meanwhile: that advance scheduled its own checks
        if turns > 0:
            loop.call_soon(self._jump_later, loop, moves, turns - 1)
            return
        with self._lock:
            live = [t for t in self._timers if not t[3].done()]
            if not live or self._moves != moves:
                return
            target = min(t[0] for t in live)
        self.advance(max(0.0, target - self._now))
        with self._lock:
            again = [t for t in self._timers if not t[3].done()]
            moves = self._moves
        if again:  # the next deadline, after the woken have had their turns
            loop.call_soon(self._jump_later, loop, moves, self.autojump_turns)

    async def sleep(self, seconds: float) -> None:
        await self._timer(seconds)

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout is None:
            await event.wait()
            return True
        timer = self._timer(timeout)
        waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([timer, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
        return event.is_set()


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class MemorySink:
    """Remembers every batch it received in ``.batches`` (a list of lists of records)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.writes = 0

    async def write(self, batch: list[Any]) -> None:
        self.writes += 1
        self.batches.append(list(batch))

    @property
    def records(self) -> list[Any]:
        """Every record received, in order."""
        return [r for b in self.batches for r in b]


class FlakySink(MemorySink):
    """Fails on demand, otherwise remembers like :class:`MemorySink`.

    Args:
        fail_first: how many writes fail before they start to succeed.
        poison: a predicate; a batch holding a record it picks fails with ``PermanentSinkError``.
        error: the factory for the ``fail_first`` failures (default: a retriable error).
    """

    def __init__(
        self,
        *,
        fail_first: int = 0,
        poison: Callable[[Any], bool] | None = None,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.poison = poison
        self.error = error or (lambda: RetriableSinkError("injected failure (FlakySink)"))
        self.attempts = 0
        self.failures = 0

    async def write(self, batch: list[Any]) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            self.failures += 1
            raise self.error()
        if self.poison is not None and any(self.poison(r) for r in batch):
            self.failures += 1
            raise PermanentSinkError("injected poison record (FlakySink)")
        await super().write(batch)


class SlowSink(MemorySink):
    """Takes ``delay`` seconds (real time) per write; ``math.inf`` never answers."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.started = 0

    async def write(self, batch: list[Any]) -> None:
        self.started += 1
        if math.isinf(self.delay):
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)
        await super().write(batch)


class GatedSink(MemorySink):
    """Holds every write until ``open()`` is called (from any thread); ``close_gate()``
    holds later writes again. ``waiting`` counts writes currently held at the gate."""

    def __init__(self) -> None:
        super().__init__()
        self._open = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self.waiting = 0

    def open(self) -> None:
        """Let every held and future write through."""
        self._open = True
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    def close_gate(self) -> None:
        """Hold writes again from now on."""
        self._open = False
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.clear)

    async def write(self, batch: list[Any]) -> None:
        if self._event is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
            if self._open:
                self._event.set()
        self.waiting += 1
        try:
            while not self._open:
                await self._event.wait()
                if not self._open:
                    self._event.clear()
        finally:
            self.waiting -= 1
        await super().write(batch)


class ThrottlingSink(MemorySink):
    """Accepts at most ``rate`` records per second, like a provisioned database.

    A token bucket holding up to ``burst`` records (default: a tenth of a second's worth, at
    least one record) refills at ``rate`` per second. A write that finds too few tokens
    raises ``RetriableSinkError`` with ``retry_after`` set to the time until there are
    enough; a batch larger than ``burst`` can never fit and fails with
    ``PermanentSinkError`` (the batcher then splits it). ``throttles`` counts refusals.
    Pass the batcher's ``clock`` to run it on a :class:`ManualClock`.
    """

    def __init__(self, rate: float, *, burst: float | None = None, clock: Clock | None = None):
        super().__init__()
        if not rate > 0:
            raise ValueError(f"rate: must be > 0 records per second, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10)
        self.clock: Clock = clock or MonotonicClock()
        self.tokens = self.burst
        self._at: float | None = None
        self.throttles = 0

    async def write(self, batch: list[Any]) -> None:
        now = self.clock.monotonic()
        if self._at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        n = len(batch)
        if n > self.burst:
            raise PermanentSinkError(
                f"a batch of {n} records is larger than the burst ({self.burst:g}) (ThrottlingSink)"
            )
        if n > self.tokens + 1e-9:  # float refills fall short by an ulp: not a throttle
            self.throttles += 1
            raise RetriableSinkError(
                f"throttled: {self.rate:g} records/s (ThrottlingSink)",
                retry_after=max((n - self.tokens) / self.rate, 1e-6),
            )
        self.tokens = max(0.0, self.tokens - n)
        await super().write(batch)
