"""``Batcher``: the sync API. An ``AsyncBatcher`` on an event loop in a background thread.

It holds no batching logic: ``add_nowait`` and ``stats`` go straight to the engine's
thread-safe intake, ``add`` to the engine's thread entry (which blocks this thread while
waiting for room), and ``flush``/``close`` run the engine's coroutines on its loop. No
record hops threads; the loop is woken only when a flush trigger fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from ._engine import AsyncBatcher
from ._errors import WriteBehindError
from ._events import Event
from ._instrument import Instrument
from ._receipt import Receipt
from ._stats import CloseReport, Stats

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher:
    """Batch records into a sink from sync code (Django, Flask, Celery, scripts, threads).

    Takes exactly the arguments of :class:`AsyncBatcher`. Use ``with Batcher(sink, ...) as
    batcher:``; leaving the block closes it. Safe to call from many threads at once.
    Receipts have ``.result(timeout=None)``.
    """

    def __init__(self, sink: Any, **options: Any) -> None:
        self._core = AsyncBatcher(sink, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._report: CloseReport | None = None

    @property
    def engine(self) -> AsyncBatcher:
        """The ``AsyncBatcher`` this facade drives."""
        return self._core

    def start(self) -> None:
        """Start the loop thread, the sink and the flusher. ``with`` calls this for you."""
        if self._thread is not None:
            raise WriteBehindError("the batcher was already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(
            target=run, name=f"writebehind[{self._core.name}]", daemon=True
        )
        self._thread.start()
        ready.wait()
        try:
            self._call(self._core.start())
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, record: Any, *, timeout: float | None = None) -> Receipt:
        """Take ``record``, blocking this thread for room under ``when_full="block"``."""
        return self._core.add_from_thread(record, timeout=timeout)

    def add_nowait(self, record: Any) -> Receipt:
        """Take ``record`` now or raise ``BufferFull``; never blocks."""
        return self._core.add_nowait(record)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record accepted before the call is committed or dead-lettered."""
        self._call(self._core.flush(timeout=timeout))

    def events(self, since: int | None = None) -> Iterator[Event]:
        """The engine's events (see ``AsyncBatcher.events``), as a blocking iterator that
        ends after the ``Closed`` event. It may raise ``SubscriberLagged``."""
        subscription = self._core.events(since)
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            raise WriteBehindError("the batcher is not started: use 'with Batcher(...)'")
        while thread.is_alive():
            chunk = asyncio.run_coroutine_threadsafe(subscription.next_chunk(), loop).result()
            if not chunk:
                return
            yield from chunk
        yield from subscription.drain()  # the loop has stopped: what is left, then the end

    def stats(self) -> Stats:
        """A frozen snapshot of every counter."""
        return self._core.stats()

    def add_instrument(self, instrument: Instrument) -> None:
        """See ``AsyncBatcher.add_instrument``."""
        self._core.add_instrument(instrument)

    def close(self, timeout: float | None = None) -> CloseReport:
        """Close the engine (see ``AsyncBatcher.close``), then stop the loop thread."""
        if self._report is not None:
            return self._report
        if self._loop is None:
            return self._call_unstarted()
        self._report = self._call(self._core.close(timeout))
        self._stop_loop()
        return self._report

    def _call_unstarted(self) -> CloseReport:
        report: CloseReport = asyncio.run(self._core.close())
        self._report = report
        return report

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise WriteBehindError("the batcher is not started: use 'with Batcher(...)'")
        if threading.current_thread() is self._thread:
            coro.close()
            raise WriteBehindError(
                "a Batcher method was called from its own event-loop thread (a sink or "
                "callback?); that would deadlock"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive() and threading.current_thread() is not thread:
            # tasks others started on this loop (an endpoint, a metrics refresher) get a
            # moment to finish after the close, then are cancelled, as asyncio.run does
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_wind_down(), loop).result(timeout=3)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _wind_down(grace: float = 1.0) -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    if tasks:
        _, left = await asyncio.wait(tasks, timeout=grace)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=grace)
    await asyncio.get_running_loop().shutdown_asyncgens()
