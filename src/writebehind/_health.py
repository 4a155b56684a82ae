"""``SinkHealth``: how one batcher paces its writes when the sink misbehaves.

Three states. ``healthy``: writes go at the adaptive concurrency. ``throttled``: the sink
throttled ("retry after N s"); no write starts before then, and the concurrency halves.
``failing``: writes fail with retriable errors (connection lost, timeouts); the batcher
probes with one write at a time, one per backoff step (no retry storm however many
batches are waiting), and the first success makes it healthy again.

Every state change is an event (``Paused``/``Resumed``) and a log line; repeated failures
are logged through :class:`LogGate`, one line per kind per interval with a count of the
lines it held back, so a sink that is down for an hour writes a few hundred lines, not one
per batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ._aimd import AdaptiveConcurrency
from ._clock import Clock
from ._deadletter import scrub_secrets
from ._errors import SinkMisconfigured, WriteTimeout
from ._events import EventBuffer, Paused, Resumed
from ._retry import RetryPolicy, backoff, retry_after
from ._stats import SinkState

__all__ = ["LOG_INTERVAL", "LogGate", "SinkHealth"]

log = logging.getLogger("writebehind")

LOG_INTERVAL = 30.0
"""Seconds between two log lines of the same kind (the ones in between are counted)."""


class LogGate:
    """At most one log line per key per ``interval``; the next one says how many were held."""

    def __init__(self, clock: Clock, interval: float = LOG_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self._due: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._level: dict[str, int] = {}

    def __call__(self, key: str, level: int, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless a ``key`` line went out within the interval."""
        now = self.clock.monotonic()
        self._level[key] = level
        if now < self._due.get(key, float("-inf")):
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        if held:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, held, now - self._last[key])
        log.log(level, msg, *args, stacklevel=2)
        self._due[key] = now + self.interval
        self._last[key] = now
        return True

    def forget(self, *keys: str) -> None:
        """Drop the held-back counts of ``keys`` (a later line summed them up)."""
        for key in keys:
            self._held.pop(key, None)

    def flush(self) -> None:
        """Log how many lines each key held back since its last line (at close)."""
        now = self.clock.monotonic()
        for key, held in sorted(self._held.items()):
            log.log(
                self._level.get(key, logging.WARNING),
                "writebehind: %d more %r line(s) like the last one in the last %.0f s",
                held, key, now - self._last.get(key, now),
            )  # fmt: skip
        self._held.clear()


