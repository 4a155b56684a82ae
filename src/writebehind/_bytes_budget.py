"""``max_pending_bytes`` and ``max_batch_bytes``: bounds in bytes beside the bounds in records.

A record's size is measured once, as it is added (``size=fn(record)``, or :func:`estimate`),
and kept on its receipt. :class:`BytesBudget` keeps the bytes held, pending and in flight,
changed only under the intake's lock (the intake calls it wherever records enter or leave
the buffer), so the memory bound of DESIGN.md §5 (invariant 3) holds in bytes as in records:
a record that would take the held bytes over ``max_pending_bytes`` finds the buffer full and
the overflow policy applies, as it does at ``max_pending`` records. A record larger than the
whole budget could never fit, and is refused with ``RecordError``.

``max_batch_bytes`` is a flush trigger and a cap: a batch is cut as soon as that many bytes
are pending, and a batch holds no more than that (at least one record), for stores that cap
a statement or a request by size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._errors import ConfigError, RecordError

__all__ = ["BytesBudget", "estimate", "size_getter"]

_sizeof = sys.getsizeof


def estimate(record: Any) -> int:
    """The default size of a record: ``sys.getsizeof`` of the record and of each of its
    fields (one level deep: a mapping's values, a dataclass's or plain object's attributes,
    a tuple's items). An estimate of the memory it holds, not of its encoding; pass
    ``size=`` for the exact figure a store caps (``len(json.dumps(r))``, say)."""
    n = _sizeof(record)
    if isinstance(record, Mapping):
        return n + sum(map(_sizeof, record.values()))
    if isinstance(record, tuple):
        return n + sum(map(_sizeof, record))
    fields = getattr(record, "__dict__", None)
    if fields is not None:
        return n + sum(map(_sizeof, fields.values()))
    kind = type(record)
    names = getattr(kind, "__struct_fields__", None) or getattr(kind, "__slots__", None) or ()
    slots: tuple[str, ...] = (names,) if isinstance(names, str) else tuple(names)
    return n + sum(_sizeof(getattr(record, s, None)) for s in slots)


def size_getter(size: Callable[[Any], int] | None, limit: int | None) -> Callable[[Any], int]:
    """``size`` (or :func:`estimate`), checked: an int >= 0, and no more than ``limit`` (the
    whole ``max_pending_bytes``); ``RecordError`` otherwise, naming what to do."""
    measure = estimate if size is None else size

    def size_of(record: Any) -> int:
        try:
            n = measure(record)
        except Exception as exc:
            raise RecordError(f"size: {type(exc).__name__}: {exc}") from exc
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise RecordError(f"size: must return an int >= 0 (bytes), returned {n!r}")
        if limit is not None and n > limit:
            raise RecordError(
                f"record of {n} bytes is larger than max_pending_bytes ({limit}): it could "
                f"never fit in the buffer; raise max_pending_bytes or split the record"
            )
        return n

    return size_of


class BytesBudget:
    """The bytes held by one intake, pending and in flight (changed under its lock)."""

    __slots__ = ("flying", "max_batch", "max_held", "pending")

    def __init__(self, max_held: int | None, max_batch: int | None) -> None:
        self.max_held = max_held
        self.max_batch = max_batch
        self.pending = 0
        self.flying = 0

    @classmethod
    def of(cls, max_pending_bytes: int | None, max_batch_bytes: int | None) -> BytesBudget | None:
        if max_pending_bytes is None and max_batch_bytes is None:
            return None
        if (
            max_pending_bytes is not None
            and max_batch_bytes is not None
            and max_batch_bytes > max_pending_bytes
        ):
            raise ConfigError(
                f"max_batch_bytes: must be <= max_pending_bytes ({max_pending_bytes}), got "
                f"{max_batch_bytes}"
            )
        return cls(max_pending_bytes, max_batch_bytes)

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
