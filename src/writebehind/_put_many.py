"""``Intake.put_many``: a group of records taken in one lock round trip.

For producers that already hold a list (a request carrying 500 readings, a consumer reading
a stream). The per-record work that needs no lock runs first, over the whole group, at C
speed where it can (the key and version getters mapped over the list, the receipts made by
one ``map``): a record the buffer could never take (a key or version of None, a version not
equal to itself) refuses the whole group with ``RecordError`` naming its index, before any
record is taken. Then one lock round trip takes the records in order, each exactly as
``put_nowait`` would (coalescing, the overflow policy), and the flusher is woken at most
once.

A refusal found under the lock (the buffer full under ``block``/``raise``, an unhashable
key, versions that cannot be compared) stops the group there: the records before it stay
taken, and the error carries them (``exc.receipts``), so the caller knows exactly which.
Spool, spill and ``direct`` modes take the records one by one through ``put_nowait`` (each
record has its own spool append or direct write); the result is the same.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from ._coalesce import coalesce
from ._errors import BufferFull, RecordError, WriteBehindError

if TYPE_CHECKING:
    from ._receipt import Receipt

__all__ = [
    "add_group", "add_group_blocking", "checked_each", "group_steps", "make_put_many", "put_each",
]  # fmt: skip

_UUID = uuid.UUID
_LOOKUP = (KeyError, TypeError, IndexError)


def put_each(put: Callable[[Any], Receipt], records: Iterable[Any]) -> list[Receipt]:
    """Take ``records`` one by one with ``put``; a refusal carries those taken before it."""
    taken: list[Receipt] = []
    for record in records:
        try:
            taken.append(put(record))
        except WriteBehindError as exc:
            exc.receipts = taken  # type: ignore[attr-defined]
            raise
    return taken


def checked_each(
    intake: Any, put: Callable[[Any], Receipt]
) -> Callable[[Iterable[Any]], list[Receipt]]:
    """``put_many`` where each record is put alone (spool mode: one append each;
    ``when_full="direct"``: each may be written alone), after the checks
    :func:`make_put_many`'s makes over the whole group before it takes any: a key or version
    of None, or a version not equal to itself, refuses the group with ``RecordError``
    naming its index, nothing taken (``_intake.Intake``, typed loosely)."""
    key, version = intake._key, intake._version

    def put_many(records: Iterable[Any]) -> list[Receipt]:
        group = records if type(records) is list else list(records)
        try:
            if key is not None:
                _check_keys([key(r) for r in group])
            if version is not None:
                _check_versions([version(r) for r in group])
        except WriteBehindError as exc:
            exc.receipts = []  # type: ignore[attr-defined]
            raise
        return put_each(put, group)

    return put_many


def group_steps(
    put_many: Callable[[list[Any]], list[Receipt]], group: list[Any]
) -> Generator[Any, Receipt, list[Receipt]]:
    """``add_many`` without the waiting, for both APIs: takes what the buffer takes in one
    round trip; when it is full, yields the next record for the caller to add the way
    ``add()`` does (waiting for room under ``block``, raising under ``raise``), is sent its
    receipt, and goes on. Returns every receipt, in order; an error thrown in (or raised
    here) carries the receipts of the records taken before it (``exc.receipts``)."""
    taken: list[Receipt] = []
    rest = group
    while rest:
        try:
            taken.extend(put_many(rest))
            break
        except BufferFull as exc:
            got = exc.receipts  # type: ignore[attr-defined]
            taken.extend(got)
            rest = rest[len(got) :]
        except WriteBehindError as exc:
            exc.receipts = taken + getattr(exc, "receipts", [])  # type: ignore[attr-defined]
            raise
        try:
            r = yield rest[0]
        except BaseException as exc:  # a refusal, or the caller cancelled while it waited
            exc.receipts = taken  # type: ignore[attr-defined]
            raise
        taken.append(r)
        rest = rest[1:]
    return taken


def make_put_many(
    intake: Any, open_state: int, not_open: Callable[[int], WriteBehindError]
) -> Callable[[Iterable[Any]], list[Receipt]]:
    """Build ``put_many`` for a memory-mode ``_intake.Intake`` (typed loosely: that module
    imports this one): a closure over its configuration, as ``put_nowait`` is.
    ``open_state`` is the intake's open state, ``not_open(state)`` the error a put raises in
    any other."""
    kfast, vfast = intake._kfast, intake._vfast
    kslow, vslow = intake._key, intake._version
    pending = intake._pending
    remember = intake._order.append
    extend = intake._order.extend
    counts = intake.counts
    keyless = intake._keyless
    new_receipt = intake._receipt_type
    cost_of = intake._cost_of
    acquire, release = intake._acquire, intake._release
    budget = intake.budget  # max_pending_bytes / max_batch_bytes with size=
    estimate = intake.estimate  # without size=: max_pending and max_batch follow it

    def read(getter: Any, slow: Any, records: list[Any]) -> list[Any]:
        if getter is None:
            return [None] * len(records)
        try:
            return list(map(getter, records))  # C speed for mapping records
        except _LOOKUP:
            return [slow(r) for r in records]  # attribute records, or a mixed group

    def put_many(records: Iterable[Any]) -> list[Receipt]:
        group = records if type(records) is list else list(records)
        if not group:
            return []
        size = len(group)
        try:  # nothing is taken yet: a refusal here refuses the whole group
            keys = read(kfast, kslow, group)
            versions = read(vfast, vslow, group)
            if kfast is not None:
                keys = [k.int if type(k) is _UUID else k for k in keys]  # as put_nowait
                _check_keys(keys)
            if vfast is not None:
                _check_versions(versions)
            receipts = list(map(new_receipt, group, versions))
            if cost_of is not None:
                for r, record in zip(receipts, group, strict=True):
                    r._cost = cost_of(record)
            fresh: dict[Any, Receipt] | None = None
            if kfast is not None:
                try:  # the group's slots, if its keys are distinct (taken in bulk below)
                    fresh = dict(zip(keys, receipts, strict=True))
                except Exception:  # unhashable: refused under the lock, where it is found
                    fresh = None
                if fresh is not None and len(fresh) != size:
                    fresh = None
        except WriteBehindError as exc:
            exc.receipts = []  # type: ignore[attr-defined]
            raise
        wake = False
        taken = 0
        if estimate is not None:  # the default bytes estimate, before the lock
            _measure(intake, estimate, group)
        max_batch, max_pending = intake.max_batch, intake.max_pending
        acquire()
        try:
            if intake._state != open_state:
                raise not_open(intake._state)
            n0 = len(pending)
            if (
                fresh is not None
                and budget is None
                and n0 + counts.in_flight_held + size <= max_pending
                and pending.keys().isdisjoint(fresh)
            ):  # the usual group: new keys, room for all; as the loop below, in bulk
                pending.update(fresh)
                extend(keys)
                counts.accepted += size
                taken = size
                if n0 == 0:
                    intake.oldest_at = intake._clock()
                keys = []  # nothing left for the loop
            for k, r in zip(keys, receipts[taken:], strict=True):
                if k is None:
                    k = next(keyless)
                else:
                    try:
                        old = pending.get(k)
                    except Exception as exc:
                        raise RecordError(
                            f"records[{taken}]: the key {k!r} cannot be hashed; records "
                            f"before it were taken (see the error's receipts)"
                        ) from exc
                    if old is not None:
                        coalesce(intake, k, old, r)
                        taken += 1
                        continue
                n = len(pending)
                if n + counts.in_flight_held >= max_pending or (
                    budget is not None and not budget.fits(r._size)
                ):
                    intake._full(k, r)  # a drop policy takes it; block/raise refuse
                    taken += 1
                    continue
                pending[k] = r
                remember(k)
                counts.accepted += 1
                if budget is not None:
                    budget.pending += r._size
                taken += 1
                if n == 0:
                    intake.oldest_at = intake._clock()
            n1 = len(pending)
            full = n1 >= max_batch or (budget is not None and budget.full_batch())
            if not intake._woken and n1 and (n0 == 0 or full):
                intake._woken = wake = True
        except WriteBehindError as exc:
            exc.receipts = receipts[:taken]  # type: ignore[attr-defined]
            if len(pending) and not intake._woken:
                intake._woken = wake = True
            raise
        finally:
            release()
            if wake:
                intake.call_in_loop(intake._wake)
        return receipts

    return put_many


def _check_keys(keys: list[Any]) -> None:
    """Refuse a group holding a key of None."""
    try:
        if None not in keys:
            return
    except Exception:  # a key whose == raised: look for None the slow way
        pass
    for i, k in enumerate(keys):
        if k is None:
            raise RecordError(
                f"records[{i}]: key is None: records are coalesced and upserted by key; no "
                f"record of the group was taken"
            )


def _check_versions(versions: list[Any]) -> None:
    """Refuse a group holding a version that is None or not equal to itself (NaN)."""
    try:  # the usual group, at C speed where it can; the loop below names what is wrong
        if None not in versions and not [v for v in versions if v != v]:
            return
    except Exception:
        pass
    for i, v in enumerate(versions):
        if v is None:
            raise RecordError(
                f"records[{i}]: version is None: it cannot be ordered against the other "
                f"versions of its key; no record of the group was taken"
            )
        try:
            nan = v != v
        except Exception as exc:
            raise RecordError(
                f"records[{i}]: version of type {type(v).__name__} cannot be compared; no "
                f"record of the group was taken"
            ) from exc
        if nan:
            raise RecordError(
                f"records[{i}]: version {v!r} is not equal to itself (NaN?): it cannot be "
                f"ordered; no record of the group was taken"
            )


async def add_group(
    put_many: Callable[[list[Any]], list[Receipt]],
    add: Callable[..., Awaitable[Receipt]],
    records: Iterable[Any],
    timeout: float | None,
) -> list[Receipt]:
    """``AsyncBatcher.add_many``: :func:`group_steps`, each wait an ``await add(record)``
    within one deadline; in spool mode, then one wait until the last record is durable
    (the spool makes records durable in order)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    steps = group_steps(put_many, records if type(records) is list else list(records))
    try:
        record = next(steps)
        while True:
            try:
                r = await add(record, timeout=_left(deadline))
            except BaseException as exc:  # cancelled too: the error says what was taken
                steps.throw(exc)
                raise  # pragma: no cover - throw() raised it
            record = steps.send(r)
    except StopIteration as stop:
        taken: list[Receipt] = stop.value
    last = _last_spooled(taken)
    if last is not None:
        await last.durable()
    return taken


