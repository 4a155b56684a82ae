"""Dead letters: the records that can never be written, kept with why.

The engine builds one :class:`DeadLetterEntry` per condemned record and hands them, per
batch, to a :class:`DeadLetter` store when one is configured (``dead_letter=``): a SQLite
file, a table in PostgreSQL, or the user's callable (:class:`CallableDeadLetter`); with
none, they are counted, published and logged. The stores live in
:mod:`writebehind.dlq`; this module holds what the engine needs: the entry, the protocol,
the callable adaptor, and (re-exported from :mod:`._redact`) the scrubbing of secrets
from error messages.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._errors import ConfigError
from ._redact import scrub_secrets
from ._workers import WorkerThreads  # re-exported: the engine and integrations import it here

__all__ = [
    "CallableDeadLetter",
    "DeadLetter",
    "DeadLetterEntry",
    "DeadLetterSpec",
    "dead_letter_store",
    "scrub_secrets",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterEntry:
    """One record that can never be written, and why."""

    record: Any
    """The record as it was added."""
    error: str
    """The error's class name, e.g. ``PermanentSinkError``."""
    message: str
    """The error's message, secrets scrubbed (see :func:`scrub_secrets`)."""
    sink: str
    """Which sink refused it (the sink's ``repr``, which never shows a password)."""
    batcher: str
    """The batcher's ``name``."""
    attempts: int
    """Writes tried for the batch that held this record when it was condemned."""
    at: float
    """Wall-clock time (``time.time()``) when it was dead-lettered."""


@runtime_checkable
class DeadLetter(Protocol):
    """Where dead letters are kept. One async method; it may raise (the engine logs it and
    counts the records in ``stats().dead_letter_errors``)."""

    async def put(self, entries: Sequence[DeadLetterEntry]) -> None:
        """Keep ``entries`` (all from one batch) durably, or raise."""
        ...


class CallableDeadLetter:
    """Adapts ``fn(entries)`` (sync or async) to the :class:`DeadLetter` protocol. A sync
    function runs on a daemon worker thread of its own, so a slow one never stalls the
    event loop."""

    def __init__(self, fn: Callable[[list[DeadLetterEntry]], Awaitable[None] | None]) -> None:
        self.fn = fn
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self._threads: WorkerThreads | None = None

    async def put(self, entries: Sequence[DeadLetterEntry]) -> None:
        if self._async:
            result = self.fn(list(entries))
        else:
            if self._threads is None:
                self._threads = WorkerThreads(1, "writebehind-dead-letter")
            result = await self._threads.run(self.fn, list(entries))
        if inspect.isawaitable(result):
            await result

    def after_fork(self) -> None:
        self._threads = None

    def __repr__(self) -> str:
        return f"CallableDeadLetter({getattr(self.fn, '__qualname__', self.fn)!r})"


DeadLetterSpec = (
    DeadLetter | Callable[[list[DeadLetterEntry]], Awaitable[None] | None] | str | os.PathLike[str]
)
"""What ``AsyncBatcher(dead_letter=...)`` takes: a store, a callable, or a SQLite path."""


def sink_name(sink: Any) -> str:
    """How entries name the sink: its ``repr`` (sinks keep passwords out of it)."""
    try:
        return scrub_secrets(repr(sink))
    except Exception:
        return type(sink).__name__


def dead_letter_store(spec: DeadLetterSpec | None) -> DeadLetter | None:
    """The store ``dead_letter=`` names: a path is a ``SQLiteDeadLetter``, a store is itself,
    a callable is wrapped in ``CallableDeadLetter``; ``ConfigError`` for anything else."""
    if spec is None:
        return None
    if isinstance(spec, str | os.PathLike):
        from .dlq import SQLiteDeadLetter

        return SQLiteDeadLetter(spec)
    if callable(getattr(spec, "put", None)):
        return spec  # type: ignore[return-value]
    if callable(spec):
        return CallableDeadLetter(spec)
    raise ConfigError(
        f"dead_letter: must be a DeadLetter store (with an async put(entries) method), a "
        f"callable taking a list of DeadLetterEntry, a path to a SQLite file, or None; got "
        f"{spec!r}"
    )
