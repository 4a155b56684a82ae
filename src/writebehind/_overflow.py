"""The overflow policies: what a full buffer does with a record that needs a new slot.

``when_full`` is ``block``/``raise`` (refuse with ``BufferFull``: the caller keeps the
record), ``drop_newest`` (accept and drop it), ``drop_oldest`` (drop the oldest pending
record to make room) or ``direct`` (write it alone, now, beside the batches). These run with
the intake's lock held and only when the buffer is full, so they live apart from the hot
path; :class:`~writebehind._intake.Intake` binds them as its methods.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ._errors import BufferFull
from ._receipt import Batch, Outcome, Receipt

if TYPE_CHECKING:
    from ._intake import Intake

__all__ = ["WHEN_FULL", "compact", "log_drops", "when_full"]

log = logging.getLogger("writebehind")

WHEN_FULL = ("block", "raise", "drop_newest", "drop_oldest", "direct")

_DROP_LOG_EVERY = 10.0  # seconds between two WARNINGs about dropped records


def when_full(self: Intake, k: Any, r: Receipt) -> Receipt:
    """Apply ``when_full`` to a record that needs a new slot (lock held)."""
    policy = self.when_full
    if not self._notice:  # the flusher publishes BufferFilled/RecordsDropped events
        self._notice = True
        self._call_in_loop(self._wake)
    if policy == "block" or policy == "raise":
        raise BufferFull(
            f"buffer full: {self.max_pending} records held (max_pending); the record was "
            f"not accepted. Use add() to wait for room, or another when_full policy"
        )
    self.accepted += 1
    if policy == "drop_oldest" and self._pending:
        first = next(iter(self._pending))
        self._pending.pop(first)._outcome = Outcome.DROPPED
        self.dropped_oldest += 1
        log_drops(self)
        self._pending[k] = r
        self._drops_since_compact += 1
        if self._drops_since_compact > len(self._pending):
            compact(self)
        if self._change is not None:  # someone awaits a pending receipt: it may be this one
            self._call_in_loop(self._notify_change)
        return r
    if policy == "direct":
        self.in_flight += 1
        assert self.loop is not None
        r._batch = batch = Batch([r], "direct", self.loop)
        if threading.get_ident() == self.loop_thread:
            self.loop.call_soon(self._direct, batch)
        else:
            self.loop.call_soon_threadsafe(self._direct, batch)
        return r
    r._outcome = Outcome.DROPPED  # drop_newest, or drop_oldest with nothing pending
    self.dropped_newest += 1
    log_drops(self)
    return r


def compact(self: Intake) -> None:
    """Rebuild the pending dict in place, dropping the empty slots that popping from its
    front leaves behind (they would make finding the oldest record O(n))."""
    items = list(self._pending.items())
    self._pending.clear()
    self._pending.update(items)
    self._drops_since_compact = 0


def log_drops(self: Intake) -> None:
    """One WARNING per ``_DROP_LOG_EVERY`` seconds while records are being dropped."""
    now = time.monotonic()
    if now >= self._drop_log_due:
        self._drop_log_due = now + _DROP_LOG_EVERY
        log.warning(
            "writebehind: buffer full (max_pending=%d, when_full=%s): %d record(s) "
            "dropped so far (%d newest, %d oldest)",
            self.max_pending,
            self.when_full,
            self.dropped_newest + self.dropped_oldest,
            self.dropped_newest,
            self.dropped_oldest,
        )
