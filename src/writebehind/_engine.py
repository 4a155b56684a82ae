"""``AsyncBatcher``: the engine. The flusher task, flush(), close() and the thread entry.

One flusher task per batcher asks :func:`writebehind._flush.decide` what to do each time it
wakes, cuts batches from the :class:`~writebehind._buffer.Intake`, and starts one delivery
task per batch (at most ``max_in_flight`` at once). Everything per record happens in the
intake; everything per batch happens here and in :mod:`writebehind._dispatch`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import TracebackType
from typing import Any, Self

from ._buffer import WHEN_FULL, Intake
from ._clock import Clock, MonotonicClock
from ._dispatch import DeadLetterFn, Delivery
from ._errors import BufferFull, ConfigError, WriteBehindError
from ._flush import decide
from ._keys import FieldSpec, make_getter
from ._receipt import Batch, Outcome, Receipt
from ._retry import RetryPolicy
from ._stats import CloseReport, Stats

__all__ = ["AsyncBatcher"]

log = logging.getLogger("writebehind")

_CANCEL_GRACE = 0.25  # seconds a cancelled write gets to unwind after the close deadline


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
        max_in_flight: batches written concurrently (default 1).
        write_timeout: seconds one sink write may take before it counts as failed
            (retriable, outcome unknown; default 30).
        close_timeout: the default deadline of :meth:`close` (default 15).
        retry: a :class:`RetryPolicy`.
        dead_letter: called with ``(records, error)`` for records that can never be written.
        clock: a :class:`Clock`; tests pass ``writebehind.testing.ManualClock``.
        name: a label for logs.
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
        dead_letter: DeadLetterFn | None = None,
        clock: Clock | None = None,
        name: str = "default",
    ) -> None:
        if not callable(getattr(sink, "write", None)):
            raise ConfigError("sink: must have an 'async def write(self, batch)' method")
        _positive_int("max_batch", max_batch)
        _positive_int("max_in_flight", max_in_flight)
        if max_pending is None:
            max_pending = 5 * max_batch
        _positive_int("max_pending", max_pending)
        if max_pending < max_batch:
            raise ConfigError(f"max_pending: must be >= max_batch ({max_batch}), got {max_pending}")
        for arg, value in (("linger", linger),):
            if not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"{arg}: must be a number of seconds >= 0, got {value!r}")
        for arg, value in (("write_timeout", write_timeout), ("close_timeout", close_timeout)):
            if not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"{arg}: must be a number of seconds > 0, got {value!r}")
        if when_full == "spill":
            raise ConfigError(
                "when_full: 'spill' needs the durable spool, which this version does not have "
                f"yet; use one of {', '.join(WHEN_FULL)}"
            )
        if when_full not in WHEN_FULL:
            raise ConfigError(
                f"when_full: must be one of {', '.join(WHEN_FULL)}; got {when_full!r}"
            )
        if version is not None and key is None:
            raise ConfigError("version: needs a key (versions only order records with one key)")
        self._sink = sink
        self._clock = clock or MonotonicClock()
        self._max_batch = max_batch
        self._linger = float(linger)
        self._max_in_flight = max_in_flight
        self._when_full = when_full
        self._close_timeout = close_timeout
        self._intake = Intake(
            key=make_getter(key, "key", for_key=True),
            version=make_getter(version, "version", for_key=False),
            key_spec=key,
            version_spec=version,
            max_batch=max_batch,
            max_pending=max_pending,
            when_full=when_full,
            clock=self._clock.monotonic,
        )
        self._delivery = Delivery(
            sink,
            self._intake,
            retry=retry or RetryPolicy(),
            write_timeout=write_timeout,
            clock=self._clock,
            dead_letter=dead_letter,
            name=name,
        )
        self.name = name
        # the hot path, without a layer of call: see add_nowait's docstring
        self.add_nowait = self._intake.put_nowait  # type: ignore[method-assign,assignment]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._writing: dict[asyncio.Task[None], Batch] = {}  # counted against max_in_flight
        self._direct: dict[asyncio.Task[None], Batch] = {}
        self._forced = 0
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._flush_group: tuple[list[Batch], list[asyncio.Future[None]]] | None = None
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        self._report: CloseReport | None = None
        self._close_lock: asyncio.Lock | None = None
        self._aux: set[asyncio.Task[None]] = set()
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
        self._event = asyncio.Event()
        self._close_lock = asyncio.Lock()
        self._intake.bind(loop, self._event.set, self._start_direct)
        self._flusher = loop.create_task(self._run(), name=f"writebehind-flusher[{self.name}]")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

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
            if self._when_full != "block":
                raise
            return await self._add_when_room(record, timeout)
        if self._when_full == "direct":  # only this policy attaches a batch at add time
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
        if self._when_full == "direct" and r.batch is not None and r.batch.reason == "direct":
            r.result()
        return r

    def _not_on_loop(self, what: str) -> None:
        if threading.get_ident() == self._intake.loop_thread:
            raise WriteBehindError(
                f"Batcher.{what}() called from the batcher's own event-loop thread (a sink or "
                f"callback?) would deadlock; use add_nowait() there"
            )

    # -- the flusher ----------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._flush_loop()
        except Exception:
            log.exception(
                "writebehind[%s]: the flusher failed; no more batches will be cut", self.name
            )
            raise

    async def _flush_loop(self) -> None:
        assert self._event is not None
        assert self._loop is not None
        intake, event, clock = self._intake, self._event, self._clock
        while True:
            event.clear()
            pending, oldest_at = intake.begin_decision()
            if self._flush_waiters:
                if self._flush_group is None:
                    self._flush_group = ([*self._writing.values(), *self._direct.values()], [])
                self._flush_group[1].extend(self._flush_waiters)
                self._flush_waiters = []
                self._forced = pending
            d = decide(
                now=clock.monotonic(),
                pending=pending,
                oldest_at=oldest_at,
                max_batch=self._max_batch,
                linger=self._linger,
                forced=self._forced,
                closing=self._closing,
                batches_in_flight=len(self._writing),
                max_in_flight=self._max_in_flight,
            )
            if d.reason is not None:
                receipts = intake.cut(self._max_batch)
                batch = Batch(receipts, d.reason, self._loop)
                for r in receipts:
                    r._batch = batch
                self._forced = max(0, self._forced - len(receipts))
                if self._flush_group is not None:
                    self._flush_group[0].append(batch)
                task = self._loop.create_task(self._deliver(batch, direct=False))
                self._writing[task] = batch
            if self._flush_group is not None and self._forced == 0:
                batches, waiters = self._flush_group
                self._flush_group = None
                aux = self._loop.create_task(_settle_flush(batches, waiters))
                self._aux.add(aux)
                aux.add_done_callback(self._aux.discard)
            drained = self._closing and pending == 0 and not self._writing and not self._direct
            if drained and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            if d.reason is not None:
                continue
            timeout = None if d.wake_at is None else d.wake_at - clock.monotonic()
            await clock.wait(event, timeout)

    def _start_direct(self, batch: Batch) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._deliver(batch, direct=True))
        self._direct[task] = batch

    async def _deliver(self, batch: Batch, *, direct: bool) -> None:
        try:
            await self._delivery.deliver(batch.receipts, direct=direct)
        finally:
            batch.finish()
            task = asyncio.current_task()
            (self._direct if direct else self._writing).pop(task, None)  # type: ignore[arg-type]
            if self._event is not None:
                self._event.set()

    # -- flush, stats, close --------------------------------------------------------------
    async def flush(self, *, timeout: float | None = None) -> None:
        """Return when every record accepted before the call is committed or dead-lettered.

        ``timeout`` bounds the wait (``TimeoutError``); the flush itself goes on.
        """
        if self._loop is None or self._event is None:
            raise WriteBehindError("the batcher is not started")
        if self._report is not None:
            return
        if self._closing:  # close() flushes everything: wait for it, and its report
            async with asyncio.timeout(timeout):
                await self._closed.wait()
            return
        fut = self._loop.create_future()
        self._flush_waiters.append(fut)
        self._event.set()
        async with asyncio.timeout(timeout):
            await asyncio.shield(fut)

    def stats(self) -> Stats:
        """A frozen snapshot of every counter (safe from any thread, also after close)."""
        return self._intake.stats()

    async def close(self, timeout: float | None = None) -> CloseReport:
        """Stop accepting, flush everything, wait at most ``timeout`` s (default: the
        ``close_timeout`` given at construction), and report.

        Records still pending or in flight at the deadline are counted in ``lost``, their
        receipts resolve ``LOST``, and a WARNING is logged. Calling it again returns the
        same report.
        """
        if self._report is not None:
            return self._report
        if self._loop is None or self._close_lock is None:
            self._intake.close()
            self._report = CloseReport(stats=self.stats(), lost=0, timed_out=False, duration=0.0)
            return self._report
        async with self._close_lock:
            if self._report is None:
                self._report = await self._close(
                    self._close_timeout if timeout is None else timeout
                )
                self._closed.set()
        return self._report

    async def _close(self, timeout: float) -> CloseReport:
        assert self._loop is not None
        assert self._event is not None
        assert self._flusher is not None
        started = time.monotonic()
        self._intake.close()
        self._closing = True
        self._drained = self._loop.create_future()
        self._event.set()
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._drained)
        except TimeoutError:
            timed_out = True
        self._flusher.cancel()
        tasks = {**self._writing, **self._direct}
        if timed_out:
            self._intake.abandon()
            for batch in tasks.values():  # before cancelling: finish() lets go of receipts
                for r in batch.receipts:
                    if r.outcome is None:
                        r._outcome = Outcome.LOST
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
            for batch in tasks.values():
                batch.finish()
        await asyncio.wait([self._flusher], timeout=_CANCEL_GRACE)
        sink_close = getattr(self._sink, "close", None)
        if sink_close is not None:
            try:
                async with asyncio.timeout(
                    max(_CANCEL_GRACE, timeout - (time.monotonic() - started))
                ):
                    await sink_close()
            except Exception:
                log.exception("writebehind[%s]: closing the sink failed", self.name)
        for fut in [*self._flush_waiters, *(self._flush_group[1] if self._flush_group else ())]:
            if not fut.done():  # a flush() that raced close(): nothing more will be written
                fut.set_result(None)
        self._flush_waiters, self._flush_group = [], None
        stats = self.stats()
        report = CloseReport(
            stats=stats, lost=stats.lost, timed_out=timed_out, duration=time.monotonic() - started
        )
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


async def _settle_flush(batches: list[Batch], waiters: list[asyncio.Future[None]]) -> None:
    for batch in batches:
        await batch.wait()
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


def _positive_int(arg: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{arg}: must be an integer >= 1, got {value!r}")
