"""Outcomes, receipts and the in-flight batch.

A receipt is the buffer's own entry for a record, so ``add()`` allocates one object per
record and no future. Waiting is lazy: a receipt in a batch waits on that batch's completion
(one future per batch, made only when someone awaits); a receipt still in the buffer waits
for the next cut. A superseded receipt points at its successor and resolves once the
successor's fate is known, as DESIGN.md section 6 states: ``COALESCED`` if the successor
committed, else the successor's outcome (``DEAD_LETTERED``, ``LOST``, ``DROPPED``,
``SPOOLED``): a receipt says what happened to its data. The counters count a superseded
record ``coalesced`` at once (conservation holds at every instant), so a receipt and the
counters may name different outcomes for a superseded record whose successor failed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import threading
from collections.abc import Generator
from typing import Any, Literal, Protocol

from ._errors import WriteBehindError, would_deadlock


class Owner(Protocol):
    """What a receipt asks of the intake that owns it (``Intake`` is one)."""

    loop: asyncio.AbstractEventLoop | None

    @property
    def gone(self) -> bool: ...

    def on_loop_thread(self) -> bool: ...

    async def next_change(self) -> None: ...

    async def durable(self, r: Receipt) -> None: ...


__all__ = ["Batch", "BatchReason", "Outcome", "Owner", "Receipt"]

BatchReason = Literal["close", "flush", "size", "linger", "direct"]
"""Why a batch was cut: the flush decision's reasons, or ``direct`` (a ``when_full="direct"``
record written alone)."""


class Outcome(enum.Enum):
    """The final fate of an accepted record."""

    COMMITTED = "committed"
    """The sink's transaction committed the record."""
    COALESCED = "coalesced"
    """A newer record with the same key superseded it (resolved once that record's own fate
    is known)."""
    DEAD_LETTERED = "dead_lettered"
    """It can never be written; it went to the dead-letter store."""
    DROPPED = "dropped"
    """An overflow policy (``drop_newest``/``drop_oldest``) dropped it."""
    LOST = "lost"
    """It was still pending or in flight when ``close()`` reached its deadline."""
    STALE = "stale"
    """The sink's transaction committed, but the row was not changed: the store already held
    this key at a newer version, so the conditional write skipped it (an equal version
    overwrites: ``COMMITTED``). Counted in ``committed`` and in ``stale``. Only sinks that
    tell report it: ``SQLiteSink``/``PostgresSink`` with ``report_stale=True`` (their
    ``reports_stale``), or a sink whose ``write`` returns a ``WriteResult``; others report
    ``COMMITTED``."""
    SPOOLED = "spooled"
    """Spool mode: it was not written by the close deadline and stays in the spool; the next
    batcher on that spool delivers it."""


_WRITTEN = frozenset((Outcome.COMMITTED, Outcome.STALE))
"""Outcomes of a record the sink's transaction committed."""


class Batch:
    """Records cut from the buffer together, written (and retried, or split) as one."""

    __slots__ = ("_done", "_future", "cost", "loop", "reason", "receipts")

    def __init__(
        self,
        receipts: list[Receipt],
        reason: BatchReason,
        loop: asyncio.AbstractEventLoop,
        cost: float = 0.0,
    ) -> None:
        self.receipts = receipts
        self.reason = reason
        self.loop = loop
        self.cost = cost
        """What its records cost together (``cost=``); spent from the capacity at the cut."""
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
    # ``_cost`` is a slot only of the receipts of a batcher whose ``cost=`` reads each record
    # (a field or a callable), ``_seq`` only in spool mode (the record's sequence number in
    # the spool): every pending record pays for the slots it uses, no more.
    _intake: Owner
    _batch: Batch
    _cost: float
    _outcome: Outcome
    _seq: int
    _succ: Receipt
    record: Any
    version: Any

    def __init__(self, record: Any, version: Any) -> None:
        self.record = record
        self.version = version

    @classmethod
    def bound(cls, intake: Owner, slots: tuple[str, ...] = ()) -> type[Receipt]:
        """A Receipt class for one intake's records, with the extra ``slots`` it uses
        (``_cost``, ``_seq``)."""
        return type("Receipt", (cls,), {"__slots__": slots, "_intake": intake})

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
        return Outcome.COALESCED if final in _WRITTEN else final

    @property
    def superseded(self) -> bool:
        """True once a newer record with its key took its place in the buffer: it is
        counted ``coalesced`` from then on, and its outcome is its successor's (``COALESCED``
        when that committed)."""
        return getattr(self, "_succ", None) is not None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    async def wait(self) -> Outcome:
        """Wait for the outcome (on the batcher's event loop)."""
        loop = self._intake.loop
        if loop is not asyncio.get_running_loop() and self.outcome is None:
            raise WriteBehindError(
                "a receipt can be awaited only on its batcher's event loop; from another "
                "thread use receipt.result(timeout), from another loop "
                "'await asyncio.to_thread(receipt.result, timeout)'"
            )
        while True:
            outcome = self.outcome
            if outcome is not None:
                return outcome
            batch = self._final().batch
            if batch is None:
                await self._intake.next_change()
            elif batch.done:  # every receipt of a finished batch has its outcome
                raise WriteBehindError(f"internal error: {self!r} has no outcome after its write")
            else:
                await batch.wait()

    async def durable(self) -> None:
        """Spool mode (``spool=``): wait until the record is fsynced in the spool, so it
        survives ``kill -9`` and power loss (``add()`` already waited; ``add_nowait()``
        returns before). A record a policy dropped, or the spool closed, returns at once.
        ``WriteBehindError`` without a spool."""
        await self._intake.durable(self)

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
        if loop is None:
            raise WriteBehindError("the batcher is not started: this receipt cannot resolve")
        if self._intake.on_loop_thread():
            raise would_deadlock("Receipt.result()")
        if self._intake.gone:
            raise WriteBehindError(
                "the batcher's event loop is gone (closed, or left behind in the parent "
                "process by os.fork()): this receipt will never resolve"
            )
        try:
            fut = asyncio.run_coroutine_threadsafe(self.wait(), loop)
        except RuntimeError as exc:  # the loop closed meanwhile
            raise WriteBehindError("the batcher's event loop is closed") from exc
        if timeout is not None:
            timeout = min(timeout, threading.TIMEOUT_MAX)
        try:
            return fut.result(timeout)
        except concurrent.futures.CancelledError:  # the loop went away while we waited
            outcome = self.outcome
            if outcome is not None:
                return outcome
            raise WriteBehindError(
                "the batcher's loop stopped before the outcome was known"
            ) from None
        except TimeoutError:
            fut.cancel()
            raise TimeoutError(
                f"no outcome within {timeout} s; the record is still "
                f"{'in flight' if self._final().batch is not None else 'pending'}"
            ) from None

    def __repr__(self) -> str:
        return f"<Receipt {self.outcome.name if self.outcome else 'PENDING'}>"
