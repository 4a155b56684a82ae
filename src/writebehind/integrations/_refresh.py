"""Background refresh of metric values too expensive to read on a scrape.

A :class:`Refresher` calls each :class:`Source` (the dead-letter store's ``count()``, the
user's ``refreshers``) from a daemon thread every ``interval`` seconds, each round bounded by
``timeout``, and keeps the last value of each. Coroutine sources run on their batcher's event
loop (asyncpg pools are bound to their loop); plain callables run in a thread of their own,
so a slow one never stalls the batcher. A source that hangs keeps its last value and is not
called again until it returns: calls never pile up. ``updated`` is the wall-clock time of the
last round in which every value was refreshed; ``failures`` counts calls that raised or did
not answer in time. Constructing a refresher starts nothing: the thread starts at
:meth:`Refresher.start` (once) and ends on :meth:`Refresher.halt` or once every batcher
closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from .._deadletter import scrub_secrets
from .._errors import WriteBehindError

log = logging.getLogger("writebehind")

_POLL = 0.25  # seconds between checks for a closed batcher in the refresh thread


class Source:
    """One expensive value: a callable, its last value, and its call still in progress."""

    def __init__(self, name: str, fn: Callable[[], Any], batcher: Any) -> None:
        self.name, self.fn, self.batcher = name, fn, batcher
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self.value: float | None = None
        self.pending: cf.Future[Any] | None = None
        self.failing = False


class Refresher:
    """Refreshes ``sources`` (of the batcher engines ``engines``) in rounds: on demand with
    :meth:`refresh`, and every ``interval`` s in a daemon thread once :meth:`start` ed."""

    def __init__(
        self, engines: Sequence[Any], sources: list[Source], *, interval: float, timeout: float
    ) -> None:
        self.engines, self.sources = engines, sources
        self.interval, self.timeout = interval, timeout
        self.updated: float | None = None
        """Unix time of the last round in which every value was refreshed (None: never)."""
        self.failures = 0
        """Calls that raised or did not answer within ``timeout``."""
        self.thread: threading.Thread | None = None
        """The refresh thread (None: not started, or nothing to refresh)."""
        self._started = False
        self._lifecycle = threading.Lock()  # start() and halt()
        self._round = threading.Lock()
        self._stop = threading.Event()
        self._halt: cf.Future[None] = cf.Future()  # done at halt(): ends a waiting round

    def start(self, name: str) -> None:
        """Start the refresh thread (called ``name``), if there is anything to refresh.
        Once only: calling it again does nothing; after :meth:`halt` it raises."""
        with self._lifecycle:
            if self._stop.is_set():
                raise WriteBehindError(
                    "PrometheusCollector.start(): the collector was closed; create a new one"
                )
            if self._started:
                return
            self._started = True
            if self.sources:
                self.thread = threading.Thread(target=self._run, name=name, daemon=True)
                self.thread.start()

    def halt(self) -> None:
        """Tell the thread to stop (or never to start) and end a round that is waiting for
        answers."""
        with self._lifecycle:
            self._stop.set()
        if not self._halt.done():
            with suppress(cf.InvalidStateError):  # two halts at once
                self._halt.set_result(None)

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the thread to end (not when called from it)."""
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def refresh(self) -> bool:
        """Run one round now, in this thread, bounded by ``timeout``. True if every value was
        refreshed; False at once if another round is still running. Refuses to run on a
        batcher's own event loop (its coroutine sources run there)."""
        loops = {e.loop for e in self.engines if getattr(e, "loop", None) is not None}
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running in loops:
            raise WriteBehindError(
                "PrometheusCollector.refresh() called on the batcher's event loop would block "
                "it; use 'await asyncio.to_thread(collector.refresh)'"
            )
        if not self._round.acquire(blocking=False):
            return False
        try:
            return self._refresh_round()
        finally:
            self._round.release()

    def _refresh_round(self) -> bool:
        deadline = time.monotonic() + self.timeout
        ok, started = True, []
        for src in self.sources:
            if src.pending is not None and not src.pending.done():
                ok = False  # the call of an earlier round still hangs: no pile-up
                continue
            src.pending = self._call(src)
            if src.pending is None:
                ok = False
            else:
                started.append(src)
        waiting = {s.pending for s in started if s.pending is not None}
        while waiting and not self._halt.done() and (left := deadline - time.monotonic()) > 0:
            waiting = cf.wait({*waiting, self._halt}, left, cf.FIRST_COMPLETED).not_done
            waiting.discard(self._halt)
        for src in started:
            fut = src.pending
            assert fut is not None
            if self._halt.done() and not fut.done():
                fut.cancel()  # closing (perhaps on the batcher's loop): do not wait for it
                return False
            if not fut.done():
                ok = False
                self._failed(src, f"no answer within refresh_timeout={self.timeout} s")
                continue
            src.pending = None
            try:
                value = float(fut.result())
            except (Exception, cf.CancelledError) as exc:  # anything a user callable raises
                ok = False
                self._failed(src, f"{type(exc).__name__}: {scrub_secrets(str(exc))}")
                continue
            src.value = value
            if src.failing:
                src.failing = False
                log.info("writebehind metrics: refreshing %s works again", src.name)
        if ok:
            self.updated = time.time()
        return ok

    def _call(self, src: Source) -> cf.Future[Any] | None:
        """Start one call of ``src``; ``None`` if its batcher's loop is not there to run it."""
        if src.is_async:
            loop = getattr(src.batcher, "loop", None)
            if loop is None or loop.is_closed():
                return None  # not started yet, or gone: the value stays as it was
            try:
                return asyncio.run_coroutine_threadsafe(_bounded(src.fn, self.timeout), loop)
            except RuntimeError:
                return None
        fut: cf.Future[Any] = cf.Future()

        def call() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(src.fn())
                except BaseException as exc:  # delivered to the waiting round
                    fut.set_exception(exc)

        threading.Thread(target=call, name=f"writebehind-refresh[{src.name}]", daemon=True).start()
        return fut

    def _failed(self, src: Source, why: str) -> None:
        self.failures += 1
        level = logging.DEBUG if src.failing else logging.WARNING
        src.failing = True
        log.log(level, "writebehind metrics: refreshing %s failed (%s); keeping the last value",
                src.name, why)  # fmt: skip

    def _run(self) -> None:
        next_round = time.monotonic()
        while not self._stop.is_set():
            if all(e.stats().closed for e in self.engines):
                return
            if time.monotonic() >= next_round:
                ok = self.refresh()
                # until the first full refresh (the batcher's loop may not be running yet),
                # try again soon rather than a whole interval later
                wait = self.interval if ok or self.updated else min(self.interval, 1.0)
                next_round = time.monotonic() + wait
            self._stop.wait(min(_POLL, max(0.0, next_round - time.monotonic())))


async def _bounded(fn: Callable[[], Any], timeout: float) -> Any:
    async with asyncio.timeout(timeout):
        return await fn()
