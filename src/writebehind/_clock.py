"""The clock the engine reads and sleeps on, injected so tests can run time by hand.

``MonotonicClock`` is the real one. ``writebehind.testing.ManualClock`` is the fake: time
moves only when a test calls ``advance()``, so linger and backoff tests run instantly.
Write timeouts and the close deadline are safety nets on the event loop's own (real) time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "MonotonicClock"]


@runtime_checkable
class Clock(Protocol):
    """What the engine needs from a clock."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set (True) or ``timeout`` of this clock's time passes (False)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and the event loop's timers."""

    monotonic = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout is None:
            await event.wait()
            return True
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            return False
        return True
