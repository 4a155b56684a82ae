"""The batcher's options, declared once.

:class:`BatcherOptions` (a ``TypedDict``) is what ``AsyncBatcher(sink, **options)`` and
``Batcher(sink, **options)`` accept: with ``Unpack`` both signatures come from it, so a type
checker catches ``max_bach=5`` or ``linger="soon"`` in either API. :class:`Options` holds the
defaults and every check, and nothing else does: the engine reads its settings from the one
validated, frozen ``Options``. A test keeps the two in step.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypedDict

from ._capacity import Capacity
from ._clock import Clock, MonotonicClock
from ._cost import CostSpec, cost_getter
from ._deadletter import DeadLetterSpec
from ._errors import ConfigError
from ._instrument import Instrument
from ._keys import FieldSpec
from ._overflow import WHEN_FULL, WhenFull
from ._retry import RetryPolicy, check_number

if TYPE_CHECKING:
    from .spool import Spool

__all__ = ["BatcherOptions", "Options", "WhenFull"]


class BatcherOptions(TypedDict, total=False):
    """Every keyword option of ``AsyncBatcher`` and ``Batcher`` (see ``AsyncBatcher``)."""

    key: FieldSpec
    version: FieldSpec
    max_batch: int
    linger: float
    max_pending: int | None
    when_full: WhenFull
    max_in_flight: int
    write_timeout: float
    close_timeout: float
    retry: RetryPolicy | None
    dead_letter: DeadLetterSpec | None
    latency_target: float | None
    instruments: tuple[Instrument, ...] | list[Instrument]
    clock: Clock | None
    name: str
    event_buffer: int
    cost: CostSpec
    capacity: Capacity | None
    spool: str | os.PathLike[str] | Spool | None
    merge: Callable[[Any, Any], Any] | None
    ttl: float | None
    max_pending_bytes: int | None
    max_batch_bytes: int | None
    size: Callable[[Any], int] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What a batcher was configured with, validated (see ``AsyncBatcher``'s docstring).
    Every bad value raises ``ConfigError`` naming the option and what is allowed."""

    key: FieldSpec = None
    version: FieldSpec = None
    max_batch: int = 500
    linger: float = 5.0
    max_pending: int | None = None  # None: 5 x max_batch
    when_full: WhenFull = "block"
    max_in_flight: int = 1
    write_timeout: float = 30.0
    close_timeout: float = 15.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: DeadLetterSpec | None = None
    latency_target: float | None = None  # None: write_timeout / 2
    instruments: tuple[Instrument, ...] = ()
    clock: Clock = field(default_factory=MonotonicClock)
    name: str = "default"
    event_buffer: int = 4096
    cost: CostSpec = 1
    capacity: Capacity | None = None
    spool: str | os.PathLike[str] | Spool | None = None
    merge: Callable[[Any, Any], Any] | None = None  # None: the newer version replaces
    ttl: float | None = None  # seconds a record may stay pending; None: forever
    max_pending_bytes: int | None = None  # bytes held, pending and in flight; None: no bound
    max_batch_bytes: int | None = None  # bytes in one batch (and a flush trigger)
    size: Callable[[Any], int] | None = None  # a record's bytes; None: an estimate

    @classmethod
    def of(cls, options: dict[str, Any]) -> Options:
        """Options from keyword arguments; an unknown name is a ``ConfigError`` that names
        the nearest known one."""
        known = {f.name for f in fields(cls)}
        for name in options:
            if name not in known:
                near = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ConfigError(f"{name}: not an option of the batcher{hint}")
        if options.get("retry") is None:
            options = {k: v for k, v in options.items() if k != "retry"}
        if options.get("clock") is None:
            options = {k: v for k, v in options.items() if k != "clock"}
        return cls(**options)

    @property
    def pending_limit(self) -> int:
        """``max_pending`` with its default applied."""
        assert self.max_pending is not None  # set in __post_init__
        return self.max_pending

    def __post_init__(self) -> None:
        for arg in ("max_batch", "max_in_flight", "event_buffer"):
            _positive_int(arg, getattr(self, arg))
        if self.max_pending is None:
            object.__setattr__(self, "max_pending", 5 * self.max_batch)
        _positive_int("max_pending", self.max_pending)
        if self.pending_limit < self.max_batch:
            raise ConfigError(
                f"max_pending: must be >= max_batch ({self.max_batch}), got {self.max_pending}"
            )
        check_number("linger", self.linger, minimum=0)
        check_number("write_timeout", self.write_timeout, minimum=0, inclusive=False)
        # finite: exit waits for it (and a thread's wait cannot be infinite)
        check_number("close_timeout", self.close_timeout, minimum=0, inclusive=False, finite=True)
        if self.latency_target is None:
            object.__setattr__(self, "latency_target", self.write_timeout / 2)
        else:
            check_number("latency_target", self.latency_target, minimum=0, inclusive=False)
        if self.when_full == "spill" and self.spool is None:
            raise ConfigError(
                "when_full: 'spill' sends what does not fit in the buffer to a spool: give "
                "spool= a directory (or a writebehind.Spool)"
            )
        if self.spool is not None:
            from .spool import Spool

            spec = self.spool
            if not isinstance(spec, Spool) and not (
                isinstance(spec, str | os.PathLike) and os.fspath(spec)
            ):
                raise ConfigError(
                    f"spool: must be a directory path or a writebehind.Spool, got {spec!r}"
                )
        if self.when_full not in WHEN_FULL:
            raise ConfigError(
                f"when_full: must be one of {', '.join(WHEN_FULL)}; got {self.when_full!r}"
            )
        for arg in ("max_pending_bytes", "max_batch_bytes"):
            if getattr(self, arg) is not None:
                _positive_int(arg, getattr(self, arg))
        if self.size is not None:
            if not callable(self.size):
                raise ConfigError(
                    f"size: must be a function size(record) -> int, got {self.size!r}"
                )
            if self.max_pending_bytes is None and self.max_batch_bytes is None:
                raise ConfigError(
                    "size: measures records for max_pending_bytes or max_batch_bytes; give one"
                )
        for arg in ("max_pending_bytes", "max_batch_bytes"):
            if getattr(self, arg) is not None and self.spool is not None:
                raise ConfigError(
                    f"{arg}: not supported with spool= yet (the spool bounds itself with "
                    f"Spool(max_bytes=)); use max_pending and max_batch"
                )
        if self.ttl is not None:
            check_number("ttl", self.ttl, minimum=0, inclusive=False, finite=True)
        if self.merge is not None:
            if not callable(self.merge):
                raise ConfigError(
                    f"merge: must be a function merge(old, new) -> record, got {self.merge!r}"
                )
            if self.key is None:
                raise ConfigError("merge: needs a key (records with one key are merged)")
            if self.spool is not None:
                raise ConfigError(
                    "merge: cannot be combined with spool= yet: the spool marks a merged "
                    "record done when it is merged, so a crash would lose its part of the "
                    "sum; use merge= in memory mode"
                )
        if self.version is not None and self.key is None:
            raise ConfigError("version: needs a key (versions only order records with one key)")
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigError(f"retry: must be a writebehind.RetryPolicy, got {self.retry!r}")
        if not callable(getattr(self.clock, "monotonic", None)):
            raise ConfigError(f"clock: must be a writebehind.Clock, got {self.clock!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name: must be a non-empty string, got {self.name!r}")
        if self.capacity is not None and not isinstance(self.capacity, Capacity):
            raise ConfigError(
                f"capacity: must be a writebehind.ProvisionedCapacity or RedisSharedCapacity, "
                f"got {self.capacity!r}"
            )
        unit, _ = cost_getter(self.cost)  # raises ConfigError for a bad spec
        if self.capacity is not None and unit > self.capacity.max_cost:
            raise ConfigError(
                f"cost: every record costs {unit:g}, more than {self.capacity!r} could ever "
                f"grant in a second ({self.capacity.max_cost:g}); lower the cost or raise "
                f"the capacity"
            )
        try:
            object.__setattr__(self, "instruments", tuple(self.instruments))
        except TypeError:
            raise ConfigError(
                f"instruments: must be a list or tuple of instruments, got {self.instruments!r}"
            ) from None

    def costing(self) -> tuple[float, Callable[[Any], float] | None]:
        """``(unit, None)`` when every record costs ``unit``; else ``(0, cost_of)``, where
        ``cost_of(record)`` raises ``RecordError`` for a record the capacity could never
        grant (or whose cost is not a finite number >= 0)."""
        cap = self.capacity
        return cost_getter(self.cost, None if cap is None else cap.max_cost)


def _positive_int(arg: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{arg}: must be an integer >= 1, got {value!r}")
