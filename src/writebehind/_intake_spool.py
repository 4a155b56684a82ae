"""What an intake does in spool mode (``spool=``): the hooks it takes from the spool, and the
checks a spooled put makes before it appends.

A record is appended to the spool before the buffer takes it, so a spooled put first asks
whether the buffer would take it (:func:`would_take`); a record the drop policies take when
the spool is full is accepted and dropped at once (:func:`drop_new`). On an
``_intake.Intake`` (typed loosely: that module imports this one).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ._overflow import dropped_new, log_drops
from ._put_many import checked_each
from ._put_one import OPEN, Steps, make_put, not_open, receipt_class
from ._receipt import Receipt
from ._room import full_for

__all__ = ["drop_new", "spooled_steps", "use_spool", "would_take"]

_NEVER_REFUSE = ("drop_newest", "drop_oldest")  # policies that take every record


def use_spool(intake: Any, spooling: Any) -> Callable[[Any], Receipt]:
    """Spool mode (``spooling``: a ``_spooling.Spooling``; typed loosely, as it imports
    this module): receipts take their record's sequence number (``spooling.current``,
    read as each is made, under the lock); ``spooling.done`` hears of every final fate.
    Returns the put that takes recovered records whatever the room (they were accepted
    already)."""
    intake._receipt_type = receipt_class(intake, spooling)
    intake.on_done, intake.is_durable = spooling.done, spooling.is_durable
    intake.wait_durable, intake.spool_full = spooling.durable, spooling.full
    recovered = make_put(intake, room=False)
    if intake.when_full == "spill":  # memory first; the spool takes what does not fit
        intake.spilled = collections.deque()
        intake.put_nowait = spooling.wrap_spill(
            make_put(intake), make_put(intake, spill=intake.spilled), intake
        )
    else:
        drops = intake.when_full in _NEVER_REFUSE
        put = make_put(intake, steps=spooled_steps(intake, spooling, drops))  # appends, locked
        intake.put_nowait = spooling.wrap(put, intake, drops)
    intake.put_many = checked_each(intake, intake.put_nowait)  # one spool append per record
    return recovered


def spooled_steps(intake: Any, spooling: Any, drops: bool) -> Callable[[Steps], Steps]:
    """The steps of a spooled put (see ``_put_one.make_put``): each appends the record being
    put (``spooling.taking``: the log and the encoded record, set by ``Spooling.wrap``'s put)
    to the spool under the buffer's lock, once it knows the buffer takes it, and the receipt
    takes the seq: one lock round trip and one room check per add, not two. A record the
    buffer refuses (full, and not ``drop_*``) is never appended; one refused after its append
    (a ``when_full`` that finds no room after all) is marked done at once."""

    def append() -> tuple[Any, int]:
        taking = spooling.taking
        assert taking is not None  # only the spooled put calls these steps
        spool_log, payload = taking
        return spool_log, spool_log.append_encoded(payload)

    def spooled(own: Steps) -> Steps:
        remember, coalesce, full = own
        pending = intake._pending

        def remember_spooled(k: Any) -> None:  # a new key: pending[k] is its receipt
            try:
                _, seq = append()
            except BaseException:
                del pending[k]  # SpoolFull, SpoolClosed: not taken after all
                raise
            pending[k]._seq = seq
            remember(k)
            spooling.last = seq

        def coalesce_spooled(k: Any, old: Receipt, r: Receipt) -> Receipt:
            spool_log, seq = append()
            r._seq = seq  # type: ignore[misc]  # a slot of the spooled receipts
            try:
                out = coalesce(k, old, r)
            except BaseException:
                spool_log.done((seq,))
                raise
            spooling.last = seq
            return out

        def full_spooled(k: Any, r: Receipt) -> Receipt:
            if not drops and full_for(intake, intake.when_full):
                raise intake.refusal()  # refused here: never in the spool
            spool_log, seq = append()
            r._seq = seq  # type: ignore[misc]
            try:
                out = full(k, r)  # drop_* or a direct write takes it
            except BaseException:
                spool_log.done((seq,))  # refused after all: never delivered
                raise
            spooling.last = seq
            return out

        return remember_spooled, coalesce_spooled, full_spooled

    return spooled


def would_take(intake: Any, record: Any) -> bool:
    """Whether a put would take ``record`` now (what a spooled put checks before it
    appends): there is room under ``when_full``, or its key is pending (it coalesces)."""
    with intake.locked():
        if not full_for(intake, intake.when_full):
            return True
    try:
        k = intake.identity(record)[0]
    except Exception:  # the put raises the record's own error
        return True
    with intake.locked():
        try:
            return k is not None and k in intake._pending
        except Exception:
            return True


def drop_new(intake: Any, record: Any) -> Receipt:
    """Take ``record`` and drop it at once (``drop_*`` policies when the spool is full:
    accepted, counted ``dropped``, never written)."""
    r: Receipt = intake._receipt_type(record, None)
    with intake.locked():
        if intake._state != OPEN:
            raise not_open(intake._state)
        intake.counts.accepted += 1
        dropped_new(intake, r)
        intake._filled_since = True
        if not intake._notice:
            intake._notice = True
            intake.call_in_loop(intake._wake)
        log_drops(intake)
    return r
