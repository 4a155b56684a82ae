"""Delivering one batch: write with a timeout, retry with backoff, split on permanent errors,
dead-letter what can never be written. Runs on the event loop, one task per batch."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._buffer import Intake
from ._clock import Clock
from ._errors import WriteTimeout
from ._events import (
    BatchCommitted,
    BatchFailed,
    EventBuffer,
    RecordsDeadLettered,
    RetryScheduled,
)
from ._receipt import Outcome, Receipt
from ._retry import RetryPolicy, backoff, is_retriable, split

__all__ = ["DeadLetterFn", "Delivery"]

log = logging.getLogger("writebehind")

DeadLetterFn = Callable[[list[Any], BaseException], Awaitable[None] | None]
"""Called with the records that can never be written and the error that condemned them."""


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
        dead_letter: DeadLetterFn | None,
        name: str,
        events: EventBuffer,
    ) -> None:
        self.sink = sink
        self.intake = intake
        self.retry = retry
        self.write_timeout = write_timeout
        self.clock = clock
        self.dead_letter = dead_letter
        self.name = name
        self.events = events

    async def deliver(self, receipts: list[Receipt], *, reason: str, direct: bool = False) -> None:
        """Write ``receipts`` until each is committed or dead-lettered."""
        records = [r.record for r in receipts]
        attempt = 0
        started = self.clock.monotonic()
        events = self.events
        while True:
            attempt += 1
            began = time.monotonic()
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self.sink.write(records)
            except TimeoutError as exc:
                error: BaseException = WriteTimeout(
                    f"sink write of {len(records)} records did not finish within "
                    f"{self.write_timeout} s (write_timeout); it may or may not have committed"
                )
                error.__cause__ = exc
            except Exception as exc:
                error = exc
            else:
                self.intake.count(batches=1)
                self.intake.settle(receipts, Outcome.COMMITTED, direct=direct)
                events.publish(
                    BatchCommitted,
                    size=len(records),
                    duration=time.monotonic() - began,
                    reason=reason,
                    attempts=attempt,
                )
                return
            self.intake.count(write_errors=1)
            retriable = is_retriable(error)
            events.publish(
                BatchFailed,
                size=len(records),
                error=type(error).__name__,
                attempt=attempt,
                retriable=retriable,
            )
            if retriable:
                elapsed = self.clock.monotonic() - started
                deadline = self.retry.deadline
                if attempt < self.retry.max_attempts and (deadline is None or elapsed < deadline):
                    wait = getattr(error, "retry_after", None) or backoff(self.retry, attempt)
                    if attempt == 1:
                        log.warning(
                            "writebehind[%s]: write of %d records failed (%s), retrying",
                            self.name,
                            len(records),
                            _describe(error),
                        )
                    self.intake.count(retried=1)
                    events.publish(RetryScheduled, size=len(records), attempt=attempt, delay=wait)
                    await self.clock.sleep(wait)
                    continue
                await self._condemn(receipts, records, error, attempt, direct)
                return
            if len(receipts) > 1:
                self.intake.count(splits=1)
                left, right = split(receipts)
                await self.deliver(left, reason=reason, direct=direct)
                await self.deliver(right, reason=reason, direct=direct)
                return
            await self._condemn(receipts, records, error, attempt, direct)
            return

    async def _condemn(
        self,
        receipts: list[Receipt],
        records: list[Any],
        error: BaseException,
        attempts: int,
        direct: bool,
    ) -> None:
        log.error(
            "writebehind[%s]: dead-lettered %d record(s) after %d attempt(s): %s",
            self.name,
            len(records),
            attempts,
            _describe(error),
        )
        if self.dead_letter is not None:
            try:
                result = self.dead_letter(records, error)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("writebehind[%s]: the dead-letter callable failed", self.name)
        self.intake.settle(receipts, Outcome.DEAD_LETTERED, direct=direct)
        self.events.publish(
            RecordsDeadLettered, count=len(records), error=type(error).__name__, attempts=attempts
        )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
