"""``Batcher``: the sync API. An ``AsyncBatcher`` on an event loop in a background thread.

It holds no batching logic: ``add_nowait`` and ``stats`` go straight to the engine's
thread-safe intake, ``add`` to the engine's thread entry (which blocks this thread while
waiting for room), and ``flush``/``close`` run the engine's coroutines on its loop. No
record hops threads; the loop is woken only when a flush trigger fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from . import _lifecycle
from ._config import BatcherOptions
from ._engine import AsyncBatcher
from ._errors import WriteBehindError, would_deadlock
from ._events import Event
from ._instrument import Instrument
from ._put_many import add_group_blocking
from ._receipt import Receipt
from ._receipt_group import Receipts
from ._stats import CloseReport, Stats

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Batcher"]

T = TypeVar("T")

log = logging.getLogger("writebehind")


class Batcher:
    """Batch records into a sink from sync code (Django, Flask, Celery, scripts, threads).

    Takes exactly the arguments of :class:`AsyncBatcher`. Use ``with Batcher(sink, ...) as
    batcher:``; leaving the block closes it. Safe to call from many threads at once.
    Receipts have ``.result(timeout=None)``.

    Left open, it is closed at interpreter exit (and when a ``multiprocessing`` child ends),
    with a ``ResourceWarning``. After ``os.fork()`` the child's copy starts afresh on first
    use: empty, with its own thread, loop and sink connections; the parent's records stay
    the parent's.
    """

    def __init__(self, sink: Any, **options: Unpack[BatcherOptions]) -> None:
        self._sink, self._options = sink, options
        self._core = AsyncBatcher(sink, **options)
        self._core._facade = True
        self._direct = self._core.options.when_full == "direct"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._report: CloseReport | None = None
        self._lock = threading.Lock()  # start and close, from any thread
        self._stopping = threading.Event()
        self._restart = False  # a forked child starts afresh at first use

    @property
    def engine(self) -> AsyncBatcher:
        """The ``AsyncBatcher`` this facade drives (in a forked child, asking for it starts
        the child's own, as any first use does: a stats endpoint then reports it ready)."""
        if self._restart:
            self._restart_in_child()
        return self._core

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def close_timeout(self) -> float:
        return self._core.close_timeout

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def start(self) -> None:
        """Start the loop thread, the sink and the flusher. ``with`` calls this for you.
        In a forked child it starts the child's own batcher (as the first use would)."""
        with self._lock:
            self._start()
            self._restart = False

    def _start(self) -> None:
        if self._thread is not None:
            raise WriteBehindError("the batcher was already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._stopping = stopping = threading.Event()
        # the thread holds the loop, never the facade: a Batcher nobody holds any more is
        # garbage-collected (and its __del__ closes it)
        args = (loop, ready, stopping, self._core.name)
        self._loop = loop
        self._thread = threading.Thread(
            target=_run_loop, args=args, name=f"writebehind[{self._core.name}]", daemon=True
        )
        self._thread.start()
        ready.wait()
        try:
            self._call(self._core.start())
        except BaseException:
            self._stop_loop()
            self._loop = self._thread = None  # not started: nothing to close, start() again
            raise
        _lifecycle.register(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, record: Any, *, timeout: float | None = None) -> Receipt:
        """Take ``record``, blocking this thread for room under ``when_full="block"``; in
        spool mode, until the record is fsynced in the spool (the same group commit as
        ``AsyncBatcher.add``)."""
        if self._restart:
            self._restart_in_child()
        intake = self._core._intake
        if intake.on_loop_thread():
            raise would_deadlock("Batcher.add()")
        spooling = self._core._spooling
        if spooling is not None:  # spool mode: room in the buffer and the spool, durable
            r = spooling.add_blocking(intake, record, timeout, self._core.options.when_full)
        else:
            r = intake.put_blocking(record, timeout)
        if self._direct and r.batch is not None and r.batch.reason == "direct":
            r.result()  # a record written alone, now: add() returns when it is settled
        return r

    def add_many(self, records: Iterable[Any], *, timeout: float | None = None) -> Receipts:
        """Take a group of records, blocking for room as ``add()`` does (see
        ``AsyncBatcher.add_many``); ``result(timeout)`` on what it returns counts each
        outcome once the group is settled."""
        if self._restart:
            self._restart_in_child()
        intake = self._core._intake
        if intake.on_loop_thread():
            raise would_deadlock("Batcher.add_many()")
        spooling = self._core._spooling
        taken = add_group_blocking(
            intake.put_many, self.add, records, timeout,
            None if spooling is None else spooling.wait_durable,
        )  # fmt: skip
        if self._direct:  # as add(): records written alone are settled first
            for r in taken:
                if r.batch is not None and r.batch.reason == "direct":
                    r.result()
        return Receipts(taken)

    def peek(self, key: Any) -> Any | None:
        """The newest record accepted for ``key`` and not written yet, or None (see
        ``AsyncBatcher.peek``). Never blocks on the loop."""
        return self._core.peek(key)

    def add_many_nowait(self, records: Iterable[Any]) -> Receipts:
        """Take a group of records now or raise (see ``AsyncBatcher.add_many_nowait``)."""
        if self._restart:
            self._restart_in_child()
        return self._core.add_many_nowait(records)

    def add_nowait(self, record: Any) -> Receipt:
        """Take ``record`` now or raise ``BufferFull``; never blocks."""
        if self._restart:
            self._restart_in_child()
        return self._core.add_nowait(record)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record accepted before the call is committed or dead-lettered.
        After close it returns at once (close flushed everything it could)."""
        if self._restart:
            self._restart_in_child()
        if self._report is not None:
            return
        self._call(self._core.flush(timeout=timeout), None if timeout is None else timeout + 1)

    def events(self, since: int | None = None) -> Iterator[Event]:
        """The engine's events (see ``AsyncBatcher.events``), as a blocking iterator that
        ends after the ``Closed`` event. It may raise ``SubscriberLagged``."""
        subscription = self._core.events(since)
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            raise WriteBehindError("the batcher is not started: use 'with Batcher(...)'")
        while thread.is_alive() and not loop.is_closed():
            try:
                fut = asyncio.run_coroutine_threadsafe(subscription.next_chunk(), loop)
            except RuntimeError:  # the loop closed meanwhile
                break
            chunk = fut.result()
            if not chunk:
                return
            yield from chunk
        yield from subscription.drain()  # the loop has stopped: what is left, then the end

    def stats(self) -> Stats:
        """A frozen snapshot of every counter."""
        return self._core.stats()

    def pause(self, seconds: float) -> None:
        """Cut no batch and start no write for ``seconds``; see ``AsyncBatcher.pause``."""
        self._core.pause(seconds)

    def add_instrument(self, instrument: Instrument) -> None:
        """See ``AsyncBatcher.add_instrument``."""
        self._core.add_instrument(instrument)

    def close(self, timeout: float | None = None) -> CloseReport:
        """Close the engine (see ``AsyncBatcher.close``), then stop the loop thread.

        Thread-safe and idempotent: every caller gets the same report. Returns within the
        deadline plus a moment even if the sink or the loop hangs."""
        if self._core._intake.on_loop_thread():
            raise would_deadlock("Batcher.close()")
        with self._lock:
            if self._report is not None:
                return self._report
            if self._loop is None:
                self._report = self._close_unstarted()
                return self._report
            deadline = self._core.close_timeout if timeout is None else timeout
            stuck = False
            try:
                self._report = self._call(self._core.close(timeout), deadline + 0.75)
            except (TimeoutError, WriteBehindError) as exc:
                # the loop is stuck (a sync call blocking it) or gone: report what is held
                log.error("writebehind[%s]: close could not run on the batcher's loop (%s); "
                          "what it holds is reported lost", self._core.name, exc)  # fmt: skip
                self._report = self._core._report or self._core._abandon_without_loop(
                    "its event loop is stuck or gone"
                )
                stuck = True
            self._stop_loop(stuck=stuck)
            _lifecycle.unregister(self)
            return self._report

    def _close_unstarted(self) -> CloseReport:
        core = self._core
        core._intake.close()  # never started: nothing to flush, no loop needed
        core._report = CloseReport(stats=core.stats(), lost=0, timed_out=False, duration=0.0)
        return core._report

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait for it: at most ``timeout`` s, and never
        past the loop thread's death (then ``WriteBehindError``)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            coro.close()
            raise WriteBehindError("the batcher is not started: use 'with Batcher(...)'")
        if self._core._intake.on_loop_thread():
            coro.close()
            raise would_deadlock("a blocking Batcher method")
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError as exc:
            coro.close()
            raise WriteBehindError("the batcher's event loop is closed") from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if step <= 0:
                fut.cancel()
                raise TimeoutError(f"the batcher's loop did not answer within {timeout} s")
            try:
                return fut.result(step)
            except TimeoutError:
                if fut.done():
                    raise
                if not thread.is_alive():
                    raise WriteBehindError("the batcher's event-loop thread has died") from None

    def _stop_loop(self, *, stuck: bool = False) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping.set()
        if not stuck and thread.is_alive() and threading.current_thread() is not thread:
            # tasks others started on this loop (an endpoint, a metrics refresher) get a
            # moment to finish after the close, then are cancelled, as asyncio.run does
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_wind_down(), loop).result(timeout=0.5)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=0.5)  # a stuck thread shuts its loop when it is freed

    # -- process lifecycles (see _lifecycle) ------------------------------------------------
    def _close_unclosed(self, why: str) -> None:
        if self._report is not None or self._loop is None or self._restart:
            return
        try:
            _lifecycle.warn_unclosed(self, why)
        except Exception:
            log.debug("writebehind[%s]: the ResourceWarning raised", self._core.name)
        self.close()

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's engine, thread and records; the first
        call starts a fresh one (lazily, so a fork never waits for a connection)."""
        self._core._after_fork_in_child()
        # the parent's engine and loop (with its pending tasks) are kept, never finalised:
        # garbage-collecting them would only print "Task was destroyed" in every child
        _lifecycle.keep_inherited(self._core, self._loop)
        self._lock = threading.Lock()
        self._loop = self._thread = None
        self._report = None
        self._stopping = threading.Event()
        after_fork = getattr(self._sink, "after_fork", None)
        if after_fork is not None:
            after_fork()  # drop inherited connections without closing the parent's
        self._core = AsyncBatcher(self._sink, **self._options)
        self._core._facade = True
        self._restart = True

    def _restart_in_child(self) -> None:
        if self._core.options.spool is not None:
            raise WriteBehindError(
                "this Batcher has a spool, which belongs to the process that opened it (the "
                "parent of this fork): a batcher with a spool cannot be used in a forked "
                "child. Create one in the child after the fork, on a spool of its own"
            )
        with self._lock:
            if self._restart:  # other threads wait on the lock until the start is done
                self._start()
                self._restart = False

    def __del__(self) -> None:
        started = getattr(self, "_loop", None) is not None
        if sys.is_finalizing():  # no thread starts now (the exit hook closed what was open)
            return
        if started and self._report is None and not self._restart:
            # nobody holds it any more: close it on a thread of its own (never in the GC)
            threading.Thread(target=self._close_unclosed, args=("it was garbage-collected",),
                             name="writebehind-gc-close", daemon=True).start()  # fmt: skip


def _run_loop(
    loop: asyncio.AbstractEventLoop, ready: threading.Event, stopping: threading.Event, name: str
) -> None:
    """The loop thread's body: run the loop until stopped, then shut it."""
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    while True:
        try:
            loop.run_forever()
            break
        except (KeyboardInterrupt, SystemExit) as exc:
            # a sink (or hook) raised it on this thread; the batch was settled first. The
            # loop is the batcher's own: keep it serving close().
            log.error("writebehind[%s]: %s raised on the batcher's thread; carrying on",
                      name, type(exc).__name__)  # fmt: skip
            if stopping.is_set():
                break
    _shut_loop(loop)


def _shut_loop(loop: asyncio.AbstractEventLoop) -> None:
    """On the loop's own thread, once it stopped: end what is left on it, then close it."""
    with contextlib.suppress(Exception):
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


_POLL = 0.25  # seconds between two looks at the loop thread while waiting on it


async def _wind_down(grace: float = 0.2) -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    if tasks:
        _, left = await asyncio.wait(tasks, timeout=grace)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=grace)
    await asyncio.get_running_loop().shutdown_asyncgens()
