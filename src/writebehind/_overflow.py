"""The overflow policies as a pure decision: what a full buffer does with a record that
needs a new slot.

``when_full`` is ``block``/``raise`` (refuse with ``BufferFull``: the caller keeps the
record), ``drop_newest`` (accept and drop it), ``drop_oldest`` (drop the oldest pending
record to make room) or ``direct`` (write it alone, now, beside the batches; at most
``max_pending`` records in direct flight, past which it refuses like ``block``).
:func:`overflow_action` chooses; :func:`carry_out` carries the choice out on an
``_intake.Intake`` (typed loosely: that module imports this one), which owns the records and
counters, under its lock.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from ._receipt import Batch, Outcome, Receipt

__all__ = [
    "WHEN_FULL", "Action", "WhenFull", "carry_out", "drop_oldest", "dropped_new", "log_drops",
    "notice_full", "overflow_action",
]  # fmt: skip

log = logging.getLogger("writebehind")

DROP_LOG_EVERY = 10.0
"""Seconds between two WARNINGs about dropped records."""

WhenFull = Literal["block", "raise", "drop_newest", "drop_oldest", "direct", "spill"]
WHEN_FULL: tuple[WhenFull, ...] = (
    "block", "raise", "drop_newest", "drop_oldest", "direct", "spill",
)  # fmt: skip

Action = Literal["refuse", "drop_newest", "drop_oldest", "direct"]


def overflow_action(
    policy: str, *, has_pending: bool, direct_in_flight: int, max_pending: int
) -> Action:
    """What to do with a record that found the buffer full.

    ``refuse``: raise ``BufferFull`` (the record is not accepted). ``drop_newest``: accept
    and drop it. ``drop_oldest``: drop the oldest pending record and take this one.
    ``direct``: write it alone, now. (``spill`` sends such a record to the spool before
    it reaches the buffer, see ``_spooling``; here it refuses, as ``block`` does.)
    """
    if policy == "drop_oldest":
        return "drop_oldest" if has_pending else "drop_newest"
    if policy == "drop_newest":
        return "drop_newest"
    if policy == "direct":
        return "direct" if direct_in_flight < max_pending else "refuse"
    return "refuse"


def carry_out(intake: Any, k: Any, r: Receipt) -> Receipt:
    """Apply ``intake``'s ``when_full`` to ``r`` (key ``k``), a record that needs a new slot
    in a full buffer (the intake's lock held; off the hot path)."""
    counts = intake.counts
    notice_full(intake)
    action = overflow_action(
        intake.when_full,
        has_pending=bool(intake._pending),
        direct_in_flight=counts.in_flight - counts.in_flight_held,
        max_pending=intake.max_pending,
    )
    if action == "refuse":
        raise intake.refusal()
    budget = intake.budget
    if action == "direct" and budget is not None and not budget.fits(r._size):  # type: ignore[attr-defined]
        raise intake.refusal()  # direct writes are bounded in bytes too
    counts.accepted += 1
    if action == "direct":
        counts.in_flight += 1
        if budget is not None:
            budget.flying += r._size  # type: ignore[attr-defined]
        assert intake.loop is not None
        r._batch = batch = Batch([r], "direct", intake.loop)
        intake.call_in_loop(intake._direct, batch)
        return r
    if action == "drop_oldest":
        if (
            budget is not None
            and budget.max_held is not None
            and (
                budget.flying + r._size > budget.max_held  # type: ignore[attr-defined]
            )
        ):
            dropped_new(intake, r)  # the bytes in flight leave no room, whatever is dropped
            log_drops(intake)
            return r
        drop_oldest(intake)
        while budget is not None and intake._pending and not budget.fits(r._size):  # type: ignore[attr-defined]
            drop_oldest(intake)  # as many as the new record's bytes need
        intake._pending[k] = r
        intake._order.append(k)
        if budget is not None:
            budget.pending += r._size  # type: ignore[attr-defined]
        if intake._change is not None:  # someone awaits a pending receipt: maybe this one
            intake.call_in_loop(intake._notify_change)
    else:
        dropped_new(intake, r)
    log_drops(intake)
    return r


def drop_oldest(intake: Any) -> None:  # lock held
    dropped = intake._pending.pop(intake._order.popleft())
    dropped._outcome = Outcome.DROPPED
    if intake.on_done is not None:
        intake.on_done([dropped])
    intake.counts.dropped_oldest += 1
    if intake.budget is not None:
        intake.budget.pending -= dropped._size


def dropped_new(intake: Any, r: Receipt) -> None:  # lock held
    """``r`` was accepted and is dropped at once (``drop_newest``, or a full spool)."""
    r._outcome = Outcome.DROPPED
    intake.counts.dropped_newest += 1
    if intake.on_done is not None:
        intake.on_done([r])


def log_drops(intake: Any) -> None:
    """One WARNING per ``DROP_LOG_EVERY`` seconds while records are being dropped."""
    now = time.monotonic()
    if now >= intake._drop_log_due:
        intake._drop_log_due = now + DROP_LOG_EVERY
        c = intake.counts
        log.warning(
            "writebehind: buffer full (max_pending=%d, when_full=%s): %d record(s) "
            "dropped so far (%d newest, %d oldest)",
            intake.max_pending, intake.when_full, c.dropped_newest + c.dropped_oldest,
            c.dropped_newest, c.dropped_oldest,
        )  # fmt: skip


def notice_full(intake: Any) -> None:
    """The buffer was full: the flusher publishes ``BufferFilled``/``RecordsDropped``."""
    intake._filled_since = True
    if not intake._notice:
        intake._notice = True
        intake.call_in_loop(intake._wake)
