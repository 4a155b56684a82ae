"""A record whose key is pending: which of the two stays, or what ``merge=`` makes of them.

The newer version stays (the later add on a tie, or when there is no version); the other is
superseded: counted ``coalesced``, its receipt following the winner's. With ``merge=``, the
merge of the two (given in version order) takes the slot. With ``size=`` and
``max_pending_bytes``, a record that grows the slot past the budget meets ``when_full``
(:func:`grown_full`). Every function here runs under the intake's lock, on an
``_intake.Intake`` (typed loosely: that module imports this one).
"""

from __future__ import annotations

from typing import Any

from ._errors import RecordError
from ._overflow import drop_oldest, dropped_new, log_drops, notice_full
from ._receipt import Receipt

__all__ = ["coalesce", "grown_full", "newer", "supersede"]


def coalesce(intake: Any, k: Any, old: Receipt, r: Receipt) -> Receipt:
    """``r`` has the key of the pending ``old``: the newer (or later, on a tie) stays;
    with ``merge=``, ``merge(old, new)`` takes the place of both."""
    if intake._merge is not None:
        return _merged(intake, k, old, r)
    wins = newer(r, old)
    if wins and intake.budget is not None and _grows_past_budget(intake, old, r):
        return grown_full(intake, k, old, r)
    intake.counts.accepted += 1
    return supersede(intake, k, old, r, wins)


def _grows_past_budget(intake: Any, old: Receipt, r: Receipt) -> bool:
    """Whether ``r`` taking ``old``'s slot needs more bytes than ``max_pending_bytes``
    leaves (a coalescing record is taken whatever the count, not whatever the bytes)."""
    budget = intake.budget
    if budget is None or budget.max_held is None:
        return False
    grow: int = r._size - old._size  # type: ignore[attr-defined]
    return grow > 0 and not budget.fits(grow)


def _merged(intake: Any, k: Any, old: Receipt, r: Receipt) -> Receipt:
    """``merge=``: ``r`` takes the merge of the two records, given in version order (the
    older version first; a tie, or no version, in arrival order). Lock held; a merge
    that raises, or returns what the buffer could not take (None, another key, a
    version of None or NaN), refuses ``r`` with ``RecordError``; ``old`` stays."""
    assert intake._merge is not None
    first, then = (r, old) if not newer(r, old) else (old, r)
    try:
        merged = intake._merge(first.record, then.record)
        if merged is None:
            raise TypeError("merge returned None")
        version = intake._version(merged) if intake._version is not None else None
        if intake.key_of(merged) != k:
            raise ValueError("merge returned a record of another key")
        if intake._version is not None and (version is None or version != version):
            raise ValueError(f"merge returned a record of version {version!r}")
        size = None if intake._size_of is None else intake._size_of(merged)
    except Exception as exc:
        raise RecordError(
            f"merge raised {type(exc).__name__}: {exc} (key {k!r}); the record was not "
            f"accepted, the pending one is unchanged"
        ) from exc
    was = r.record, r.version, getattr(r, "_size", None)
    r.record, r.version = merged, version
    if size is not None:
        r._size = size  # type: ignore[attr-defined]  # what the buffer holds now
    if _grows_past_budget(intake, old, r):
        r.record, r.version = was[0], was[1]
        if was[2] is not None:
            r._size = was[2]  # type: ignore[attr-defined]
        return grown_full(intake, k, old, r, merged=(merged, version, size))
    intake.counts.accepted += 1
    return supersede(intake, k, old, r, True)


def supersede(intake: Any, k: Any, old: Receipt, r: Receipt, newer: bool) -> Receipt:
    """``r`` and the pending ``old`` share key ``k``: the loser is superseded (lock held)."""
    intake.counts.coalesced += 1
    if newer:
        old._succ = r
        intake._pending[k] = r
        if intake.budget is not None:
            intake.budget.pending += r._size - old._size  # type: ignore[attr-defined]
    else:
        r._succ = old
    if intake.on_done is not None:  # the superseded record's fate is final
        intake.on_done([old if newer else r])
    return r


def grown_full(
    intake: Any, k: Any, old: Receipt, r: Receipt, merged: tuple[Any, Any, Any] | None = None
) -> Receipt:
    """Apply ``when_full`` to ``r``, which would take the slot of the pending ``old`` (key
    ``k``) but needs more bytes than ``max_pending_bytes`` leaves (a larger record, or with
    ``merge=`` a merged one: ``merged`` is the record, version and size it would hold).
    ``block``/``raise``/``direct`` refuse (``BufferFull``: ``old`` stays); ``drop_newest``
    drops ``r``; ``drop_oldest`` drops the oldest other records while that makes room, then
    takes ``r`` (or drops it, if it still does not fit). Lock held."""
    notice_full(intake)
    budget = intake.budget
    policy = intake.when_full
    if policy not in ("drop_newest", "drop_oldest"):
        raise intake.refusal()
    intake.counts.accepted += 1
    size = r._size if merged is None or merged[2] is None else merged[2]  # type: ignore[attr-defined]
    grow = size - old._size  # type: ignore[attr-defined]
    if policy == "drop_oldest" and budget.flying + (grow + old._size) <= budget.max_held:  # type: ignore[attr-defined]
        order = intake._order
        while not budget.fits(grow) and order and order[0] != k:
            drop_oldest(intake)
        if budget.fits(grow):
            if merged is not None:
                r.record, r.version = merged[0], merged[1]
                r._size = size  # type: ignore[attr-defined]
            supersede(intake, k, old, r, True)
            log_drops(intake)
            return r
    dropped_new(intake, r)
    log_drops(intake)
    return r


def newer(r: Receipt, old: Receipt) -> bool:
    """Whether ``r`` wins ``old``'s slot by version (newer or equal; no version: yes)."""
    try:
        return bool(r.version is None or r.version >= old.version)
    except Exception as exc:  # not comparable, or a comparison that raised
        raise RecordError(f"versions {r.version!r} and {old.version!r} cannot be compared") from exc
