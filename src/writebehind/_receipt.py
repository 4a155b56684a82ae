"""Outcomes, receipts and the in-flight batch.

A receipt is the buffer's own entry for a record, so ``add()`` allocates one object per
record and no future. Waiting is lazy: a receipt in a batch waits on that batch's completion
(one future per batch, made only when someone awaits); a receipt still in the buffer waits
for the next cut. A superseded receipt points at its successor and takes its outcome:
``COALESCED`` if the successor committed, the successor's outcome otherwise.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._intake import Intake

__all__ = ["Batch", "Outcome", "Receipt"]


class Outcome(enum.Enum):
    """The final fate of an accepted record."""

    COMMITTED = "committed"
    """The sink's transaction committed the record."""
    COALESCED = "coalesced"
    """A newer record with the same key superseded it, and that record committed."""
    DEAD_LETTERED = "dead_lettered"
    """It can never be written; it went to the dead-letter store."""
    DROPPED = "dropped"
    """An overflow policy (``drop_newest``/``drop_oldest``) dropped it."""
    LOST = "lost"
    """It was still pending or in flight when ``close()`` reached its deadline."""


class Batch:
    """Records cut from the buffer together, written (and retried, or split) as one."""

    __slots__ = ("_done", "_future", "loop", "reason", "receipts")

    def __init__(self, receipts: list[Receipt], reason: str, loop: asyncio.AbstractEventLoop):
        self.receipts = receipts
        self.reason = reason
        self.loop = loop
        self._done = False
        self._future: asyncio.Future[None] | None = None

    def finish(self) -> None:
        """Mark every receipt's fate as settled and wake whoever waits (loop thread only)."""
        self._done = True
        self.receipts = []  # break the receipt <-> batch cycle: refcounting frees them now
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    @property
    def done(self) -> bool:
        return self._done

    async def wait(self) -> None:
        if self._done:
            return
        if self._future is None:
            self._future = self.loop.create_future()
        await asyncio.shield(self._future)


class Receipt:
    """What ``add()`` returns: ``await receipt`` gives the record's ``Outcome``.

    From a thread (the sync ``Batcher``), ``receipt.result(timeout)`` blocks for it.
    ``receipt.outcome`` is the outcome if already known, else ``None``.
    """

    __slots__ = ("_batch", "_outcome", "_succ", "record", "version")

    # Each Intake makes a subclass that sets this (``Receipt.bound``), so a receipt needs no
    # per-record reference to it. ``_batch``, ``_outcome`` and ``_succ`` start unset (absent
    # slots): the hot path stores two attributes, and readers use getattr with a default.
    _intake: Intake
    _batch: Batch
    _outcome: Outcome
    _succ: Receipt
    record: Any
    version: Any

    def __init__(self, record: Any, version: Any) -> None:
        self.record = record
        self.version = version

    @classmethod
    def bound(cls, intake: Intake) -> type[Receipt]:
        """A Receipt class for one intake's records."""
        return type("Receipt", (cls,), {"__slots__": (), "_intake": intake})

    @property
    def batch(self) -> Batch | None:
        """The batch the record was cut into, once it was."""
        return getattr(self, "_batch", None)

    def _final(self) -> Receipt:
        r = self
        while (succ := getattr(r, "_succ", None)) is not None:
            r = succ
        return r

    @property
    def outcome(self) -> Outcome | None:
        """The outcome if it is known now, else ``None``."""
        outcome: Outcome | None = getattr(self, "_outcome", None)
        if outcome is not None:
            return outcome
        if getattr(self, "_succ", None) is None:
            return None
        final: Outcome | None = getattr(self._final(), "_outcome", None)
        if final is None:
            return None
        return Outcome.COALESCED if final is Outcome.COMMITTED else final

    @property
    def done(self) -> bool:
        return self.outcome is not None

    async def wait(self) -> Outcome:
        """Wait for the outcome (on the batcher's event loop)."""
        while True:
            outcome = self.outcome
            if outcome is not None:
                return outcome
            batch = self._final().batch
            if batch is not None:
                await batch.wait()
            else:
                await self._intake.next_change()

    def __await__(self) -> Generator[Any, None, Outcome]:
        return self.wait().__await__()

    def result(self, timeout: float | None = None) -> Outcome:
        """Block this thread until the outcome is known; ``TimeoutError`` after ``timeout`` s.

        Must not be called from the batcher's own event-loop thread (use ``await``).
        """
        outcome = self.outcome
        if outcome is not None:
            return outcome
        loop = self._intake.loop
        if loop is None or threading.get_ident() == self._intake.loop_thread:
            raise RuntimeError(
                "Receipt.result() would block the batcher's own event loop; use 'await receipt'"
            )
        fut = asyncio.run_coroutine_threadsafe(self.wait(), loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def __repr__(self) -> str:
        return f"<Receipt {self.outcome.name if self.outcome else 'PENDING'}>"
