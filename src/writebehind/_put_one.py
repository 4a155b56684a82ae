"""How one record is taken: the class of an intake's receipts, and its ``put_nowait``.

``put_nowait`` is the hot path: a closure over the intake's configuration, built once
(and again when spool mode wraps it), that reads locals instead of attributes. The
receipt class carries exactly the slots the batcher's options use, set as each receipt is
made. Both act on an ``_intake.Intake`` (typed loosely: that module imports this one),
which owns the records, the counters and the lock.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from ._bytes_budget import sized_init
from ._coalesce import coalesce as coalesce_pending
from ._errors import BatcherClosed, RecordError, WriteBehindError
from ._receipt import Receipt
from ._spill_queue import spill as spill_into

__all__ = [
    "CLOSING",
    "FORKED",
    "NEW",
    "OPEN",
    "make_put",
    "not_open",
    "receipt_class",
    "unhashable",
]

NEW, OPEN, CLOSING, FORKED = 0, 1, 2, 3
"""An intake's states."""

_NONE: Callable[[Any], None] = collections.deque(maxlen=0).append
"""A C function that takes one argument and returns None (the element is discarded): the
getter of a batcher without ``key=`` or ``version=``, so the hot path reads both with no
branch on whether they exist."""

_NOTHING_PENDING: Callable[[Any], None] = {}.get
"""The pending lookup of the spill put: nothing is pending there (a hashable key gives None;
an unhashable one raises, as the buffer's lookup does)."""


def receipt_class(intake: Any, spooling: Any = None) -> type[Receipt]:
    """The class of ``intake``'s receipts, with the slots its options use: ``_cost``
    (``cost=`` read per record, set by the put), and, set as each is made: ``_seq``
    (spool mode: its sequence number in the spool, ``spooling.current``, read under
    the lock), ``_at`` (``ttl=``: when it was added), ``_size`` (a bytes budget: its
    size, which may refuse it with ``RecordError`` before the lock is taken)."""
    slots: tuple[str, ...] = ("_cost",) if intake._cost_of is not None else ()
    clock, ttl, size_of = intake._clock, intake.ttl, intake._size_of
    if spooling is None and ttl is None and size_of is None:
        return Receipt.bound(intake, slots)
    slots += ("_seq",) if spooling is not None else ()
    slots += ("_at",) if ttl is not None else ()
    slots += ("_size",) if size_of is not None else ()
    base = Receipt.bound(intake, slots)

    def more(r: Any, record: Any) -> None:  # the slots other than _size
        if spooling is not None:
            r._seq = spooling.current
        if ttl is not None:
            r._at = clock()

    init: Callable[[Any, Any, Any], None]
    if size_of is None:

        def init(r: Any, record: Any, version: Any) -> None:
            r.record, r.version = record, version
            if spooling is not None:
                r._seq = spooling.current
            if ttl is not None:
                r._at = clock()

    else:
        budget = intake.budget
        assert budget is not None
        init = sized_init(
            intake._size, budget.max_held, None if spooling is None and ttl is None else more
        )
    return type("Receipt", (base,), {"__slots__": (), "__init__": init})


Steps = tuple[Callable[[Any], None], Callable[[Any, Receipt, Receipt], Receipt],
              Callable[[Any, Receipt], Receipt]]  # fmt: skip
"""The steps a put takes under its lock once it knows what becomes of a record: remember a
new key, coalesce into a pending one, or apply ``when_full``."""


