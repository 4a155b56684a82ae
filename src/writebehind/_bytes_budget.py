"""``max_pending_bytes`` and ``max_batch_bytes``: bounds in bytes beside the bounds in records.

Two ways to keep them, chosen by whether the user measures records:

- With ``size=fn(record)``, each record's size is taken once, as it is added, and kept on its
  receipt. :class:`BytesBudget` keeps the bytes held, pending and in flight, changed only
  under the intake's lock (the intake calls it wherever records enter or leave the buffer):
  a record that would take the held bytes over ``max_pending_bytes`` finds the buffer full
  and the overflow policy applies, as it does at ``max_pending`` records.
- Without, the default :class:`SizeEstimate` measures one record in 128 (more often under
  a tight bound) and turns the bounds in bytes into bounds in records (``max_pending_bytes //
  mean size``), which the hot path checks already: the estimate costs a countdown.

Either way the memory bound of DESIGN.md §5 (invariant 3) holds in bytes as in records. With
``size=``, a record larger than the whole budget could never fit, so it is refused with
``RecordError``.

``max_batch_bytes`` is a flush trigger and a cap: a batch is cut as soon as that many bytes
are pending, and a batch holds no more than that (at least one record), for stores that cap
a statement or a request by size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._errors import ConfigError, RecordError

__all__ = [
    "BytesBudget",
    "SizeEstimate",
    "bounds",
    "checked_size",
    "estimate",
    "measured",
    "sized_init",
]

_sizeof = sys.getsizeof


def estimate(record: Any) -> int:
    """A record's size as the default measures a sample of them: ``sys.getsizeof`` of the
    record and of each of its fields (one level deep: a mapping's values, a dataclass's or
    plain object's attributes, a tuple's items). An estimate of the memory it holds, not of
    its encoding."""
    n = _sizeof(record)
    if type(record) is dict or isinstance(record, Mapping):
        return n + sum(map(_sizeof, record.values()))
    if isinstance(record, tuple):
        return n + sum(map(_sizeof, record))
    kind = type(record)
    names = getattr(kind, "__struct_fields__", None)
    slots = tuple(names) if names is not None else _SLOTS.get(kind) or _slots(kind)
    fields = getattr(record, "__dict__", None)
    if fields is not None:  # a plain object's attributes (beside any slots of its bases)
        n += sum(map(_sizeof, fields.values()))
    return n + sum(_sizeof(getattr(record, s, None)) for s in slots)


_SLOTS: dict[type, tuple[str, ...]] = {}
"""The slot names of each record type measured (see :func:`_slots`)."""


def _slots(kind: type) -> tuple[str, ...]:
    """The slots of ``kind`` and of its bases (a subclass's ``__slots__`` names only its
    own: a ``dataclass(slots=True)`` subclass keeps its base's fields in the base's slots),
    without ``__dict__`` and ``__weakref__``."""
    found: dict[str, None] = {}
    for base in kind.__mro__:
        names = base.__dict__.get("__slots__", ())
        for s in (names,) if isinstance(names, str) else names:
            if s in ("__dict__", "__weakref__"):
                continue
            if s.startswith("__") and not s.endswith("__"):  # private: stored mangled
                s = f"_{base.__name__.lstrip('_')}{s}"
            found[s] = None
    names = tuple(found)
    if len(_SLOTS) < 256:  # a few record types; never grows without bound
        _SLOTS[kind] = names
    return names


class SizeEstimate:
    """The default size (no ``size=``), nearly free on the hot path: the bounds in bytes become
    bounds in records. Every ``every``-th record added (the first, then every quarter of
    the tighter bound in records, and at least every ``EVERY``-th) is
    measured with :func:`estimate` before it is taken, outside the lock; the mean of those
    measured turns ``max_pending_bytes`` into a most records held (``max_pending_bytes //
    mean``, and never more than ``max_pending``) and ``max_batch_bytes`` into a most records
    per batch. The mean follows a larger record at once and a smaller one slowly (a moving
    average), so a stream whose records grow tightens the bound at the first one measured.
    No size is kept per record, and the bytes held are the records held times the mean. An
    estimate of the total, not of each record: a stream with rare large records, records
    that grow by ``merge=``, or a need to refuse a record for its own size, needs ``size=``.
    Races between threads only blur the estimate."""

    EVERY = 128
    __slots__ = ("countdown", "max_batch", "max_batch_bytes", "max_held", "max_pending", "mean")

    def __init__(
        self, max_held: int | None, max_batch_bytes: int | None, max_pending: int, max_batch: int
    ) -> None:
        self.max_held = max_held  # max_pending_bytes
        self.max_batch_bytes = max_batch_bytes
        self.max_pending = max_pending  # the bounds in records, as configured
        self.max_batch = max_batch
        self.mean = 0
        self.countdown = 0  # add_many's count of records until the next one measured

    def observe(self, record: Any) -> tuple[int, int, int]:
        """Measure ``record`` (it never raises; a record that cannot be measured leaves the
        mean as it was): the most records held and the most per batch at the new mean, and
        how many records to add before the next is measured."""
        try:
            n = estimate(record)
        except Exception:  # a __sizeof__ that raises: the estimate stays
            if not self.mean:  # nothing measured yet: the bounds stay as configured, and
                return self.max_pending, self.max_batch, 1  # the next record is a first
            n = self.mean
        mean = n if n > self.mean else (7 * self.mean + n) // 8  # up at once, down slowly
        self.mean = mean = mean if mean > 0 else 1
        most = self.max_pending
        if self.max_held is not None and self.max_held // mean < most:
            most = self.max_held // mean or 1
        batch = self.max_batch if self.max_batch < most else most  # full by bytes: a batch
        if self.max_batch_bytes is not None and self.max_batch_bytes // mean < batch:
            batch = self.max_batch_bytes // mean or 1
        tight = min(most, batch)  # measured often enough that a jump shows within the bound
        return most, batch, max(1, min(self.EVERY, tight // 4))

    def held(self, records: int) -> int:
        """The bytes ``records`` records hold, by the estimate."""
        return records * self.mean


def bounds(
    max_pending_bytes: int | None,
    max_batch_bytes: int | None,
    size: Callable[[Any], int] | None,
    max_pending: int,
    max_batch: int,
) -> tuple[BytesBudget | None, SizeEstimate | None]:
    """What keeps an intake's bounds in bytes: a :class:`BytesBudget` with ``size=``, a
    :class:`SizeEstimate` without; neither without bounds in bytes."""
    if max_pending_bytes is None and max_batch_bytes is None:
        return None, None
    if (
        max_pending_bytes is not None
        and max_batch_bytes is not None
        and max_batch_bytes > max_pending_bytes
    ):
        raise ConfigError(
            f"max_batch_bytes: must be <= max_pending_bytes ({max_pending_bytes}), got "
            f"{max_batch_bytes}"
        )
    if size is not None:
        return BytesBudget(max_pending_bytes, max_batch_bytes), None
    return None, SizeEstimate(max_pending_bytes, max_batch_bytes, max_pending, max_batch)


def checked_size(n: Any, limit: int | None) -> int:
    """``n`` if it is a size a record may have (an int >= 0, at most ``limit``, the whole
    ``max_pending_bytes``); ``RecordError`` otherwise, naming what to do."""
    if type(n) is not int or n < 0:
        raise RecordError(f"size: must return an int >= 0 (bytes), returned {n!r}")
    if limit is not None and n > limit:
        raise RecordError(
            f"record of {n} bytes is larger than max_pending_bytes ({limit}): it could never "
            f"fit in the buffer; raise max_pending_bytes or split the record"
        )
    return n


def measured(size: Callable[[Any], int], limit: int | None) -> Callable[[Any], int]:
    """What a record counts: ``size(record)``, checked."""

    def size_of(record: Any) -> int:
        try:
            n = size(record)
        except Exception as exc:
            raise RecordError(f"size: {type(exc).__name__}: {exc}") from exc
        return checked_size(n, limit)

    return size_of


def sized_init(
    size: Callable[[Any], int], limit: int | None, more: Callable[[Any, Any], None] | None
) -> Callable[[Any, Any, Any], None]:
    """A receipt ``__init__`` that stores the record, its version and its ``_size`` (the
    user's ``size(record)``, checked; then calls ``more(r, record)`` for the other slots, if
    any). Inlined: it runs once per add."""
    top = limit if limit is not None else sys.maxsize

    def init_exact(r: Any, record: Any, version: Any) -> None:
        r.record, r.version = record, version
        try:
            n = size(record)
        except Exception as exc:
            raise RecordError(f"size: {type(exc).__name__}: {exc}") from exc
        if type(n) is not int or not 0 <= n <= top:
            n = checked_size(n, limit)
        r._size = n
        if more is not None:
            more(r, record)

    return init_exact


class BytesBudget:
    """With ``size=``: the bytes held by one intake, pending and in flight (changed under
    its lock; each receipt keeps its ``_size``)."""

    __slots__ = ("flying", "max_batch", "max_held", "pending")

    def __init__(self, max_held: int | None, max_batch: int | None) -> None:
        self.max_held = max_held
        self.max_batch = max_batch
        self.pending = 0
        self.flying = 0

    def fits(self, size: int) -> bool:
        """Whether one more record of ``size`` bytes stays within ``max_pending_bytes``."""
        return self.max_held is None or self.pending + self.flying + size <= self.max_held

    def full_batch(self) -> bool:
        """Whether ``max_batch_bytes`` are pending: cut a batch now."""
        return self.max_batch is not None and self.pending >= self.max_batch

    def batch_fit(self, sizes: Iterable[int], n: int) -> int:
        """How many of the oldest ``n`` pending records (``sizes``, oldest first) one batch
        takes: no more than ``max_batch_bytes`` together, and at least one."""
        if self.max_batch is None:
            return n
        total, k = 0, 0
        for s in sizes:
            if k >= n or (k and total + s > self.max_batch):
                break
            total += s
            k += 1
        return k

    def cut(self, size: int) -> None:
        """Records of ``size`` bytes together went from pending to in flight."""
        self.pending -= size
        self.flying += size

    def held(self) -> int:
        return self.pending + self.flying
