"""``CallableSink``: a user's function, sync or async, as a sink."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError

__all__ = ["CallableSink"]


class CallableSink:
    """Call ``fn(batch)`` for each batch.

    An ``async def`` function is awaited on the event loop. A plain function runs in a worker
    thread (``asyncio.to_thread``) so it cannot block the loop; pass ``in_thread=False`` for
    a fast, non-blocking sync function to call it on the loop directly. Raise
    :class:`writebehind.RetriableSinkError` or :class:`writebehind.PermanentSinkError` to
    say how a failure should be handled.
    """

    def __init__(self, fn: Callable[[list[Any]], Any], *, in_thread: bool = True) -> None:
        if not callable(fn):
            raise ConfigError(f"fn: must be a function taking a list of records, got {fn!r}")
        self.fn = fn
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self.in_thread = in_thread

    def __repr__(self) -> str:
        return f"CallableSink({getattr(self.fn, '__qualname__', self.fn)!r})"

    async def write(self, batch: list[Any]) -> None:
        if self._async:
            await self.fn(batch)
        elif self.in_thread:
            await asyncio.to_thread(self.fn, batch)
        else:
            result = self.fn(batch)
            if inspect.isawaitable(result):
                await result
