"""The Sink protocol: one required async method.

Any object with ``async def write(self, batch: list) -> None`` is a sink. ``write`` either
commits the whole batch or raises: a :class:`~writebehind.SinkError` whose ``retriable``
says whether trying again can help (other exceptions are classified by
:func:`writebehind._retry.is_retriable`). Optional hooks, called when present:
``async start()`` when the batcher starts (raise ``ConfigError`` there for a missing table),
and ``async close()`` when it closes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Sink"]


@runtime_checkable
class Sink(Protocol):
    """Where batches land."""

    async def write(self, batch: list[Any]) -> None:
        """Write every record of ``batch`` in one transaction, or raise."""
        ...
