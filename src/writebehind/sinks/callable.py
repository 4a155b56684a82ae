"""``CallableSink``: a user's function, sync or async, as a sink."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError
from .._tasks import cancelled_by_batcher
from .._workers import WorkerThreads

__all__ = ["CallableSink"]


class CallableSink:
    """Call ``fn(batch)`` for each batch.

    An ``async def`` function is awaited on the event loop. A plain function runs in a worker
    thread of the sink's own (``threads`` of them, default 1, daemon threads: a call that
    hangs never starves the loop's default executor nor holds up interpreter exit) so it
    cannot block the loop; pass ``in_thread=False`` for a fast, non-blocking sync function
    to call it on the loop directly. A sync call cannot be interrupted: when the batcher
    gives up on it (``write_timeout``, the close deadline), the sink still waits for the
    call to return and reports what it did, so a record it wrote is never reported lost or
    dead-lettered; a call that never returns holds its batch until the close deadline
    (then ``LOST``), and its daemon thread never holds up exit. Raise
    :class:`writebehind.RetriableSinkError` or :class:`writebehind.PermanentSinkError` to
    say how a failure should be handled. Whatever ``fn`` returns is the write's result: a
    :class:`writebehind.WriteResult` names records that changed nothing (``Outcome.STALE``);
    anything else (``None``, a row count, ...) means every record ``COMMITTED``.
    """

    def __init__(
        self, fn: Callable[[list[Any]], Any], *, in_thread: bool = True, threads: int = 1
    ) -> None:
        if not callable(fn):
            raise ConfigError(f"fn: must be a function taking a list of records, got {fn!r}")
        if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
            raise ConfigError(f"threads: must be an integer >= 1, got {threads!r}")
        self.threads = threads
        self._threads: WorkerThreads | None = None  # made by start() (or the first write)
        self.fn = fn
        self._async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self.in_thread = in_thread

    def __repr__(self) -> str:
        return f"CallableSink({getattr(self.fn, '__qualname__', self.fn)!r})"

    async def start(self) -> None:
        """A fresh pool of worker threads (a sink can be used by one batcher after another)."""
        if self._threads is None:
            self._threads = WorkerThreads(self.threads, "writebehind-callable")

    async def write(self, batch: list[Any]) -> Any:
        if self._async:
            return await self.fn(batch)
        elif self.in_thread:
            if self._threads is None:
                await self.start()
            assert self._threads is not None
            call = asyncio.ensure_future(self._threads.run(self.fn, batch))
            try:
                return await asyncio.shield(call)
            except asyncio.CancelledError:
                if call.done() or not cancelled_by_batcher():
                    raise
                # the batcher gave up, but the call goes on and may write: its outcome is
                # the write's (returning normally here, deliberately, when it succeeded)
                return await _unstoppable(call)
        else:
            result = self.fn(batch)
            if inspect.isawaitable(result):
                return await result
            return result

    async def close(self) -> None:
        """Let the worker threads end once idle (a hung call keeps its daemon thread)."""
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown()

    def after_fork(self) -> None:
        """In a forked child: the parent's worker threads did not cross the fork."""
        self._threads = None


async def _unstoppable(call: asyncio.Future[Any]) -> Any:
    """Wait for ``call`` to finish, whatever cancels the waiter meanwhile."""
    while True:
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            if call.done():
                return call.result()  # its own outcome: a result, or its error
