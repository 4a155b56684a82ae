"""``Room``: waiting for room in a full intake, the one mechanism for threads and the loop.

Under ``when_full="block"`` (and ``"direct"`` with its direct writes at their bound) an
``add()`` that finds the buffer full waits until settled writes free room, the batcher
closes, or its own ``timeout`` passes (then ``BufferFull``: the record was not accepted). A
thread waits on a ``threading.Condition`` over the intake's lock; a coroutine on a future
resolved by the loop. Both run the same deadline loop (:meth:`Room.wait`), so the two APIs
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from ._errors import BufferFull, RecordError
from ._put_one import OPEN

__all__ = ["Room", "full_for", "has_room", "put_blocking", "put_waiting"]


class Room:
    """The waiters for room in one intake. ``lock`` is the intake's lock."""

    def __init__(self, lock: threading.Lock | threading.RLock) -> None:
        self._cond = threading.Condition(lock)
        self._futures: list[asyncio.Future[None]] = []
        self._thread_waiters = 0

    def release_locked(self) -> None:
        """Wake every waiter (the intake's lock held): room was freed, or the intake closed."""
        if self._thread_waiters:
            self._cond.notify_all()
        if self._futures:
            futures, self._futures = self._futures, []
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            for f in futures:
                loop = f.get_loop()
                if loop is running:
                    _resolve(f)  # the usual case: the flusher, on the loop itself
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(_resolve, f)

    def wait_in_thread(
        self, take: Callable[[], Any], full: Callable[[], bool], timeout: float | None
    ) -> Any:
        """Call ``take()`` (None: no room) until it takes the record; block this thread
        between tries while ``full()`` (checked under the lock)."""
        deadline = _deadline(timeout)
        again = False
        while True:
            taken = take()
            if taken is not None:
                return taken
            with self._cond:
                if not full():  # refused though there is room for a record: see below
                    if again:
                        remaining = _remaining(deadline, timeout)
                        self._cond.wait(_POLL if remaining is None else min(_POLL, remaining))
                    again = True
                    continue
                again = False
                while full():
                    remaining = _remaining(deadline, timeout)
                    self._thread_waiters += 1
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._thread_waiters -= 1

    async def wait_on_loop(
        self, take: Callable[[], Any], full: Callable[[], bool], timeout: float | None
    ) -> Any:
        """The same loop as :meth:`wait_in_thread`, awaiting instead of blocking."""
        deadline = _deadline(timeout)
        loop = asyncio.get_running_loop()
        again = False
        while True:
            taken = take()
            if taken is not None:
                return taken
            remaining = _remaining(deadline, timeout)
            fut: asyncio.Future[None] = loop.create_future()
            with self._cond:
                if not full():
                    if not again:
                        again = True
                        continue  # room appeared meanwhile: try again at once
                    # refused twice though full() sees room (room for a record, not for
                    # what it needs: a merge that grew): poll instead of spinning
                    loop.call_later(_POLL, _resolve, fut)
                else:
                    again = False
                self._futures.append(fut)
            try:
                async with asyncio.timeout(remaining):
                    await fut
            except TimeoutError:
                pass  # the next turn raises BufferFull


_POLL = 0.001
"""Seconds between tries when a record is refused though ``full()`` sees room (room for a
record, not for what this one needs: a merge that grew past ``max_pending_bytes``)."""


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None, timeout: float | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BufferFull(f"no room in the buffer within {timeout} s; the record was not accepted")
    return remaining


def has_room(intake: Any, size: int = 0) -> bool:
    """Room in ``intake`` (an ``_intake.Intake``, typed loosely: it imports this module) for
    one more record (of ``size`` bytes, with a bytes budget). Lock held."""
    budget = intake.budget
    return len(intake._pending) + intake.counts.in_flight_held < intake.max_pending and (
        budget is None or budget.fits(size)
    )


def full_for(intake: Any, policy: str, size: int = 0) -> bool:
    """No room for one more record under ``policy`` (lock held); False once closed."""
    if intake._state != OPEN:
        return False
    if has_room(intake, size):
        return False
    if policy != "direct":
        return True
    c, budget = intake.counts, intake.budget
    return c.in_flight - c.in_flight_held >= intake.max_pending or (
        budget is not None and not budget.fits(size)
    )


def put_blocking(intake: Any, record: Any, timeout: float | None) -> Any:
    """Thread API: take ``record``, waiting (at most ``timeout`` s) for room under
    ``when_full="block"`` (and ``"direct"``); ``BufferFull`` after the timeout."""
    if intake.when_full not in ("block", "direct"):
        return intake.put_nowait(record)
    taken = _put(intake, record)  # the usual case: there is room
    if taken is not None:
        return taken
    size = _size_for_room(intake, record)
    return intake.room.wait_in_thread(
        lambda: _put(intake, record), lambda: full_for(intake, intake.when_full, size), timeout
    )


async def put_waiting(intake: Any, record: Any, timeout: float | None) -> Any:
    """Async API: the same as :func:`put_blocking`, awaiting on the loop."""
    if intake.when_full not in ("block", "direct"):
        return intake.put_nowait(record)
    size = _size_for_room(intake, record)
    return await intake.room.wait_on_loop(
        lambda: _put(intake, record), lambda: full_for(intake, intake.when_full, size), timeout
    )


def _put(intake: Any, record: Any) -> Any | None:
    """``intake.put_nowait(record)``, but None instead of ``BufferFull``."""
    try:
        return intake.put_nowait(record)
    except BufferFull as exc:
        if intake.spool_full is not None and intake.spool_full(exc):
            raise  # room in the buffer would not help: the caller waits for the spool
        return None


def _size_for_room(intake: Any, record: Any) -> int:
    """What ``record`` needs of a bytes budget (0 without one, or if it cannot be measured:
    the put then raises the record's own error)."""
    if intake._size_of is None:
        return 0
    try:
        n: int = intake._size_of(record)
    except RecordError:
        return 0
    return n
