"""``WorkerThreads``: a small pool of daemon threads for blocking sink work.

Sync sinks (a plain ``def`` in :class:`~writebehind.CallableSink`, the SQLite driver) must not
run on the event loop's default executor: a hung write would fill it and starve the
application's own ``to_thread()`` and ``getaddrinfo()``, and its non-daemon threads would keep
the interpreter from exiting. Each sink gets its own bounded pool whose threads are daemons,
so a write that never returns costs one of *its* threads and never holds up exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WorkerThreads"]

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class WorkerThreads:
    """At most ``size`` daemon threads, started on demand, running one call each at a time."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size, self.name = size, name
        self._jobs: collections.deque[_Job | None] = collections.deque()
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._shut = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a worker thread and return its result (or raise its error).

        Cancelling the await does not stop the call: it runs to its end on its thread.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._cv:
            if self._shut:
                raise RuntimeError(f"{self.name}: the worker threads are shut down")
            self._jobs.append((loop, fut, fn, args))
            if self._idle == 0 and len(self._threads) < self.size:
                t = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
            else:
                self._cv.notify()
        return await fut

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._idle += 1
                    self._cv.wait()
                    self._idle -= 1
                job = self._jobs.popleft()
            if job is None:
                return
            loop, fut, fn, args = job
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting task, whatever it is
                _deliver(loop, fut, None, exc)
            else:
                _deliver(loop, fut, result, None)

    def shutdown(self) -> None:
        """Let each thread end once it is idle; never waits (a hung call keeps its thread)."""
        with self._cv:
            self._shut = True
            self._jobs.extend([None] * len(self._threads))
            self._cv.notify_all()

    @property
    def busy(self) -> int:
        """Threads running a call now (for tests and diagnostics)."""
        with self._cv:
            return len(self._threads) - self._idle - sum(1 for j in self._jobs if j is None)


def _deliver(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def settle() -> None:
        if fut.done():
            return  # the awaiting task was cancelled; nobody wants the result
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(settle)
