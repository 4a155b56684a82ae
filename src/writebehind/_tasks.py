"""The batcher's own tasks, and how they tell its cancellations from everyone else's.

``asyncio.run()`` ends by cancelling every task left on the loop, *with the loop stopped*,
and then runs the loop until those tasks finish. A batcher still open at that moment would
lose every record it holds. So the batcher's tasks are :class:`GuardedTask`\\ s: a
``cancel()`` that arrives while their loop is not running (the loop is shutting down) is
refused and reported to the batcher, which closes itself (flushing within its
``close_timeout``); ``asyncio.run`` then waits for the tasks, as it waits for any task that
survives its cancellation. Cancellations made while the loop runs (``asyncio.timeout``, the
batcher abandoning writes at its close deadline) are ordinary.

:func:`cancelled_by_batcher` tells, inside a task, whether a ``CancelledError`` is a real
cancellation of this task (the batcher's own) or one that a sink's write raised from inside
(an inner task someone cancelled): the latter is a failed write like any other error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["GuardedTask", "cancelled_by_batcher", "spawn"]

T = TypeVar("T")


class GuardedTask(asyncio.Task[T]):
    """A task that refuses cancellation while its loop is stopped (see the module docstring)."""

    # Set per task by spawn(); called with the loop stopped, it returns True when the
    # batcher is still open and takes the shutdown in hand (the cancel is then refused).
    _on_shutdown: Callable[[], bool] | None = None

    def cancel(self, msg: Any | None = None) -> bool:
        loop = self.get_loop()
        hook = self._on_shutdown
        if hook is not None and not loop.is_running() and not loop.is_closed() and hook():
            return False
        return super().cancel(msg)


def spawn(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    name: str,
    on_shutdown: Callable[[], bool] | None,
) -> GuardedTask[T]:
    """Start ``coro`` as a :class:`GuardedTask` on ``loop``."""
    task: GuardedTask[T] = GuardedTask(coro, loop=loop, name=name)
    task._on_shutdown = on_shutdown
    return task


def cancelled_by_batcher() -> bool:
    """True when the current task was cancelled (the batcher's own cancellation), False when
    a ``CancelledError`` came from inside an awaited call without anyone cancelling us."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
