"""``ttl=``: a record still pending when it expires is dropped, never written.

Each receipt of a batcher with ``ttl=`` keeps when it was added (``_at``). A record found
expired as its batch is cut is dropped there (:func:`unexpired`): receipt ``DROPPED``,
counted in ``dropped`` (reason ``expired``), done in the spool, a ``RecordsDropped`` event
(published by the flusher) and a WARNING at most every ``DROP_LOG_EVERY`` seconds. ``peek``
does not return an expired record (:func:`has_expired`). On an ``_intake.Intake`` (typed
loosely: that module imports this one), under its lock.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ._overflow import DROP_LOG_EVERY
from ._receipt import Outcome, Receipt

__all__ = ["has_expired", "unexpired"]

log = logging.getLogger("writebehind")


def has_expired(intake: Any, r: Receipt) -> bool:
    """Whether ``r`` was pending longer than ``ttl`` (it is dropped at the next cut)."""
    if intake.ttl is None:
        return False
    added: float = r._at  # type: ignore[attr-defined]
    return bool(added < intake._clock() - intake.ttl)


def unexpired(intake: Any, taken: list[Receipt]) -> list[Receipt]:
    """Drop the records of ``taken`` pending longer than ``ttl`` (``DROPPED``, reason
    ``expired``); the others. Lock held."""
    horizon = intake._clock() - (intake.ttl or 0.0)
    live = [r for r in taken if r._at >= horizon]  # type: ignore[attr-defined]
    if len(live) < len(taken):
        expired = [r for r in taken if r._at < horizon]  # type: ignore[attr-defined]
        for r in expired:
            r._outcome = Outcome.DROPPED
        if intake.budget is not None:
            intake.budget.flying -= sum(r._size for r in expired)  # type: ignore[attr-defined]
        intake.counts.dropped_expired += len(expired)
        if intake.on_done is not None:
            intake.on_done(expired)
        intake._notice = True  # the flusher publishes RecordsDropped(reason="expired")
        now = time.monotonic()
        if now >= intake._expiry_log_due:
            intake._expiry_log_due = now + DROP_LOG_EVERY
            log.warning(
                "writebehind: %d record(s) pending longer than ttl=%g s were dropped as "
                "expired (%d so far; counted in dropped, reason 'expired')",
                len(expired), intake.ttl, intake.counts.dropped_expired,
            )  # fmt: skip
    return live
