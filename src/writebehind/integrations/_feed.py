"""One ``/events`` response's reading of a batcher's events, from any event loop or thread.

The event buffer has one writer, the batcher's loop, and its subscriptions are read on that
loop. :class:`EventFeed` reads one subscription from wherever an app runs: directly when
it runs on the batcher's loop (an ``AsyncBatcher`` in the same ASGI server), through
``run_coroutine_threadsafe`` when that loop runs in another thread (the thread-backed
``Batcher``, from a WSGI worker thread or an ASGI server's loop), and directly again once
that loop has stopped (nothing publishes any more). It hands out NDJSON bytes: each event's
line from the shared :class:`~._wire.LineCache`, and a ``SubscriberLagged`` line when the
reader fell behind, after which it goes on from ``resume_from``. Writers never wait for it.

Waits on a foreign loop are cut into slices of :data:`SLICE` seconds, so a loop that stops
meanwhile never leaves a reader waiting for an answer that cannot come.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import TYPE_CHECKING

from .._events import SubscriberLagged
from ._wire import LineCache, lagged_line

if TYPE_CHECKING:
    from .._engine import AsyncBatcher
    from .._events import Subscription

__all__ = ["SLICE", "EventFeed"]

SLICE = 2.0  # seconds one wait on a foreign loop lasts at most
_GRACE = 2.0  # extra seconds before a foreign loop that did not answer is looked at again


class EventFeed:
    """The events from ``since`` on (see ``AsyncBatcher.events``) as NDJSON bytes."""

    def __init__(self, engine: AsyncBatcher, since: int | None, cache: LineCache) -> None:
        self._engine = engine
        self._since = since
        self._cache = cache
        self._sub: Subscription | None = None

    # -- on the batcher's loop (or with no loop running) -----------------------------------
    def _subscription(self) -> Subscription:
        if self._sub is None:
            self._sub = self._engine.events(self._since)
        return self._sub

    def _held(self) -> bytes:
        """Every event held from here on, without waiting (``b""`` if none is)."""
        out: list[bytes] = []
        while True:
            try:
                chunk = self._subscription().drain()
            except SubscriberLagged as lag:
                out.append(lagged_line(lag))
                self._sub = self._engine.events(since=lag.resume_from)
                continue
            out.extend(map(self._cache.line, chunk))
            return b"".join(out)

    async def _take(self, wait: float | None) -> bytes | None:
        """What is held from here on, or if nothing is, the next events, waiting at most
        ``wait`` seconds (``None``: no limit; 0: none). ``b""`` once the batcher has closed
        and every event was read (and, for ``wait == 0``, when nothing is held); ``None``
        when the wait ran out with no event."""
        held = self._held()
        if held or wait == 0:
            return held
        while True:
            try:
                async with asyncio.timeout(wait):
                    chunk = await self._subscription().next_chunk()
            except TimeoutError:
                return None
            except SubscriberLagged as lag:
                self._sub = self._engine.events(since=lag.resume_from)
                return lagged_line(lag) + self._held()
            return b"".join(map(self._cache.line, chunk))

    def _foreign_loop(self) -> asyncio.AbstractEventLoop | None:
        """The batcher's loop if it runs and is not the caller's; else None (read here)."""
        loop = self._engine.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        try:
            if asyncio.get_running_loop() is loop:
                return None
        except RuntimeError:
            pass
        return loop

    def _submit(
        self, loop: asyncio.AbstractEventLoop, wait: float
    ) -> concurrent.futures.Future[bytes | None] | None:
        """:meth:`_take` on the batcher's loop; None if that loop closed meanwhile."""
        coro = self._take(wait)
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            return None

    # -- from an ASGI app (any loop) ---------------------------------------------------------
    async def next_async(self, wait: float | None) -> bytes | None:
        """See :meth:`_take`, awaited from any event loop."""
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            loop = self._foreign_loop()
            if loop is None:
                if self._engine.loop is asyncio.get_running_loop():
                    return await self._take(wait)
                return self._held()  # the loop has stopped: nothing more will come
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = SLICE if left is None else min(SLICE, left)
            fut = self._submit(loop, step)
            if fut is None:
                continue
            try:
                got = await asyncio.wait_for(asyncio.wrap_future(fut), step + _GRACE)
            except TimeoutError:
                got = None  # the loop stopped answering: look at it again
            if got is not None or (deadline is not None and time.monotonic() >= deadline):
                return got

    # -- from a thread (WSGI) ---------------------------------------------------------------
    def next_blocking(self, wait: float) -> bytes | None:
        """See :meth:`_take`, blocking this thread (which must not run the batcher's loop);
        ``wait`` is a number of seconds (0: what is held now)."""
        deadline = time.monotonic() + wait
        while True:
            loop = self._foreign_loop()
            if loop is None:
                return self._held()
            step = min(SLICE, max(0.0, deadline - time.monotonic()))
            fut = self._submit(loop, step)
            if fut is None:
                continue
            try:
                got = fut.result(step + _GRACE)
            except concurrent.futures.TimeoutError:
                fut.cancel()
                got = None
            if got is not None or time.monotonic() >= deadline:
                return got
