"""The durable watermark: the highest sequence number known synced, and everyone waiting on
it, in any thread or event loop.

The writer thread calls :meth:`Watermark.advance` after each group commit, :meth:`fail` after
a failed attempt and :meth:`stop` when the log closes; waiters block in :meth:`wait` (a
thread), await :meth:`wait_async` (an asyncio task: resolved through one
``call_soon_threadsafe`` per loop per commit, not one per record), or subscribe a callback
(called on the writer thread with ``(watermark, error)``; keep it short, and hop to your own
loop with ``call_soon_threadsafe``).

Async waiters are kept per loop in arrival order, with the highest seq among them: a commit
that covers them all (the usual case: one group commit wakes everyone waiting) takes the
list whole, in O(1); otherwise it is split in one pass. No heap, no per-waiter ordering.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from ._errors import SpoolClosed, SpoolWriteError

__all__ = ["DurableListener", "Watermark"]

DurableListener = Callable[[int, SpoolWriteError | None], None]
_Waiter = tuple[int, asyncio.Future[Any], Any]  # (seq, future, the future's result)

log = logging.getLogger("writebehind")


class _Waiters:
    """The async waiters of one loop: ``(seq, future, result)`` in arrival order, and the
    highest seq among them."""

    __slots__ = ("items", "top")

    def __init__(self) -> None:
        self.items: list[_Waiter] = []
        self.top = 0

    def take(self, value: int) -> list[_Waiter]:
        """Remove and return the waiters whose seq is at most ``value`` (some are above)."""
        items = self.items
        self.items = [w for w in items if w[0] > value]
        return [w for w in items if w[0] <= value]


_Table = dict[asyncio.AbstractEventLoop, _Waiters]


class Watermark:
    """The durable watermark and its waiters (thread-safe)."""

    def __init__(self, start: int = 0) -> None:
        self._lock = threading.Lock()  # the hot path takes it bare (a C context manager)
        self._cond = threading.Condition(self._lock)
        self.value = start
        self.error: SpoolWriteError | None = None  # the last attempt failed with this
        self._stopped: BaseException | None = None
        self._listeners: dict[int, DurableListener] = {}
        self._ids = itertools.count()
        # async waiters by loop; the patient ones (tolerate_errors) are in _patient and not
        # failed by fail()
        self._futures: _Table = {}
        self._patient: _Table = {}

    def advance(self, seq: int) -> None:
        """Everything up to ``seq`` is durable."""
        with self._cond:
            self.value = value = max(self.value, seq)
            self.error = None
            self._cond.notify_all()
            ready: list[tuple[asyncio.AbstractEventLoop, list[_Waiter]]] = []
            for table in (self._futures, self._patient):
                if table:
                    for loop, waiters in list(table.items()):
                        if waiters.top <= value:  # all of them: no loop is kept once idle
                            del table[loop]
                            ready.append((loop, waiters.items))
                        else:
                            taken = waiters.take(value)
                            if taken:
                                ready.append((loop, taken))
            listeners = list(self._listeners.values())
        self._settle(ready, None)
        self._tell(listeners, seq, None)

    def fail(self, error: SpoolWriteError) -> None:
        """An attempt to sync failed: waiters not yet durable get ``error``."""
        with self._cond:
            self.error = error
            self._cond.notify_all()
            failed = _drain(self._futures)
            listeners = list(self._listeners.values())
            value = self.value
        self._settle(failed, error)
        self._tell(listeners, value, error)

    def stop(self, reason: BaseException) -> None:
        """No more advances: waiters not yet durable get ``reason``."""
        with self._cond:
            self._stopped = reason
            self._cond.notify_all()
            failed = _drain(self._futures) + _drain(self._patient)
        self._settle(failed, reason)

    def wait(
        self, seq: int, timeout: float | None = None, *, tolerate_errors: bool = False
    ) -> bool:
        """Block until ``seq`` is durable (True) or ``timeout`` passes (False).

        Raises :class:`SpoolClosed` once the log stopped with ``seq`` not durable, and
        :class:`SpoolWriteError` while the latest attempt to sync has failed (at the call or
        during the wait; the record stays queued and is retried, so waiting again may
        succeed) unless ``tolerate_errors``: then it waits through failures."""

        def over() -> bool:
            return (
                self.value >= seq
                or self._stopped is not None
                or (self.error is not None and not tolerate_errors)
            )

        with self._cond:
            ok = self._cond.wait_for(over, timeout)
            if self.value >= seq:
                return True
            if not ok:
                return False
            raise self._why()

    async def wait_async(self, seq: int, *, tolerate_errors: bool = False) -> None:
        """Wait in an event loop until ``seq`` is durable; raises as :meth:`wait` does."""
        future = self.future(seq, asyncio.get_running_loop(), tolerate_errors=tolerate_errors)
        if future is not None:
            await future

    def future(
        self,
        seq: int,
        loop: asyncio.AbstractEventLoop,
        *,
        tolerate_errors: bool = False,
        result: Any = None,
    ) -> asyncio.Future[Any] | None:
        """A future of ``loop`` resolved with ``result`` when ``seq`` is durable (None: it
        is already); raises as :meth:`wait` does. For callers that await it without a
        coroutine of ours in between (the hot path of a durable ``add()``)."""
        with self._lock:
            if self.value >= seq:
                return None
            if self._stopped is not None or (self.error is not None and not tolerate_errors):
                raise self._why()
            future: asyncio.Future[Any] = loop.create_future()
            table = self._patient if tolerate_errors else self._futures
            waiters = table.get(loop)
            if waiters is None:
                waiters = table[loop] = _Waiters()
            waiters.items.append((seq, future, result))
            if seq > waiters.top:
                waiters.top = seq
        return future

    def subscribe(self, listener: DurableListener) -> Callable[[], None]:
        """Call ``listener(watermark, error)`` on the writer thread after every group commit
        (``error`` None) and every failed attempt; returns the unsubscribe function."""
        with self._cond:
            key = next(self._ids)
            self._listeners[key] = listener
        return lambda: self._listeners.pop(key, None) and None

    def _why(self) -> BaseException:
        if self.error is not None and self._stopped is None:
            return self.error
        if isinstance(self._stopped, SpoolClosed):
            return self._stopped
        return SpoolClosed(f"the spool log stopped before the record was durable: {self._stopped}")

    @staticmethod
    def _settle(
        ready: list[tuple[asyncio.AbstractEventLoop, list[_Waiter]]], error: BaseException | None
    ) -> None:
        for loop, waiters in ready:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(_resolve, waiters, error)

    @staticmethod
    def _tell(listeners: list[DurableListener], seq: int, error: SpoolWriteError | None) -> None:
        for listener in listeners:
            try:
                listener(seq, error)
            except Exception:
                log.exception("spool: an on_durable listener raised; ignored")


def _drain(table: _Table) -> list[tuple[asyncio.AbstractEventLoop, list[_Waiter]]]:
    """Every waiter of ``table``, by loop, removed from it."""
    out = [(loop, waiters.items) for loop, waiters in table.items() if waiters.items]
    table.clear()
    return out


def _resolve(waiters: list[_Waiter], error: BaseException | None) -> None:
    if error is None:
        for _, future, result in waiters:
            if not future.done():
                future.set_result(result)
    else:
        for _, future, _ in waiters:
            if not future.done():
                future.set_exception(error)
