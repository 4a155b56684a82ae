"""Delivering one batch: write with a timeout, retry with backoff, split on permanent errors,
dead-letter what can never be written. Runs on the event loop, one task per batch.

Pacing (throttles, the failing state's one-probe-at-a-time, adaptive concurrency) lives in
:mod:`writebehind._health`; this module decides, per attempt, what happens to the records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from ._clock import Clock
from ._cost import cost_of
from ._deadletter import DeadLetter, DeadLetterEntry, scrub_secrets, sink_name
from ._errors import RetriableSinkError, WriteTimeout
from ._events import (
    BatchCommitted,
    BatchFailed,
    EventBuffer,
    RecordsDeadLettered,
    RetryScheduled,
)
from ._health import SinkHealth
from ._instrument import Instrument, WriteAttempt
from ._intake import Intake
from ._receipt import Outcome, Receipt
from ._retry import Attempts, Retry, RetryPolicy, Split, is_retriable, next_step, split
from ._tasks import cancelled_by_batcher
from .sinks._protocol import WriteResult

__all__ = ["Delivery"]

log = logging.getLogger("writebehind")


class Delivery:
    """Writes batches to one sink under one retry policy, settling receipts in the intake."""

    def __init__(
        self,
        sink: Any,
        intake: Intake,
        *,
        retry: RetryPolicy,
        write_timeout: float,
        clock: Clock,
        dead_letter: DeadLetter | None,
        name: str,
        events: EventBuffer,
        health: SinkHealth,
    ) -> None:
        self.sink, self.intake, self.retry = sink, intake, retry
        self.write_timeout, self.clock, self.dead_letter = write_timeout, clock, dead_letter
        self.name, self.events, self.health = name, events, health
        self.sink_name = sink_name(sink)
        self.instruments: tuple[Instrument, ...] = ()
        # capacity=: pays for an attempt the cut did not pay for (a retry, a split half)
        self.charge: Callable[[float], Awaitable[None]] | None = None

    async def deliver(
        self, receipts: list[Receipt], *, reason: str, direct: bool = False, paid: bool = True
    ) -> None:
        """Write ``receipts`` until each is committed or dead-lettered. With a capacity,
        every attempt is paid for: the first by the cut (``paid``), each retry and each half
        of a split here, before it starts (a failed write may have cost the datastore)."""
        records = [r.record for r in receipts]
        clock, health, events, retry = self.clock, self.health, self.events, self.retry
        tries = 0
        spent = Attempts()
        started = clock.monotonic()
        while True:
            if cancelled_by_batcher():  # abandoned, and the sink swallowed the cancellation:
                raise asyncio.CancelledError  # no new attempt after the close deadline
            if self.charge is not None and (tries or not paid):
                await self.charge(cost_of(self.intake, receipts))
            probe = await health.admit()
            tries += 1
            began = clock.monotonic()
            watch = self._watch(len(records), tries, reason) if self.instruments else None
            t0 = time.monotonic()
            try:
                error, result = await self._write(records)
            except BaseException:  # cancelled at the close deadline
                health.release(probe)
                if watch is not None:
                    self._unwatch(watch, "cancelled", None, time.monotonic() - t0)
                raise
            duration = time.monotonic() - t0
            if error is None:
                health.committed(began, probe)
                self.intake.count(batches=1)
                stale = self._settle(receipts, result, direct)
                events.publish(
                    BatchCommitted, size=len(records), duration=duration, reason=reason,
                    attempts=tries, stale=stale,
                )  # fmt: skip
                if watch is not None:
                    self._unwatch(watch, "committed", None, duration)
                return
            self.intake.count(write_errors=1)
            if isinstance(error, KeyboardInterrupt | SystemExit):
                health.release(probe)
                if watch is not None:
                    self._unwatch(watch, "dead_lettered", error, duration)
                await self.condemn(receipts, records, error, tries, direct)
                raise error  # settled first: now let the process stop as it was asked to
            retriable = is_retriable(error, retry)
            events.publish(
                BatchFailed, size=len(records), error=type(error).__name__, attempt=tries,
                retriable=retriable,
            )  # fmt: skip
            wait, throttled = health.failed(error, retriable, began, probe)
            spent = Attempts(spent.failures, spent.throttled_for, clock.monotonic() - started)
            step, spent = next_step(
                retry, spent, retriable=retriable, throttled=throttled, wait=wait,
                size=len(receipts),
            )  # fmt: skip
            if isinstance(step, Retry):
                self.intake.count(retried=1)
                events.publish(RetryScheduled, size=len(records), attempt=tries, delay=wait)
                if watch is not None:
                    self._unwatch(watch, "retry", error, duration)
                continue
            if isinstance(step, Split):
                if watch is not None:
                    self._unwatch(watch, "split", error, duration)
                self.intake.count(splits=1)
                left, right = split(receipts)
                await self.deliver(left, reason=reason, direct=direct, paid=False)
                await self.deliver(right, reason=reason, direct=direct, paid=False)
                return
            if watch is not None:
                self._unwatch(watch, "dead_lettered", error, duration)
            await self.condemn(receipts, records, error, tries, direct)
            return

    def _settle(self, receipts: list[Receipt], result: Any, direct: bool) -> int:
        """Settle a committed batch: the records ``result`` (a :class:`WriteResult`) names
        as stale ``STALE``, the rest ``COMMITTED``. How many were stale."""
        stale = stale_indexes(result, len(receipts))
        if not stale:
            self.intake.settle(receipts, Outcome.COMMITTED, direct=direct)
            return 0
        changed = [r for i, r in enumerate(receipts) if i not in stale]
        self.intake.settle([receipts[i] for i in sorted(stale)], Outcome.STALE, direct=direct)
        if changed:
            self.intake.settle(changed, Outcome.COMMITTED, direct=direct)
        return len(stale)

    async def _write(self, records: list[Any]) -> tuple[BaseException | None, Any]:
        r"""One sink write under ``write_timeout``: the error it raised (or None), and what
        it returned (a :class:`WriteResult`, or anything else, which means nothing).

        Whatever the write raised is returned as its error, ``BaseException``\ s included,
        so the caller settles the batch: a ``CancelledError`` that is not the batcher's own
        cancellation (an inner task someone cancelled) is a failed write of unknown
        outcome; ``KeyboardInterrupt``/``SystemExit`` are re-raised by :meth:`deliver` once
        the batch is settled. Only the batcher's own cancellation propagates.
        """
        deadline = asyncio.timeout(self.write_timeout)
        try:
            async with deadline:
                result = await self.sink.write(records)
        except TimeoutError as exc:
            if not deadline.expired():
                return exc, None  # the sink's own TimeoutError: an error like any other
            error = WriteTimeout(
                f"sink write of {len(records)} records did not finish within "
                f"{self.write_timeout} s (write_timeout); it may or may not have committed"
            )
            error.__cause__ = exc
            return error, None
        except asyncio.CancelledError as exc:
            if cancelled_by_batcher():
                raise
            interrupted = RetriableSinkError(
                "the sink's write raised CancelledError without the batcher cancelling it "
                "(an inner task was cancelled?); it may or may not have committed"
            )
            interrupted.__cause__ = exc
            return interrupted, None
        except BaseException as exc:
            return exc, None
        return None, result

    # -- instruments: per attempt, never per record ---------------------------------------
    def _watch(self, size: int, attempt: int, reason: str) -> tuple[WriteAttempt, ExitStack]:
        info = WriteAttempt(
            batcher=self.name, sink=self.sink_name, size=size, attempt=attempt, reason=reason
        )
        stack = ExitStack()
        for instrument in self.instruments:
            try:
                stack.enter_context(instrument.write(info))
            except BaseException as exc:
                _reraise_if_ours(exc)
                log.exception("writebehind[%s]: instrument %r failed", self.name, instrument)
        return info, stack

    def _unwatch(
        self,
        watch: tuple[WriteAttempt, ExitStack],
        outcome: str,
        error: BaseException | None,
        duration: float,
    ) -> None:
        info, stack = watch
        info.outcome, info.error, info.duration = outcome, error, duration
        try:
            stack.close()
        except BaseException as exc:
            _reraise_if_ours(exc)
            log.exception("writebehind[%s]: an instrument failed", self.name)

    # -- dead letters -----------------------------------------------------------------------
    async def condemn(
        self,
        receipts: list[Receipt],
        records: list[Any],
        error: BaseException,
        attempts: int,
        direct: bool,
    ) -> None:
        """Dead-letter ``receipts``: keep them in the store (if any), then settle them.

        They are settled whatever the store does (raises, hangs past ``write_timeout``,
        raises a ``BaseException``); only the batcher's own cancellation interrupts it."""
        message = scrub_secrets(str(error))
        store = self.dead_letter
        self.health.limiter(
            "dead_lettered", logging.ERROR,
            "writebehind[%s]: dead-lettered %d record(s) after %d attempt(s): %s: %s%s",
            self.name, len(records), attempts, type(error).__name__, message,
            "" if store is not None else _NO_STORE,
        )  # fmt: skip
        fatal: BaseException | None = None
        unkept = 0
        if store is not None:
            at = time.time()
            entries = [
                DeadLetterEntry(
                    record=rec,
                    error=type(error).__name__,
                    message=message,
                    sink=self.sink_name,
                    batcher=self.name,
                    attempts=attempts,
                    at=at,
                )
                for rec in records
            ]
            try:
                async with asyncio.timeout(self.write_timeout):
                    await store.put(entries)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and cancelled_by_batcher():
                    raise
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    fatal = exc
                told = getattr(exc, "unstored", None)  # a store that kept some of them
                unkept = len(records)
                if isinstance(told, int) and 0 <= told <= len(records):
                    unkept = told
                self.intake.count(dead_letter_errors=unkept)
                self.health.limiter(
                    "dead_letter_store", logging.ERROR,
                    "writebehind[%s]: the dead-letter store %r failed to keep %d record(s) "
                    "(%s: %s); they are counted in dead_lettered and dead_letter_errors only",
                    self.name, store, unkept, type(exc).__name__,
                    scrub_secrets(str(exc)),
                )  # fmt: skip
        # a store that failed: in spool mode the records stay in the spool (not done), so
        # the next batcher on it tries them, and the store, again
        kept = store is None or unkept == 0
        self.intake.settle(receipts, Outcome.DEAD_LETTERED, direct=direct, final=kept)
        self.events.publish(
            RecordsDeadLettered, count=len(records), error=type(error).__name__, attempts=attempts
        )
        if fatal is not None:
            raise fatal


_NO_STORE = (
    " (no dead-letter store is configured, so they are only counted: pass dead_letter= a "
    "path, a DeadLetter store or a callable to keep them)"
)


def stale_indexes(result: Any, size: int) -> frozenset[int]:
    """The valid indexes a :class:`WriteResult` names as stale (anything else a sink
    returns, ``None`` included, names none)."""
    if not isinstance(result, WriteResult) or not result.stale:
        return frozenset()
    return frozenset(i for i in result.stale if isinstance(i, int) and 0 <= i < size)


def _reraise_if_ours(exc: BaseException) -> None:
    """Let the batcher's own cancellation and a request to stop the process through."""
    if isinstance(exc, asyncio.CancelledError) and cancelled_by_batcher():
        raise exc
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
