"""The exception tree. Every error writebehind raises derives from one root::

    WriteBehindError
    ├── ConfigError          bad configuration: names the argument and what is allowed
    ├── RecordError          a record that cannot be taken: a missing key field, ...
    ├── BufferFull           no room under when_full="block"/"raise"; the caller keeps it
    ├── BatcherClosed        add() after close() began
    ├── SubscriberLagged     an events() reader fell too far behind (_events.py)
    ├── RecordNotReplayable  a dead letter stored as its repr (dlq/_codec.py)
    └── SinkError            a sink's write failed; ``retriable``: may trying again help?
        ├── RetriableSinkError   connection lost, timeout, throttled, deadlock, ...
        │   ├── WriteTimeout     no answer within ``write_timeout`` (outcome unknown)
        │   └── SinkMisconfigured  no record can cause it: table or column gone, privilege
        └── PermanentSinkError   bad data, constraint violation, unknown column, ...
            └── EntriesNotStored a dead-letter store kept some entries, not all (dlq/_store.py)

``ConfigError`` and ``RecordError`` are also ``ValueError``s.

Each sink maps its driver's errors into this tree in one place, with ``raise ... from exc``.
A usage error (``ConfigError``, ``RecordError``) is raised to the caller; a ``SinkError`` is
handled by the engine (retried, split, dead-lettered) and reaches the caller only as an
``Outcome`` and in ``stats()``.
"""

from __future__ import annotations

__all__ = [
    "BatcherClosed",
    "BufferFull",
    "ConfigError",
    "PermanentSinkError",
    "RecordError",
    "RetriableSinkError",
    "SinkError",
    "SinkMisconfigured",
    "WriteBehindError",
    "WriteTimeout",
]


class WriteBehindError(Exception):
    """Root of every error writebehind raises."""


class ConfigError(WriteBehindError, ValueError):
    """A configuration value is not allowed; the message names the argument and what is."""


class RecordError(WriteBehindError, ValueError):
    """A record cannot be accepted (for example it lacks the key field). It was not accepted."""


class BufferFull(WriteBehindError):
    """The buffer holds ``max_pending`` records and the policy refuses to wait.

    The record was not accepted: the caller still has it.
    """


class BatcherClosed(WriteBehindError):
    """The batcher is closing or closed and takes no more records."""


class SinkError(WriteBehindError):
    """A sink's write failed.

    ``retriable`` is True when the same batch may succeed if written again (the engine retries
    it with backoff), False when it never will (the engine splits the batch to isolate the bad
    records and dead-letters them).
    """

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class RetriableSinkError(SinkError):
    """A failure that may pass: connection lost, timeout, deadlock, throttling.

    ``retry_after`` (seconds), when set, is the sink's own hint of how long to wait.
    """

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retriable=True)
        self.retry_after = retry_after


class WriteTimeout(RetriableSinkError):
    """The write did not finish within ``write_timeout``; it may or may not have committed."""


class SinkMisconfigured(RetriableSinkError):
    """The sink cannot take *any* record as it stands: its table or a column was dropped or
    retyped, or the login lost a privilege. No record caused it, so the batch is not split
    to hunt for a bad one: the batcher pauses as failing and retries with backoff (logged as
    a configuration problem) until an operator repairs the schema or ``max_attempts`` is
    used up."""


class PermanentSinkError(SinkError):
    """A failure that writing the same records again cannot fix: bad data, a constraint, ..."""

    retriable = False

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


def would_deadlock(what: str) -> WriteBehindError:
    """The error for a blocking call made on the batcher's own event-loop thread."""
    return WriteBehindError(
        f"{what} called on the batcher's own event-loop thread (from a sink, a hook or a "
        f"callback?) would deadlock: it blocks the loop it waits for. Use the non-blocking "
        f"form there (add_nowait(), or 'await' on an AsyncBatcher)"
    )
