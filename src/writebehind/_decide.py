"""The flush decision, as a pure function: no clock, no loop, no locks.

The flusher calls :func:`decide` each time it wakes. It answers either "cut a batch now,
for this reason" or "sleep until this deadline (or until woken)". Triggers, in order:

- ``close``:  the batcher is closing; everything goes.
- ``flush``:  ``flush()`` asked for the records pending when it was called.
- ``size``:   ``max_batch`` records (or ``max_batch_bytes``) are pending.
- ``linger``: the oldest pending record has waited ``linger`` seconds.

Nothing is cut during a ``pause()`` (until the batcher closes). No batch is cut while
``max_in_flight`` batches are already being written: the records
stay in the buffer (and keep coalescing) until a slot frees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CutReason", "Decision", "decide"]

CutReason = Literal["close", "flush", "size", "linger"]
"""Why a batch was cut (a ``direct`` write's batch of one says ``direct``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    reason: CutReason | None
    """Why to cut a batch now (``"close"``, ``"flush"``, ``"size"``, ``"linger"``), or None."""
    wake_at: float | None
    """When nothing is cut: the clock time to wake at, or None to sleep until woken."""


_SLEEP = Decision(None, None)


def decide(
    *,
    now: float,
    pending: int,
    oldest_at: float | None,
    max_batch: int,
    linger: float,
    forced: int,
    closing: bool,
    batches_in_flight: int,
    max_in_flight: int,
    resume_at: float = float("-inf"),
    bytes_full: bool = False,
) -> Decision:
    """Decide whether to cut a batch now.

    ``forced`` is how many pending records ``flush()`` still asks to be cut. ``oldest_at`` is
    the clock time the oldest pending record arrived (None when nothing is pending).
    ``resume_at``: ``pause()`` holds every cut until then, unless the batcher is closing.
    ``bytes_full``: ``max_batch_bytes`` are pending (a size trigger, as ``max_batch`` is).
    """
    if pending <= 0:
        return _SLEEP
    if now < resume_at and not closing:
        return Decision(None, resume_at)
    if batches_in_flight >= max_in_flight:
        return _SLEEP  # woken again when a batch finishes
    if closing:
        return Decision("close", None)
    if forced > 0:
        return Decision("flush", None)
    if pending >= max_batch or bytes_full:
        return Decision("size", None)
    if oldest_at is None:
        return Decision("linger", None)
    deadline = oldest_at + linger
    if now >= deadline:
        return Decision("linger", None)
    return Decision(None, deadline)
