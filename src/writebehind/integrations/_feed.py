"""One ``/events`` response's reading of a batcher's events, from any event loop or thread.

The event buffer has one writer, the batcher's loop, and its subscriptions are read on that
loop. :class:`EventFeed` reads one subscription from wherever an app runs:

- on the batcher's own loop (an ``AsyncBatcher`` in the same ASGI server) it awaits the
  subscription, as the standalone server does;
- from another thread or loop while the batcher's loop runs (the thread-backed ``Batcher``
  under a WSGI server, or served from an ASGI server's loop) it asks that loop, every
  :data:`POLL` seconds, for what is held: one plain callback (``call_soon_threadsafe``), no
  task or coroutine on a loop it does not own, so a loop that stops meanwhile leaves
  nothing behind and the feed simply reads directly from then on;
- once that loop has stopped (or before it started) it reads directly: nothing publishes.

It hands out NDJSON bytes: each event's line from the shared :class:`~._wire.LineCache`,
and a ``SubscriberLagged`` line when the reader fell behind, after which it goes on from
``resume_from``. The feed ends after the ``Closed`` event (or once the loop is gone and
everything held was read). Writers never wait for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import TYPE_CHECKING

from .._events import Closed, SubscriberLagged
from ._wire import LineCache, lagged_line

if TYPE_CHECKING:
    from .._engine import AsyncBatcher
    from .._events import Subscription

__all__ = ["POLL", "EventFeed"]

POLL = 0.05  # seconds between two looks at a batcher's events from another thread
_ANSWER = 2.0  # seconds a running loop has to answer a look before it is looked at again


class EventFeed:
    """The events from ``since`` on (see ``AsyncBatcher.events``) as NDJSON bytes."""

    def __init__(self, engine: AsyncBatcher, since: int | None, cache: LineCache) -> None:
        self._engine = engine
        self._since = since
        self._cache = cache
        self._sub: Subscription | None = None
        self.ended = False
        """True once the ``Closed`` event was handed out (or the loop is gone and every
        event held was)."""

    # -- reading, on the batcher's loop or with no loop running ------------------------------
    def _subscription(self) -> Subscription:
        if self._sub is None:
            self._sub = self._engine.events(self._since)
        return self._sub

    def _lines(self, chunk: list[object]) -> bytes:
        self.ended = self.ended or any(isinstance(e, Closed) for e in chunk)
        return b"".join(map(self._cache.line, chunk))

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
            out.append(self._lines(chunk))
            return b"".join(out)

    async def _take(self, wait: float | None) -> bytes | None:
        """On the batcher's loop: what is held, or else the next events, waiting at most
        ``wait`` seconds (None: no limit); None when the wait ran out with no event."""
        held = self._held()
        if held or wait == 0 or self.ended:
            return held
        try:
            async with asyncio.timeout(wait):
                chunk = await self._subscription().next_chunk()
        except TimeoutError:
            return None
        except SubscriberLagged as lag:
            self._sub = self._engine.events(since=lag.resume_from)
            return lagged_line(lag) + self._held()
        if not chunk:
            self.ended = True  # the buffer closed
        return self._lines(chunk)

    # -- where the batcher's loop is -------------------------------------------------------------
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The batcher's loop if it runs, else None (then nothing publishes: read here)."""
        loop = self._engine.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        return loop

    def _look(self, loop: asyncio.AbstractEventLoop) -> concurrent.futures.Future[bytes] | None:
        """:meth:`_held` run on ``loop`` (None if it closed meanwhile)."""
        fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()

        def look() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(self._held())
                except BaseException as exc:
                    fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(look)
        except RuntimeError:
            return None
        return fut

    def _finish(self) -> bytes:
        """The loop is gone: what it left, and the end."""
        held = self._held()
        self.ended = True
        return held

    # -- from an ASGI app (any loop) -----------------------------------------------------------
    async def next_async(self, wait: float | None) -> bytes | None:
        """The events held, or else the next ones, waiting at most ``wait`` seconds (None:
        no limit; 0: not at all). ``b""`` at the end (and for ``wait == 0`` when nothing is
        held); None when the wait ran out with no event."""
        deadline = None if wait is None else time.monotonic() + wait
        while not self.ended:
            loop = self._loop()
            if loop is None:
                return self._finish()
            if loop is asyncio.get_running_loop():
                return await self._take(wait)
            fut = self._look(loop)
            if fut is not None:
                try:
                    async with asyncio.timeout(_ANSWER):
                        held = await asyncio.wrap_future(fut)
                except TimeoutError:
                    fut.cancel()
                    held = b""
                if held or wait == 0:
                    return held
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL)
        return b""

    # -- from a thread (WSGI) ------------------------------------------------------------------
    def next_blocking(self, wait: float) -> bytes | None:
        """:meth:`next_async` for a thread that is not the batcher's loop's; ``wait`` in
        seconds (0: what is held now)."""
        deadline = time.monotonic() + wait
        while not self.ended:
            loop = self._loop()
            if loop is None:
                return self._finish()
            fut = self._look(loop)
            if fut is not None:
                try:
                    held = fut.result(_ANSWER)
                except concurrent.futures.TimeoutError:
                    fut.cancel()
                    held = b""
                if held or wait == 0:
                    return held
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL)
        return b""
