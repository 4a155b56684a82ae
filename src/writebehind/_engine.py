"""``AsyncBatcher``: the engine. The flusher task, flush(), close() and the thread entry.

One flusher task per batcher asks :func:`writebehind._decide.decide` what to do each time it
wakes, cuts batches from the :class:`~writebehind._intake.Intake`, and starts one delivery
task per batch (at most ``max_in_flight`` at once). Everything per record happens in the
intake; everything per batch happens here and in :mod:`writebehind._delivery`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

from ._aimd import AdaptiveConcurrency
from ._clock import Clock, MonotonicClock
from ._config import Options
from ._deadletter import CallableDeadLetter, DeadLetter, DeadLetterSpec
from ._delivery import Delivery
from ._errors import BufferFull, ConfigError, WriteBehindError
from ._events import Closed, EventBuffer, Subscription
from ._flusher import Flusher
from ._health import SinkHealth
from ._instrument import Instrument
from ._intake import Intake
from ._keys import FieldSpec
from ._receipt import Receipt
from ._retry import RetryPolicy
from ._stats import CloseReport, Stats

__all__ = ["AsyncBatcher"]

log = logging.getLogger("writebehind")


class AsyncBatcher:
    """Batch records into a sink, on the running event loop.

    Use it as ``async with AsyncBatcher(sink, ...) as batcher:``. ``add()`` and
    ``add_nowait()`` return a :class:`Receipt`; ``await receipt`` gives the record's
    :class:`Outcome`. Leaving the block closes the batcher (see :meth:`close`).

    Args:
        sink: any object with ``async def write(self, batch: list) -> None``; optional
            ``async start()`` and ``async close()`` are called on entry and exit.
        key, version: a field name, a tuple of names, or a callable. Records with the same
            key coalesce (the greater version wins; on a tie the later ``add()``). No key:
            no coalescing.
        max_batch: the most records in one write (default 500).
        linger: seconds the oldest pending record may wait before a flush (default 5.0).
        max_pending: the most records held, pending or in flight (default 5 x max_batch).
        when_full: ``"block"``, ``"raise"``, ``"drop_newest"``, ``"drop_oldest"`` or
            ``"direct"`` (write the record alone, now).
        max_in_flight: the most batches written at once (default 1). Above 1 the batcher
            adapts: it halves its concurrency when the sink throttles, times out or answers
            slower than ``latency_target``, and grows it back by one per good round.
        write_timeout: seconds one sink write may take before it counts as failed
            (retriable, outcome unknown; default 30).
        close_timeout: the default deadline of :meth:`close` (default 15).
        retry: a :class:`RetryPolicy`.
        dead_letter: where records that can never be written go: a path (a SQLite
            dead-letter file; default ``dead_letters.db`` in the working directory, created
            at the first dead letter, closed with the batcher), a :class:`DeadLetter` store
            (``writebehind.SQLiteDeadLetter``, ``PostgresDeadLetter``), a callable taking a
            list of :class:`DeadLetterEntry` (sync or async), or None (counted, logged and
            published as events only).
        latency_target: seconds; a write slower than this halves the concurrency
            (default: ``write_timeout / 2``).
        instruments: objects with a ``write(attempt)`` context manager, entered around
            every sink write attempt (metrics, tracing); see :meth:`add_instrument`.
        clock: a :class:`Clock`; tests pass ``writebehind.testing.ManualClock``.
        name: a label for logs and events.
        event_buffer: how many events :meth:`events` keeps for readers (default 4,096).
    """

    def __init__(
        self,
        sink: Any,
        *,
        key: FieldSpec = None,
        version: FieldSpec = None,
        max_batch: int = 500,
        linger: float = 5.0,
        max_pending: int | None = None,
        when_full: str = "block",
        max_in_flight: int = 1,
        write_timeout: float = 30.0,
        close_timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterSpec | None = "dead_letters.db",
        latency_target: float | None = None,
        instruments: tuple[Instrument, ...] | list[Instrument] = (),
        clock: Clock | None = None,
        name: str = "default",
        event_buffer: int = 4096,
    ) -> None:
        if not callable(getattr(sink, "write", None)):
            raise ConfigError("sink: must have an 'async def write(self, batch)' method")
        self._opts = opts = Options(
            key=key, version=version, max_batch=max_batch, linger=linger,
            max_pending=max_pending or 0, when_full=when_full, max_in_flight=max_in_flight,
            write_timeout=write_timeout, close_timeout=close_timeout, name=name,
            event_buffer=event_buffer, latency_target=latency_target,
        )  # fmt: skip
        self._sink = sink
        self._clock = clock or MonotonicClock()
        self._intake = Intake(
            key=key,
            version=version,
            max_batch=max_batch,
            max_pending=opts.max_pending,
            when_full=when_full,
            clock=self._clock.monotonic,
        )
        self._events = EventBuffer(event_buffer, name)
        retry = retry or RetryPolicy()
        if not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry: must be a writebehind.RetryPolicy, got {retry!r}")
        self._health = SinkHealth(
            retry=retry, clock=self._clock, events=self._events, name=name,
            concurrency=AdaptiveConcurrency(max_in_flight, opts.latency_target),
            count=self._intake.count,
        )  # fmt: skip
        self._delivery = Delivery(
            sink, self._intake, retry=retry, write_timeout=write_timeout, clock=self._clock,
            dead_letter=_dead_letter_store(dead_letter), name=name, events=self._events,
            health=self._health,
        )  # fmt: skip
        self._owns_dead_letter = isinstance(dead_letter, str | os.PathLike)
        for instrument in instruments:
            self.add_instrument(instrument)
        self.name = name
        # the hot path, without a layer of call: see add_nowait's docstring
        self.add_nowait = self._intake.put_nowait  # type: ignore[method-assign,assignment]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._report: CloseReport | None = None
        self._close_lock: asyncio.Lock | None = None
        self._closed = asyncio.Event()  # set when close() has its report

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the sink and the flusher. ``async with`` calls this for you."""
        if self._loop is not None:
            raise WriteBehindError("the batcher was already started")
        loop = asyncio.get_running_loop()
        start = getattr(self._sink, "start", None)
        if start is not None:
            await start()
        self._loop = loop
        self._close_lock = asyncio.Lock()
        flusher = Flusher(self._intake, self._delivery, self._events, self._clock, self._opts, loop)
        self._flusher = flusher
        self._intake.bind(loop, flusher.wake, flusher.start_direct)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the batcher runs on (None before :meth:`start`)."""
        return self._loop

    @property
    def dead_letter(self) -> DeadLetter | None:
        """The dead-letter store (None when records are only counted)."""
        return self._delivery.dead_letter

    @property
    def options(self) -> Options:
        """The validated configuration (frozen)."""
        return self._opts

    def add_instrument(self, instrument: Instrument) -> None:
        """Enter ``instrument.write(attempt)`` around every sink write from now on.

        ``attempt`` is a :class:`WriteAttempt` (size, attempt number, flush reason; outcome,
        error and duration are filled in before the context exits). Instruments run on the
        event loop once per write, never per record; one that raises is logged and skipped.
        """
        if not callable(getattr(instrument, "write", None)):
            raise ConfigError(
                f"instrument: needs a write(attempt) method returning a context manager, "
                f"got {instrument!r}"
            )
        self._delivery.instruments = (*self._delivery.instruments, instrument)

    # -- adding ---------------------------------------------------------------------------
    def add_nowait(self, record: Any) -> Receipt:
        """Take ``record`` now, or raise ``BufferFull`` (under ``block``/``raise``).

        Under ``drop_newest``, ``drop_oldest`` and ``direct`` it never raises ``BufferFull``;
        it applies the policy. Safe to call from any thread.
        """
        return self._intake.put_nowait(record)

    async def add(self, record: Any, *, timeout: float | None = None) -> Receipt:
        """Take ``record``, waiting for room under ``when_full="block"``.

        ``timeout`` bounds the wait (``BufferFull`` after it). Under ``"raise"`` a full buffer
        raises ``BufferFull`` at once. Under ``"direct"``, a record that found the buffer full
        is written alone and ``add()`` returns when that write is settled.
        """
        try:
            r = self._intake.put_nowait(record)
        except BufferFull:
            if self._opts.when_full != "block":
                raise
            return await self._add_when_room(record, timeout)
        if self._opts.when_full == "direct":  # only this policy attaches a batch at add time
            batch = r.batch
            if batch is not None and batch.reason == "direct":
                await r.wait()
        return r

    async def _add_when_room(self, record: Any, timeout: float | None) -> Receipt:
        intake = self._intake
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BufferFull(f"no room in the buffer within {timeout} s")
            try:
                async with asyncio.timeout(remaining):
                    await intake.wait_room()
            except TimeoutError:
                continue
            r = intake.put(record)
            if r is not None:
                return r

    def add_from_thread(self, record: Any, *, timeout: float | None = None) -> Receipt:
        """The thread API of :meth:`add`: blocks this (non-loop) thread instead of awaiting."""
        self._not_on_loop("add")
        r = self._intake.put_blocking(record, timeout)
        if self._opts.when_full == "direct" and r.batch is not None and r.batch.reason == "direct":
            r.result()
        return r

    def _not_on_loop(self, what: str) -> None:
        if threading.get_ident() == self._intake.loop_thread:
            raise WriteBehindError(
                f"Batcher.{what}() called from the batcher's own event-loop thread (a sink or "
                f"callback?) would deadlock; use add_nowait() there"
            )

    # -- events, flush, stats, close ------------------------------------------------------
    def events(self, since: int | None = None) -> Subscription:
        """Typed events, oldest first: ``async for event in batcher.events(since=0): ...``.

        ``since=i`` starts at event ``i`` if it is still held, else at the oldest held;
        ``None`` starts with the next event. The iterator's ``started_at`` says where it
        started. A reader that falls more than ``event_buffer`` events behind gets
        ``SubscriberLagged`` (with ``resume_from``); writers never wait for readers. The
        iterator ends after the ``Closed`` event.
        """
        return self._events.subscribe(since)

    async def flush(self, *, timeout: float | None = None) -> None:
        """Return when every record accepted before the call is committed or dead-lettered.

        ``timeout`` bounds the wait (``TimeoutError``); the flush itself goes on.
        """
        if self._flusher is None:
            raise WriteBehindError("the batcher is not started")
        if self._report is not None:
            return
        if self._flusher.closing:  # close() flushes everything: wait for it, and its report
            async with asyncio.timeout(timeout):
                await self._closed.wait()
            return
        fut = self._flusher.request_flush()
        async with asyncio.timeout(timeout):
            await asyncio.shield(fut)

    def stats(self) -> Stats:
        """A frozen snapshot of every counter (safe from any thread, also after close)."""
        health = self._health
        return replace(
            self._intake.stats(), sink_state=health.state, concurrency=health.concurrency.current
        )

    async def close(self, timeout: float | None = None) -> CloseReport:
        """Stop accepting, flush everything, wait at most ``timeout`` s (default: the
        ``close_timeout`` given at construction), and report.

        Records still pending or in flight at the deadline are counted in ``lost``, their
        receipts resolve ``LOST``, and a WARNING is logged. Calling it again returns the
        same report.
        """
        if self._report is not None:
            return self._report
        if self._flusher is None or self._close_lock is None:
            self._intake.close()
            self._report = CloseReport(stats=self.stats(), lost=0, timed_out=False, duration=0.0)
            return self._report
        async with self._close_lock:
            if self._report is None:
                self._report = await self._close(
                    self._opts.close_timeout if timeout is None else timeout
                )
                self._closed.set()
        return self._report

    async def _close(self, timeout: float) -> CloseReport:
        assert self._flusher is not None
        started = time.monotonic()
        self._intake.close()
        drained = await self._flusher.drain(timeout)
        await self._flusher.stop(abandon=not drained)
        timed_out = not drained
        sink_close = getattr(self._sink, "close", None)
        if sink_close is not None:
            try:
                async with asyncio.timeout(max(0.25, timeout - (time.monotonic() - started))):
                    await sink_close()
            except Exception:
                log.exception("writebehind[%s]: closing the sink failed", self.name)
        store = self._delivery.dead_letter
        if self._owns_dead_letter and store is not None:
            try:
                await store.close()  # type: ignore[attr-defined]
            except Exception:
                log.exception("writebehind[%s]: closing the dead-letter store failed", self.name)
        stats = self.stats()
        report = CloseReport(
            stats=stats, lost=stats.lost, timed_out=timed_out, duration=time.monotonic() - started
        )
        self._events.publish(Closed, report=report)
        self._events.close()
        if report.lost:
            log.warning(
                "writebehind[%s]: closed after %.1f s with %d record(s) lost (neither committed "
                "nor dead-lettered): %d pending, %d in flight",
                self.name,
                report.duration,
                report.lost,
                stats.pending,
                stats.in_flight,
            )
        return report


def _dead_letter_store(spec: DeadLetterSpec | None) -> DeadLetter | None:
    if spec is None:
        return None
    if isinstance(spec, str | os.PathLike):
        from .dlq import SQLiteDeadLetter

        return SQLiteDeadLetter(spec)
    if callable(getattr(spec, "put", None)):
        return spec  # type: ignore[return-value]
    if callable(spec):
        return CallableDeadLetter(spec)
    raise ConfigError(
        f"dead_letter: must be a DeadLetter store (with an async put(entries) method), a "
        f"callable taking a list of DeadLetterEntry, a path to a SQLite file, or None; got "
        f"{spec!r}"
    )