def add_group_blocking(
    put_many: Callable[[list[Any]], list[Receipt]],
    add: Callable[..., Receipt],
    records: Iterable[Any],
    timeout: float | None,
    wait_durable: Callable[[Receipt, float | None], bool] | None,
) -> list[Receipt]:
    """``Batcher.add_many``: the same steps, blocking this thread."""
    deadline = None if timeout is None else time.monotonic() + timeout
    steps = group_steps(put_many, records if type(records) is list else list(records))
    try:
        record = next(steps)
        while True:
            try:
                r = add(record, timeout=_left(deadline))
            except BaseException as exc:
                steps.throw(exc)
                raise  # pragma: no cover - throw() raised it
            record = steps.send(r)
    except StopIteration as stop:
        taken: list[Receipt] = stop.value
    last = _last_spooled(taken)
    if last is not None and wait_durable is not None:
        wait_durable(last, None)
    return taken


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _last_spooled(taken: list[Receipt]) -> Receipt | None:
    """The receipt of the group's last record appended to the spool (None: no spool)."""
    for r in reversed(taken):
        if getattr(r, "_seq", 0):
            return r
    return None


def _measure(intake: Any, estimate: Any, group: list[Any]) -> None:
    """The default size estimate for ``group``: measure its records at the estimate's
    cadence, counting on from the last group (``intake.resize`` sets the bounds in records
    they come to, and says when to measure next)."""
    i, size = estimate.countdown, len(group)
    while i < size:
        i += intake.resize(group[i])
    estimate.countdown = i - size