def make_put(
    intake: Any,
    room: bool = True,
    spill: collections.deque[tuple[Any, Receipt]] | None = None,
    steps: Callable[[Steps], Steps] | None = None,
) -> Callable[[Any], Receipt]:
    """Build ``intake``'s ``put_nowait``: a closure over its configuration and the (stable) pending
    dict, so the hot path reads locals instead of attributes.

    It takes a record, applying the overflow policy (``BufferFull`` under block/raise):
    one lock round trip, one Receipt, no clock read (except for the first record of a
    linger window), and no wake-up unless a trigger fires. The getters run before the
    lock is taken, so a slow or raising getter never holds it.

    ``room=False``: whatever the room (recovered records, accepted already once).
    ``spill``: append to that queue instead of the buffer (``when_full="spill"``).
    ``steps``: given the put's own steps (:data:`Steps`), the ones it takes instead, under
    the same lock (spool mode appends the record to the spool in each); built once, so a put
    without it runs exactly the same code.
    """
    pending = intake._pending
    remember = intake._order.append
    counts = intake.counts
    kfast, vfast, kslow, vslow = intake._kfast, intake._vfast, intake._key, intake._version
    acquire, release = intake._acquire, intake._release
    max_batch, max_pending = intake.max_batch, intake.max_pending
    keyless = intake._keyless
    new_receipt: type[Receipt] = intake._receipt_type
    uuid_type = uuid.UUID
    keyed, versioned = kfast is not None, vfast is not None
    kget = kfast if keyed else _NONE  # no key= / no version=: read as None, no branch
    vget = vfast if versioned else _NONE
    lookup = pending.get if spill is None else _NOTHING_PENDING  # spill mode: never coalesce
    cost_of = intake._cost_of
    to_spill = None if spill is None else spill.append
    coalesce: Callable[[Any, Receipt, Receipt], Receipt] = partial(coalesce_pending, intake)
    full: Callable[[Any, Receipt], Receipt] = intake._full
    spill_one = partial(spill_into, intake)  # (key, receipt, append) -> receipt
    if steps is not None:
        remember, coalesce, full = steps((remember, coalesce, full))
    budget = intake.budget  # max_pending_bytes / max_batch_bytes with size=
    max_held = None if budget is None else budget.max_held  # max_pending_bytes
    sizing = intake.estimate is not None  # without size=: max_pending and max_batch follow it
    resize = intake.resize
    countdown = 0  # records until the estimate measures one

    def put_nowait(record: Any) -> Receipt:
        nonlocal countdown
        # itemgetter (C) reads mapping records; anything else takes the slow getter.
        try:
            k = kget(record)
            v = vget(record)
        except (KeyError, TypeError, IndexError):
            k = kslow(record) if kslow is not None else None
            v = vslow(record) if vslow is not None else None
        if type(k) is uuid_type:
            k = k.int  # hashes ~5x faster, equal exactly when the UUIDs are
        if v is None:
            if versioned:
                raise RecordError(
                    "version is None: it cannot be ordered against the other versions "
                    "of its key (the buffer and the sinks would disagree on which is "
                    "newer); give every record a version"
                )
        else:
            try:
                nan = v != v
            except Exception as exc:
                raise RecordError(f"version of type {type(v).__name__} cannot be compared") from exc
            if nan:
                raise RecordError(
                    f"version {v!r} is not equal to itself (NaN?): it cannot be ordered, "
                    f"so no newer version could ever replace it; use a comparable version"
                )
        if k is None and keyed:
            raise RecordError("key is None: records are coalesced and upserted by key")
        if sizing:  # the default bytes estimate (resize() sets this put's max_pending too)
            countdown -= 1
            if countdown <= 0:
                countdown = resize(record)
        r = new_receipt(record, v)
        if cost_of is not None:
            r._cost = cost_of(record)  # type: ignore[misc]  # a slot of the bound subclass
        acquire()
        try:
            if intake._state != OPEN:
                raise not_open(intake._state)
            if k is None:
                k = next(keyless)
                old = None
            else:
                try:
                    old = lookup(k)
                except Exception as exc:  # unhashable, or a __hash__/__eq__ that raised
                    raise unhashable(k) from exc
            if old is not None:
                coalesce(k, old, r)
                if budget is None or intake._woken or not budget.full_batch():
                    return r
                # a larger record took the slot and max_batch_bytes are pending: wake
            elif to_spill is not None:  # counted as pending: Stats.pending holds the queue
                return spill_one(k, r, to_spill)
            else:
                n = len(pending)
                if (
                    n + counts.in_flight_held >= max_pending
                    or (
                        max_held is not None and budget.pending + budget.flying + r._size > max_held  # type: ignore[attr-defined]
                    )
                ) and room:
                    return full(k, r)
                pending[k] = r
                remember(k)
                counts.accepted += 1
                if budget is not None:
                    budget.pending += r._size  # type: ignore[attr-defined]
                if n == 0:
                    intake.oldest_at = intake._clock()
                    if intake._woken:
                        return r
                elif intake._woken or (
                    n + 1 < max_batch and (budget is None or not budget.full_batch())
                ):
                    return r
            intake._woken = True
        finally:
            release()
        intake.call_in_loop(intake._wake)
        return r

    def follow(most: int, batch: int) -> None:  # Intake.resize: the bounds in records changed
        nonlocal max_pending, max_batch
        max_pending, max_batch = most, batch

    if sizing:
        intake.limit_copies.append(follow)
    return put_nowait


def not_open(state: int) -> WriteBehindError:
    if state == NEW:
        return WriteBehindError(
            "the batcher is not started: use 'async with AsyncBatcher(...)' (or 'with "
            "Batcher(...)'), or call start() first"
        )
    if state == FORKED:
        return WriteBehindError(
            "this AsyncBatcher was started in the parent process: its event loop and records "
            "cannot cross os.fork(). Create a new batcher in the child (for example in a "
            "worker-init hook), or use the sync Batcher, which starts afresh in the child"
        )
    return BatcherClosed("the batcher is closed and takes no more records")


def unhashable(k: Any) -> RecordError:
    return RecordError(
        f"key of type {type(k).__name__} cannot be hashed and compared, so records cannot be "
        f"coalesced by it; use a field of str, int, UUID or a tuple of them"
    )
