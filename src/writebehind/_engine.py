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
from collections.abc import Iterable
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from . import _lifecycle
from ._aimd import AdaptiveConcurrency
from ._closing import abandon_without_loop, close_sequence, close_unclosed
from ._config import BatcherOptions, Options
from ._cost import pending_cost
from ._deadletter import DeadLetter, dead_letter_store
from ._delivery import Delivery
from ._errors import BufferFull, ConfigError, WriteBehindError
from ._events import EventBuffer, Subscription
from ._flusher import Flusher
from ._health import SinkHealth
from ._instrument import Instrument
from ._intake import Intake
from ._peek import newest_unwritten
from ._put_many import add_group
from ._put_one import FORKED, not_open
from ._receipt import Batch, Receipt
from ._receipt_group import Receipts
from ._retry import check_number
from ._spooling import Spooling, off_loop
from ._stats import CloseReport, Stats
from ._tasks import spawn
from .sinks._protocol import check_sink, check_sink_keys

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack for **kwargs is Python 3.12+

__all__ = ["AsyncBatcher"]

log = logging.getLogger("writebehind")

TURN = 128  # records between two turns add() gives the loop while a batch is written


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
        when_full: ``"block"``, ``"raise"``, ``"drop_newest"``, ``"drop_oldest"``,
            ``"direct"`` (write the record alone, now) or ``"spill"`` (with ``spool=``:
            memory first; a record that does not fit is appended to the spool, durable, and
            waits there for room, in order).
        max_in_flight: the most batches written at once (default 1). Above 1 the batcher
            adapts: it halves its concurrency when the sink throttles, times out or answers
            slower than ``latency_target``, and grows it back by one per good round.
        write_timeout: seconds one sink write may take before it counts as failed
            (retriable, outcome unknown; default 30).
        close_timeout: the default deadline of :meth:`close` (default 15).
        retry: a :class:`RetryPolicy`.
        dead_letter: where records that can never be written go: a path (a SQLite
            dead-letter file, created at the first dead letter, closed with the batcher), a
            :class:`DeadLetter` store (``writebehind.SQLiteDeadLetter``,
            ``PostgresDeadLetter``), a callable taking a list of :class:`DeadLetterEntry`
            (sync or async), or None, the default: counted, published as events and logged
            at ERROR (one line per 30 s, naming this option), but kept nowhere. Nothing is
            written to the working directory unless you ask for it.
        latency_target: seconds; a write slower than this halves the concurrency
            (default: ``write_timeout / 2``).
        instruments: objects with a ``write(attempt)`` context manager, entered around
            every sink write attempt (metrics, tracing); see :meth:`add_instrument`.
        clock: a :class:`Clock`; tests pass ``writebehind.testing.ManualClock``.
        name: a label for logs and events.
        event_buffer: how many events :meth:`events` keeps for readers (default 4,096).
        cost: what one record costs against ``capacity``: a number (default 1), a field
            name or a callable on the record. A batch costs the sum of its records'.
        capacity: a :class:`ProvisionedCapacity` or ``RedisSharedCapacity``: batches are
            cut only as their cost is granted, and every batcher holding the same object
            (in every process, for the Redis one) stays within its rate together. A
            record costing more than it could ever grant is refused with ``RecordError``.
    """

    def __init__(self, sink: Any, **options: Unpack[BatcherOptions]) -> None:
        check_sink(sink)
        self._opts = opts = Options.of(dict(options))
        self._sink = sink
        self._clock = opts.clock
        self._intake = Intake(opts)
        self._events = EventBuffer(opts.event_buffer, opts.name)
        self._health = SinkHealth(
            retry=opts.retry, clock=self._clock, events=self._events, name=opts.name,
            concurrency=AdaptiveConcurrency(opts.max_in_flight, opts.latency_target),
            count=self._intake.count,
        )  # fmt: skip
        self._delivery = Delivery(
            sink, self._intake, retry=opts.retry, write_timeout=opts.write_timeout,
            clock=self._clock, dead_letter=dead_letter_store(opts.dead_letter),
            name=opts.name, events=self._events, health=self._health,
        )  # fmt: skip
        self._owns_dead_letter = isinstance(opts.dead_letter, str | os.PathLike)
        for instrument in opts.instruments:
            self.add_instrument(instrument)
        self._spooling = Spooling.of(opts.spool, opts.name)
        # the hot path, without a layer of call: see add_nowait's docstring
        self.add_nowait = self._intake.put_nowait  # type: ignore[method-assign,assignment]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._report: CloseReport | None = None
        self._closing: asyncio.Task[CloseReport] | None = None  # the one close, shared
        self._forked = False
        self._facade = False  # a sync Batcher drives it (and handles exit and fork)
        self._turn = TURN  # records add() and add_many() take before the loop's next turn

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the sink and the flusher. ``async with`` calls this for you."""
        if self._forked:
            raise self._forked_error()
        if self._loop is not None:
            raise WriteBehindError("the batcher was already started")
        loop = asyncio.get_running_loop()
        check_sink_keys(self._opts.key, self._opts.version, self._sink, self._opts.merge)
        recovered: list[tuple[int, Any]] = []
        if self._spooling is not None:  # before the sink: a spool that cannot open starts nothing
            recovered = await off_loop(self._spooling.open)  # file I/O, not on the loop
        start = getattr(self._sink, "start", None)
        if start is not None:
            try:
                await start()
            except BaseException:
                if self._spooling is not None:
                    await off_loop(self._spooling.close)
                raise
        if self._spooling is not None:
            recover = self._intake.use_spool(self._spooling)
            self.add_nowait = self._intake.put_nowait  # type: ignore[method-assign,assignment]
        self._loop = loop
        self._events.loop = loop
        flusher = Flusher(
            self._intake, self._delivery, self._events, self._clock, self._opts, loop,
            on_shutdown=self._orphaned,
        )  # fmt: skip
        self._flusher = flusher
        if self._spooling is not None:  # no add slips in before the recovered records
            with self._spooling.order:
                self._intake.bind(loop, flusher.wake, flusher.start_direct)
                self._spooling.take_back(recovered, recover)
        else:
            self._intake.bind(loop, flusher.wake, flusher.start_direct)
        flusher.start()
        if not self._facade:
            _lifecycle.register(self)
            _lifecycle.watch_loop(loop)

    @property
    def name(self) -> str:
        """The label given as ``name=`` (logs, events, metrics)."""
        return self._opts.name

    @property
    def close_timeout(self) -> float:
        """The default deadline of :meth:`close`, in seconds."""
        return self._opts.close_timeout

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

    def add_many_nowait(self, records: Iterable[Any]) -> Receipts:
        """Take a group of records now, in one lock round trip (for producers that already
        hold a list): each as ``add_nowait`` would take it, in order. Any thread.

        A record whose key or version is None (or a NaN version) refuses the whole group
        with ``RecordError`` before any is taken. If the buffer fills part-way (``block``,
        ``raise``), ``BufferFull`` is raised and the records before it stay taken: the
        error's ``receipts`` holds theirs. See :class:`Receipts` for the group's outcome.
        """
        return Receipts(self._intake.put_many(records))

    async def add_many(self, records: Iterable[Any], *, timeout: float | None = None) -> Receipts:
        """Take a group of records, waiting for room as ``add()`` does (``timeout`` bounds
        the whole group); in spool mode it returns once the last record is fsynced. Much
        cheaper per record than ``add()`` in a loop: one lock round trip while there is
        room. On an error part-way, the records before it stay taken (``exc.receipts``).
        ``await`` the result for the count of each outcome."""
        if self._spooling is not None:
            self._on_own_loop("add_many")
        elif self._turn <= 0:
            await self._give_turn()
        taken = await add_group(self._intake.put_many, self.add, records, timeout)
        self._turn -= len(taken)
        if self._opts.when_full == "direct":  # as add(): wait for records written alone
            for r in taken:
                batch = r.batch
                if batch is not None and batch.reason == "direct":
                    await r.wait()
        return Receipts(taken)

    def peek(self, key: Any) -> Any | None:
        """The newest record accepted for ``key`` and not written yet (pending, or in a
        write that has not committed), or None: then the datastore has the newest version
        this batcher was given (or the key was never added, or its record was dropped or
        dead-lettered). Lets a service answer a read of what it just accepted before the
        flush. ``key`` as the records hold it (a UUID, a tuple for a composite key). Any
        thread; returns the record object that was added (or merged: ``merge=``)."""
        flusher = self._flusher

        def in_flight() -> list[Batch]:
            if flusher is None:
                return []
            return [*flusher.writing.values(), *flusher.direct.values()]

        return newest_unwritten(self._intake, in_flight, key)

    async def add(self, record: Any, *, timeout: float | None = None) -> Receipt:
        """Take ``record``, waiting for room under ``when_full="block"``. In spool mode
        (``spool=``) it returns once the record is fsynced in the spool (group commit).

        ``timeout`` bounds the wait (``BufferFull`` after it). Under ``"raise"`` a full buffer
        raises ``BufferFull`` at once. Under ``"direct"``, a record that found the buffer full
        is written alone and ``add()`` returns when that write is settled; with
        ``max_pending`` direct writes already in flight it waits for room like ``"block"``.
        While a batch is written it lets the loop run once per ``TURN`` (128) records, before
        taking the record: cancelled there, it has taken nothing.
        """
        spooling = self._spooling
        if spooling is not None:  # spool mode: room in the buffer and the spool, durable
            self._on_own_loop("add")
            loop = self._loop
            assert loop is not None  # the running loop: _on_own_loop checked it
            r = await spooling.add(self._intake, record, timeout, self._opts.when_full, loop)
        else:
            turn = self._turn
            if turn > 0:
                self._turn = turn - 1
            else:
                await self._give_turn()
            try:
                r = self._intake.put_nowait(record)
            except BufferFull:
                if self._opts.when_full not in ("block", "direct"):
                    raise
                self._on_own_loop("add")
                r = await self._intake.put_waiting(record, timeout)
        if self._opts.when_full == "direct":  # only this policy attaches a batch at add time
            batch = r.batch
            if batch is not None and batch.reason == "direct":
                self._on_own_loop("add")
                await r.wait()
        return r

    async def _give_turn(self) -> None:
        """Let the loop run (a write's answers, the next cut) if a batch is being written."""
        self._turn = TURN
        flusher = self._flusher
        if flusher is not None and flusher.writing:
            await asyncio.sleep(0)

    def _on_own_loop(self, what: str) -> None:
        """Raise a clear error when awaited on a loop that is not the batcher's own."""
        if self._forked:
            raise self._forked_error()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise WriteBehindError(
                f"AsyncBatcher.{what}() awaited on another event loop than the batcher's own "
                f"(it was started on {self._loop!r}): a batcher lives on one loop. Create one "
                f"per loop, or use the thread-safe add_nowait() from other threads"
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

    async def flush(self, timeout: float | None = None) -> None:
        """Return when every record accepted before the call is committed or dead-lettered.

        ``timeout`` bounds the wait (``TimeoutError``); the flush itself goes on.
        """
        if self._forked:
            raise self._forked_error()
        if self._flusher is None:
            raise WriteBehindError("the batcher is not started")
        if self._report is not None:
            return
        self._on_own_loop("flush")
        if self._closing is not None:  # close() flushes everything: wait for it, and its report
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._closing)
            return
        fut = self._flusher.request_flush()
        async with asyncio.timeout(timeout):
            await asyncio.shield(fut)

    def stats(self) -> Stats:
        """A frozen snapshot of every counter (safe from any thread, also after close)."""
        health, flusher, cap = self._health, self._flusher, self._opts.capacity
        stats = self._intake.stats()
        in_flight_cost = 0.0 if flusher is None else flusher.in_flight_cost
        paused_for = 0.0 if flusher is None else flusher.resume_at - self._clock.monotonic()
        spooling = self._spooling
        return replace(
            stats, sink_state=health.state, concurrency=health.concurrency.current,
            needs_capacity=pending_cost(self._intake) + in_flight_cost,
            capacity=None if cap is None else cap.rate,
            paused_for=max(0.0, paused_for) if self._report is None else 0.0,
            spooled=0 if spooling is None else spooling.spooled(),
            recovered=0 if spooling is None else spooling.recovered,
        )  # fmt: skip

    def pause(self, seconds: float) -> None:
        """Cut no batch and start no write for ``seconds`` (the datastore is under pressure;
        go-batcher's ``Pause()``). Records keep arriving and coalescing meanwhile; a longer
        pause extends a shorter one, and a shorter one inside a longer one changes nothing.
        ``close()`` ends a pause: everything goes; ``flush()`` waits for it to end (give
        ``flush(timeout=...)`` a bound). A pause that starts or extends publishes
        ``Paused(reason="requested")``, and ``Resumed`` when it ends. Any thread.

        Raises ``ConfigError`` for ``seconds`` that is not a finite number >= 0, and
        ``WriteBehindError`` when the batcher is not running (not started, or closed)."""
        check_number("seconds", seconds, minimum=0, finite=True)
        if self._report is not None or self._intake.closed:
            raise WriteBehindError("pause(): the batcher is closed; there is nothing to pause")
        if self._flusher is None:
            raise WriteBehindError("pause(): the batcher is not running (start it first)")
        self._intake.call_in_loop(self._flusher.pause, float(seconds))

    async def close(self, timeout: float | None = None) -> CloseReport:
        """Stop accepting, flush everything, wait at most ``timeout`` s (default: the
        ``close_timeout`` given at construction), and report.

        Records still pending or in flight at the deadline are counted in ``lost``, their
        receipts resolve ``LOST``, and a WARNING is logged. Calling it again, or from several
        tasks at once, returns the same report. The close goes on if the caller is cancelled.
        """
        if self._report is not None:
            return self._report
        if self._forked:
            raise self._forked_error()
        if self._flusher is None:
            self._intake.close()
            self._report = CloseReport(stats=self.stats(), lost=0, timed_out=False, duration=0.0)
            return self._report
        self._on_own_loop("close")
        flusher = self._flusher
        me = asyncio.current_task()
        if me is not None and (me in flusher.writing or me in flusher.direct or me is flusher.task):
            raise WriteBehindError(
                "close() awaited inside the batcher's own write (from a sink or a hook) would "
                "wait for itself; schedule it instead: "
                "asyncio.get_running_loop().create_task(batcher.close())"
            )
        if self._closing is None:
            self._closing = self._spawn_close(
                self._opts.close_timeout if timeout is None else timeout
            )
        return await asyncio.shield(self._closing)

    def _spawn_close(self, timeout: float) -> asyncio.Task[CloseReport]:
        assert self._loop is not None
        return spawn(self._loop, self._close(timeout), f"writebehind-close[{self.name}]",
                     self._orphaned)  # fmt: skip

    def _orphaned(self) -> bool:
        """Its loop is shutting down (``asyncio.run`` returned, Ctrl-C) with the batcher
        open: close it within ``close_timeout``; the flusher task, which ``asyncio.run``
        waits for, stays until the close is done. False when already closed."""
        if self._report is not None or self._flusher is None:
            return False
        if self._closing is None:
            try:
                _lifecycle.warn_unclosed(self, "its event loop is shutting down")
            except Exception:  # warnings turned into errors must not break the shutdown
                log.debug("writebehind[%s]: the ResourceWarning raised", self.name)
            self._closing = self._spawn_close(self._opts.close_timeout)
        self._flusher.hold = self._closing
        return True

    async def _close(self, timeout: float) -> CloseReport:
        return await close_sequence(self, timeout)

    # -- process lifecycles (see _lifecycle) ------------------------------------------------
    def _close_unclosed(self, why: str) -> None:
        """Close from outside the loop (exit, a closing loop); blocks up to the deadline."""
        close_unclosed(self, why)

    def _abandon_without_loop(self, why: str) -> CloseReport:
        """Close when the loop cannot run the close: see ``_closing.abandon_without_loop``."""
        return abandon_without_loop(self, why)

    async def _close_here(self) -> CloseReport:
        if self._closing is None:
            self._closing = self._spawn_close(self._opts.close_timeout)
        return await asyncio.shield(self._closing)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the loop and the records stay the parent's; refuse use."""
        self._forked = True
        self._intake.forked()
        self.add_nowait = self._intake.put_nowait  # type: ignore[method-assign,assignment]

    def _forked_error(self) -> WriteBehindError:
        return not_open(FORKED)  # the one message, the intake's puts raise it too