class SinkHealth:
    """The pacing state of one batcher's sink; all methods run on the event loop."""

    def __init__(
        self,
        *,
        retry: RetryPolicy,
        clock: Clock,
        events: EventBuffer,
        concurrency: AdaptiveConcurrency,
        name: str,
        count: Any,
    ) -> None:
        self.retry, self.clock, self.events = retry, clock, events
        self.concurrency, self.name, self.count = concurrency, name, count
        self.state: SinkState = "healthy"
        self.since = 0.0  # when the current non-healthy state began
        self.resume_at = float("-inf")  # no write starts before this clock time
        self.failures = 0  # consecutive retriable failures: the lane's backoff step
        self.refused = 0  # writes failed or throttled since the state left healthy
        self.limiter = LogGate(clock)
        self._probe = asyncio.Lock()

    async def admit(self) -> bool:
        """Wait until a write may start. True: the caller is the failing state's one prober
        and must pass ``probe=True`` to :meth:`committed` or :meth:`failed`."""
        clock = self.clock
        while True:
            wait = self.resume_at - clock.monotonic()
            if wait > 0:
                await clock.sleep(wait)
                continue
            if self.state != "failing":
                return False
            await self._probe.acquire()
            try:
                wait = self.resume_at - clock.monotonic()
                if self.state == "failing" and wait <= 0:
                    return True
            except BaseException:  # pragma: no cover - defensive
                self._probe.release()
                raise
            self._probe.release()  # healthy again, or another probe failed: start over

    def release(self, probe: bool) -> None:
        """Give up the probe without an answer (the write was cancelled)."""
        if probe and self._probe.locked():
            self._probe.release()

    def committed(self, began: float, probe: bool) -> None:
        """A write that began at ``began`` committed."""
        now = self.clock.monotonic()
        self.concurrency.succeeded(began, now)
        if self.state != "throttled" or began >= self.since:  # not a write from before
            self._recover(now)
        self.release(probe)

    def failed(
        self, error: BaseException, retriable: bool, began: float, probe: bool
    ) -> tuple[float, bool]:
        """A write that began at ``began`` raised ``error``. Returns the seconds until the
        next write may start (0 if it may start now), and whether it was a throttle (the
        sink's "retry after": the one place that hint is read)."""
        now = self.clock.monotonic()
        try:
            if not retriable:  # the sink answered: whatever is wrong is the data's fault
                if self.state != "throttled" or began >= self.since:
                    self._recover(now)
                return 0.0, False
            hint = retry_after(error)
            if hint is not None:  # bounded: a sink cannot stall the batcher for ever
                self._throttled(error, min(hint, self.retry.max_throttle_wait), began, now)
            else:
                self._failing(error, began, now)
            return max(0.0, self.resume_at - now), hint is not None
        finally:
            self.release(probe)

    def _throttled(self, error: BaseException, seconds: float, began: float, now: float) -> None:
        self.count(throttled=1)
        self.concurrency.congested(began, now)
        self.resume_at = max(self.resume_at, now + seconds)
        self.failures = 0  # the sink answered
        if self.state != "throttled":
            self._enter("throttled", now, type(error).__name__, seconds)
        self.refused += 1
        self.limiter(
            "throttled", logging.WARNING,
            "writebehind[%s]: the sink throttled (%s); pausing writes for %.2f s, "
            "concurrency now %d",
            self.name, _describe(error), seconds, self.concurrency.current,
        )  # fmt: skip

    def _failing(self, error: BaseException, began: float, now: float) -> None:
        if isinstance(error, WriteTimeout):
            self.count(timeouts=1)
            self.concurrency.congested(began, now)
        self.failures += 1
        wait = backoff(self.retry, self.failures)
        self.resume_at = max(self.resume_at, now + wait)
        if self.state != "failing":
            self._enter("failing", now, type(error).__name__, wait)
        self.refused += 1
        if isinstance(error, SinkMisconfigured):
            self.limiter(
                "misconfigured", logging.ERROR,
                "writebehind[%s]: configuration problem: the sink cannot take any record (%s); "
                "nothing is dead-lettered for it. Repair the table or the grants; retrying "
                "one write at a time, next in %.2f s (%d consecutive failures)",
                self.name, _describe(error), wait, self.failures,
            )  # fmt: skip
            return
        self.limiter(
            "failing", logging.WARNING,
            "writebehind[%s]: sink write failed (%s); retrying one write at a time, next in "
            "%.2f s (%d consecutive failures)",
            self.name, _describe(error), wait, self.failures,
        )  # fmt: skip

    def _enter(self, state: SinkState, now: float, error: str, seconds: float) -> None:
        if self.state == "healthy":
            self.since = now
            self.refused = 0
            self.count(pauses=1)
        self.events.publish(Paused, reason=state, error=error, seconds=seconds)
        self.state = state

    def _recover(self, now: float) -> None:
        self.failures = 0
        if self.state == "healthy":
            return
        was, self.state = self.state, "healthy"
        if was == "failing":  # the waiting writes may go now; a throttle's pause stands
            self.resume_at = min(self.resume_at, now)
        self.events.publish(Resumed, reason=was, paused_for=now - self.since)
        self.limiter.forget(was, "misconfigured")  # the line below counts the refused writes
        self.limiter(
            "recovered", logging.WARNING,
            "writebehind[%s]: the sink is writing again (it was %s for %.2f s, %d writes "
            "refused)",
            self.name, was, now - self.since, self.refused,
        )  # fmt: skip


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {scrub_secrets(str(error))}"
