"""Instruments: per-batch hooks for metrics and tracing (trio's ``Instrument``, for writes).

An instrument is any object with a ``write(attempt)`` method that returns a context manager.
The engine enters it around every sink write attempt (never per record), so a tracer can
make its span current while the sink runs (driver spans nest under it) and see the error if
the write raises. After the attempt, and before the context exits, the engine fills in
``attempt.outcome``, ``attempt.error`` and ``attempt.duration``. With no instruments the
engine does no instrument work at all.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Instrument", "WriteAttempt"]


@dataclass(slots=True, kw_only=True)
class WriteAttempt:
    """One sink write attempt, as instruments see it."""

    batcher: str
    """The batcher's ``name`` (its lane)."""
    sink: str
    """The sink's ``repr``."""
    size: int
    """Records in this write."""
    attempt: int
    """1 for the first try of these records, 2 for the first retry, ..."""
    reason: str
    """Why the batch was cut: ``size``, ``linger``, ``flush``, ``close`` or ``direct``."""
    outcome: str = "pending"
    """Set when the attempt ends: ``committed``; ``retry`` (a retriable error, including a
    :class:`~writebehind.WriteTimeout`; it will be tried again); ``split`` (a permanent error,
    the batch is halved); ``dead_lettered``; or ``cancelled`` (close gave up on it)."""
    error: BaseException | None = None
    """The error the write raised, if any."""
    duration: float = 0.0
    """Seconds the attempt took."""


@runtime_checkable
class Instrument(Protocol):
    """Sees every sink write attempt. Keep ``write()`` cheap: it runs on the event loop."""

    def write(self, attempt: WriteAttempt) -> AbstractContextManager[Any]:
        """A context manager entered just before the sink write and exited after it."""
        ...
