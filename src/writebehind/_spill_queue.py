"""``when_full="spill"`` in memory mode: the queue of records waiting in the spool for room.

When the buffer is full, records go to the spool and wait in ``Intake.spilled`` (with their
keys, oldest first) until the flusher moves them into the room that settled writes free
(:func:`refill`); a new record spills while the queue is not empty, so the spool drains
before new records take the room, and a later add of a key follows it into the queue. On an
``_intake.Intake`` (typed loosely: that module imports this one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._coalesce import supersede
from ._errors import RecordError
from ._receipt import Receipt

__all__ = ["refill", "spill", "spill_next"]


def spill(intake: Any, k: Any, r: Receipt, to_spill: Callable[[Any], None]) -> Receipt:
    """Queue ``r`` (key ``k``) in the spill queue (lock held); its version must compare
    with the pending one's, as a put's would."""
    old = intake._pending.get(k)
    if old is not None and r.version is not None:
        try:
            r.version >= old.version  # noqa: B015 (compared for its error only)
        except Exception as exc:
            raise RecordError(
                f"versions {r.version!r} and {old.version!r} cannot be compared"
            ) from exc
    to_spill((k, r))
    intake._spilled_keys[k] = intake._spilled_keys.get(k, 0) + 1
    intake.counts.accepted += 1
    return r


def refill(intake: Any) -> int:
    """``when_full="spill"``: move spilled records (accepted already) into the buffer
    while it has room, oldest first, coalescing as a put does; how many moved. Called
    by the flusher before each decision (the spill queue drains before new records
    take the room: a new record spills while the queue is not empty)."""
    spilled = intake.spilled
    if not spilled:
        return 0
    moved = 0
    with intake._lock:
        if intake._abandoned:
            return 0
        pending, counts = intake._pending, intake.counts
        while spilled:
            k, r = spilled[0]
            old = pending.get(k)
            if old is None and len(pending) + counts.in_flight_held >= intake.max_pending:
                break
            spilled.popleft()
            moved += 1
            left = intake._spilled_keys.pop(k) - 1
            if left:
                intake._spilled_keys[k] = left
            if old is not None:
                try:
                    newer = r.version is None or r.version >= old.version
                except Exception:  # checked at add() against what was pending then
                    newer = True  # the later add wins
                supersede(intake, k, old, r, newer)
                continue
            if not pending:
                intake.oldest_at = intake._clock()
            pending[k] = r
            intake._order.append(k)
    return moved


def spill_next(intake: Any, record: Any) -> bool:
    """``when_full="spill"``: whether ``record`` goes to the spool: the buffer has no
    room for it, or spilled records wait (they go first) and its key is not pending in
    memory, or its key waits in the spill queue (a later add of a key follows it)."""
    if not intake.spilled:
        return not intake.would_take(record)
    try:
        k = intake.identity(record)[0]
    except Exception:  # the put raises the record's own error
        return False
    with intake._lock:
        try:
            return k is None or k in intake._spilled_keys or k not in intake._pending
        except Exception:
            return False
