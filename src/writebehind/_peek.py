"""``peek(key)``: the newest record accepted for a key that is not written yet.

A service that just accepted a state change can answer a read of it before the flush,
without going to the datastore. Pending records are found by key in O(1) (the spill queue,
which holds later adds of a key than memory, first). Records in a write that has not
committed are found by scanning the batches in flight, reading each record's key: that
window lasts as long as a write, so the scan is rare, and bounded by ``max_pending``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ._expiry import has_expired
from ._receipt import Batch, Outcome, Receipt

__all__ = ["newest_unwritten"]

_NOT_WRITTEN = frozenset((None, Outcome.LOST, Outcome.SPOOLED))
"""A receipt in flight with one of these outcomes was not written (lost or left in the
spool at the close deadline): ``peek`` returns it, as it returns such a pending one."""


def newest_unwritten(intake: Any, in_flight: Callable[[], Iterable[Batch]], key: Any) -> Any | None:
    """The record ``peek(key)`` returns (``intake``: an ``_intake.Intake``, typed loosely
    as it is the module that owns the buffer; ``in_flight()``: the batches being written).

    The buffer is read first, with the last cut in the same step under its lock, and the
    writes in flight after: a record cut meanwhile is in the last cut or, once the flusher
    registered its batch (which it does before the next cut), in flight."""
    k = key.int if type(key) is uuid.UUID else key  # as the buffer holds it
    pending, cutting = _pending_receipt(intake, k)
    batches: list[Iterable[Receipt]] = [cutting]
    batches += [b.receipts for b in in_flight()]
    flying = _in_flight(intake, batches, k)
    if pending is None:
        return None if flying is None else flying.record
    if flying is not None and _older(pending, flying):
        return flying.record
    return pending.record


def _in_flight(intake: Any, batches: Iterable[Iterable[Receipt]], k: Any) -> Receipt | None:
    """The newest receipt with key ``k`` in a write not settled yet (None if none)."""
    found: Receipt | None = None
    for receipts in batches:
        for r in list(receipts):  # a copy: the loop thread may settle them meanwhile
            if r.outcome not in _NOT_WRITTEN:
                continue
            try:
                if intake.key_of(r.record) != k:
                    continue
            except Exception:  # a record whose key cannot be read or compared now
                continue
            if found is None or not _older(r, found):
                found = r
    return found


def _older(a: Receipt, b: Receipt) -> bool:
    """Whether ``a``'s version is below ``b``'s (False when they cannot be compared)."""
    try:
        return bool(a.version is not None and b.version is not None and a.version < b.version)
    except Exception:
        return False


def _pending_receipt(intake: Any, k: Any) -> tuple[Receipt | None, list[Receipt]]:
    """The receipt of the newest record with key ``k`` (as the buffer holds it) waiting to
    be written: in the spill queue (later adds of a key than memory's) or pending; None if
    there is none, or it has expired (``ttl=``). Also, read in the same step, the receipts
    of the last cut, which the flusher may not have registered as a write in flight yet."""
    with intake.locked():
        cutting = intake.just_cut
        r: Receipt | None = None
        spilled = intake.spilled
        try:
            if spilled and k in intake._spilled_keys:
                r = next((q for sk, q in reversed(spilled) if sk == k), None)
            else:
                r = intake._pending.get(k)
        except TypeError:  # unhashable: no record can have it
            return None, []
    if r is not None and has_expired(intake, r):
        r = None  # dropped at the next cut
    return r, cutting
