"""``CallableSink``: a user's function, sync or async, as a sink."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError
from .._workers import WorkerThreads

__all__ = ["CallableSink"]


class CallableSink:
    """Call ``fn(batch)`` for each batch.

    An ``async def`` function is awaited on the event loop. A plain function runs in a worker
    thread of the sink's own (``threads`` of them, default 1, daemon threads: a call that
    hangs never starves the loop's default executor nor holds up interpreter exit) so it
    cannot block the loop; pass ``in_thread=False`` for a fast, non-blocking sync function
    to call it on the loop directly. A call abandoned at ``write_timeout`` or at the close
    deadline runs on to its end on its thread: make such a function idempotent. Raise
    :class:`writebehind.RetriableSinkError` or :class:`writebehind.PermanentSinkError` to
    say how a failure should be handled.
    """

    def __init__(
        self, fn: Callable[[list[Any]], Any], *, in_thread: bool = True, threads: int = 1
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"fn: must be a function taking a list of records, got {fn!r}")
        if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
            raise ConfigError(f"threads: must be an integer >= 1, got {threads!r}")
        self._threads = WorkerThreads(threads, "writebehind-callable")
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
            await self._threads.run(self.fn, batch)
        else:
            result = self.fn(batch)
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        """Let the worker threads end once idle (a hung call keeps its daemon thread)."""
        self._threads.shutdown()
