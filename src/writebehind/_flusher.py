"""``Flusher``: one batcher's flush loop and the delivery tasks it starts.

Each time it wakes, it asks :func:`writebehind._decide.decide` whether to cut a batch, cuts
it from the :class:`~writebehind._intake.Intake`, and starts one delivery task per batch (at
most the adaptive concurrency, itself at most ``max_in_flight``, at once; ``direct`` writes
run beside them). It also turns the
intake's "the buffer was full" notices into events, answers ``flush()`` requests, and, at
close, drains or abandons what is in flight.

With a capacity (``capacity=``), a batch is cut only once its cost is granted, and cut to
fit what was granted: when not even the oldest record fits, the loop sleeps until it would
(one timer; a change of the capacity's rate wakes it). ``pause()`` holds every cut, and
every write's start, for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ._clock import Clock
from ._config import Options
from ._cost import cost_of, head_cost, pending_cost
from ._decide import CutReason, decide
from ._delivery import Delivery
from ._events import (
    BufferFilled,
    CapacityChanged,
    EventBuffer,
    Paused,
    RecordsDropped,
    Resumed,
)
from ._intake import Intake
from ._receipt import Batch, Outcome
from ._tasks import cancelled_by_batcher, spawn

__all__ = ["Flusher"]

log = logging.getLogger("writebehind")

_CANCEL_GRACE = 0.25  # seconds a cancelled write gets to unwind after the close deadline
_RECHECK = 1.0  # seconds between two looks at a capacity that grants nothing (rate 0)


class Flusher:
    """Runs on the batcher's event loop from ``start()`` to ``close()``."""

    def __init__(
        self,
        intake: Intake,
        delivery: Delivery,
        events: EventBuffer,
        clock: Clock,
        opts: Options,
        loop: asyncio.AbstractEventLoop,
        on_shutdown: Callable[[], bool],
    ) -> None:
        self.intake, self.delivery, self.events = intake, delivery, events
        self.clock, self.opts, self.loop = clock, opts, loop
        self.event = asyncio.Event()
        self.writing: dict[asyncio.Task[None], Batch] = {}  # counted against max_in_flight
        self.direct: dict[asyncio.Task[None], Batch] = {}
        self.closing = False
        self.drained: asyncio.Future[None] = loop.create_future()
        self._forced = 0  # pending records flush() still wants cut
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._flush_group: tuple[list[Batch], list[asyncio.Future[None]]] | None = None
        self._aux: set[asyncio.Task[None]] = set()
        self._on_shutdown = on_shutdown
        self.hold: asyncio.Future[Any] | None = None  # the flusher task outlives this
        self.task: asyncio.Task[None] | None = None
        self.capacity = opts.capacity  # None once released at close
        self.in_flight_cost = 0.0  # what the batches being written cost together
        self.resume_at = float("-inf")  # pause(): nothing is cut or starts before this
        self._paused_since: float | None = None

    def start(self) -> None:
        """Start the flush loop (a task that survives the loop's shutdown: see _tasks), and
        start spending from the capacity (the first batcher to use it starts it)."""
        if self.capacity is not None:
            self.capacity.attach(self.needs, self._rate_changed, self.clock)
            self.delivery.charge = self.pay
        self.task = self._spawn(self._run(), f"writebehind-flusher[{self.opts.name}]")

    async def pay(self, cost: float) -> None:
        """Wait until the capacity grants ``cost`` and take it (a write the cut did not pay
        for: a direct write, a retry, a split half). Cancelled at the close deadline."""
        while (cap := self.capacity) is not None:
            if cap.take(cost, cost, self) is not None:
                return
            wait = cap.wait_for(cost, self, cost)
            await self.clock.sleep(_RECHECK if wait is None else max(wait, 1e-3))

    def needs(self) -> float:
        """What the records pending and in flight cost together (from any thread)."""
        return pending_cost(self.intake) + self.in_flight_cost

    def _rate_changed(self, reason: str) -> None:
        """The capacity's rate changed (called from any thread): tell the loop."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self.loop.call_soon_threadsafe(self._publish_rate, reason)

    def _publish_rate(self, reason: str) -> None:
        cap = self.capacity
        if cap is None:  # released at close meanwhile
            return
        partitions = cap.describe().get("partitions")
        self.events.publish(CapacityChanged, per_second=cap.rate, reason=reason,
                            partitions=partitions)  # fmt: skip
        self.event.set()

    def pause(self, seconds: float) -> None:
        """No batch is cut and no write starts for ``seconds`` (loop thread)."""
        now = self.clock.monotonic()
        until = now + seconds
        if until <= self.resume_at or self.closing:
            return
        if self._paused_since is None:
            self._paused_since = now
            self.intake.count(pauses=1)
        self.resume_at = until
        health = self.delivery.health  # retries and direct writes wait too
        health.resume_at = max(health.resume_at, until)
        self.events.publish(Paused, reason="requested", error="", seconds=seconds)
        self.event.set()

    def _check_resumed(self, now: float) -> float | None:
        """Publish ``Resumed`` once a pause is over; else when it ends (None: not paused)."""
        if self._paused_since is None:
            return None
        if now < self.resume_at:
            return self.resume_at
        self.events.publish(Resumed, reason="requested", paused_for=now - self._paused_since)
        self._paused_since = None
        return None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return spawn(self.loop, coro, name, self._on_shutdown)

    def wake(self) -> None:
        self.event.set()

    def request_flush(self) -> asyncio.Future[None]:
        """A future resolved once everything pending now (and in flight) is settled."""
        fut = self.loop.create_future()
        self._flush_waiters.append(fut)
        self.event.set()
        return fut

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            hold = self.hold
            if hold is not None and not hold.done():
                # asyncio.run() is shutting down and waits for this task: stay until the
                # close that the shutdown started has finished (see AsyncBatcher._orphaned)
                await asyncio.wait([hold])
            raise
        except Exception:
            log.exception(
                "writebehind[%s]: the flusher failed; no more batches will be cut", self.opts.name
            )
            raise

    async def _loop(self) -> None:
        intake, event, clock, opts = self.intake, self.event, self.clock, self.opts
        while True:
            event.clear()
            intake.refill()  # when_full="spill": spilled records into the room there is
            pending, oldest_at = intake.begin_decision()
            spilled = len(intake.spilled) if intake.spilled is not None else 0
            self.publish_notice()
            if self._flush_waiters:
                in_flight = [*self.writing.values(), *self.direct.values()]
                if self._flush_group is None:
                    self._flush_group = (in_flight, [])
                else:  # a later flush() waits for what is in flight now too (direct writes)
                    self._flush_group[0].extend(in_flight)
                self._flush_group[1].extend(self._flush_waiters)
                self._flush_waiters = []
                self._forced = pending + spilled
            if pending == 0 and spilled == 0:
                self._forced = 0  # all cut (spilled records that coalesced were counted)
            now = clock.monotonic()
            d = decide(
                now=now, pending=pending, oldest_at=oldest_at,
                max_batch=intake.max_batch, linger=opts.linger, forced=self._forced,
                closing=self.closing, batches_in_flight=len(self.writing),
                max_in_flight=self.delivery.health.concurrency.current,
                resume_at=self.resume_at, bytes_full=intake.bytes_full(),
            )  # fmt: skip
            wake_at = d.wake_at
            resumes = self._check_resumed(now)
            if resumes is not None:
                wake_at = resumes if wake_at is None else min(wake_at, resumes)
            cut = False
            if d.reason is not None:
                wait = self._cut(d.reason)
                cut = wait is None
                if wait is not None:  # the capacity has not granted the oldest record yet
                    wake_at = now + wait if wake_at is None else min(wake_at, now + wait)
            intake.release_room()
            if self._flush_group is not None and self._forced == 0:
                batches, waiters = self._flush_group
                self._flush_group = None
                aux = self._spawn(_settle_flush(batches, waiters), "writebehind-flush")
                self._aux.add(aux)
                aux.add_done_callback(self._aux.discard)
            drained = (
                self.closing
                and pending == 0
                and spilled == 0
                and not self.writing
                and not self.direct
            )
            if drained and not self.drained.done():
                self.drained.set_result(None)
            if cut:
                continue
            timeout = None if wake_at is None else wake_at - clock.monotonic()
            await clock.wait(event, timeout)

    def _cut(self, reason: CutReason) -> float | None:
        """Cut a batch and start its write (None); or, when the capacity does not grant the
        oldest record's cost yet, the seconds to wait before trying again."""
        intake, cap = self.intake, self.capacity
        most = intake.max_batch  # max_batch, or less with the default max_batch_bytes estimate
        if cap is None:
            receipts, cost = intake.cut(most)
        else:
            first, full = head_cost(intake, most)
            granted = cap.take(first, full, self)
            if granted is None:
                wait = cap.wait_for(first, self, full)
                return _RECHECK if wait is None else wait
            receipts, cost = intake.cut(most, granted)
            cap.give_back(granted - cost)
            if not receipts:  # a costlier version of the oldest record arrived meanwhile
                return 0.0  # (or every record cut had expired)
        if intake.ttl is not None:
            self.publish_notice()  # records that expired as they were cut
            if not receipts:
                return None
        self.in_flight_cost += cost
        batch = Batch(receipts, reason, self.loop, cost)
        for r in receipts:
            r._batch = batch
        self._forced = max(0, self._forced - len(receipts))
        if self._flush_group is not None:
            self._flush_group[0].append(batch)
        name = f"writebehind-write[{self.opts.name}]"
        self.writing[self._spawn(self._deliver(batch, direct=False), name)] = batch
        intake.just_cut = []  # in flight now, where peek() looks next (see _peek)
        return None

    def start_direct(self, batch: Batch) -> None:
        """Write a ``when_full="direct"`` record's batch of one, now; with a capacity, as
        soon as the capacity grants its cost (it waits for credit like any batch)."""
        batch.cost = cost_of(self.intake, batch.receipts)
        self.in_flight_cost += batch.cost
        name = f"writebehind-direct[{self.opts.name}]"
        self.direct[self._spawn(self._deliver(batch, direct=True), name)] = batch

    async def _deliver(self, batch: Batch, *, direct: bool) -> None:
        """The delivery boundary: every receipt of ``batch`` is settled when this returns,
        whatever the write, a hook or the dead-letter store raised, except when the
        batcher itself cancelled the write (then ``abandon`` counts it as lost)."""
        abandoned = False
        try:
            await self.delivery.deliver(
                batch.receipts, reason=batch.reason, direct=direct, paid=not direct
            )
        except BaseException as exc:  # a bug, or a user hook that raised: never lose silently
            if isinstance(exc, asyncio.CancelledError) and cancelled_by_batcher():
                abandoned = True
                raise
            fatal = isinstance(exc, KeyboardInterrupt | SystemExit)
            left = [r for r in batch.receipts if r.outcome is None]
            if left:
                log.error(
                    "writebehind[%s]: delivering a batch failed unexpectedly (%s); its %d "
                    "unsettled record(s) are dead-lettered",
                    self.opts.name, type(exc).__name__, len(left), exc_info=exc,
                )  # fmt: skip
                try:
                    await self.delivery.condemn(left, [r.record for r in left], exc, 0, direct)
                except BaseException as again:  # the store's own fatal error: still settle
                    if isinstance(again, asyncio.CancelledError) and cancelled_by_batcher():
                        abandoned = True
                        raise
                    still = [r for r in left if r.outcome is None]
                    self.delivery.intake.settle(still, Outcome.DEAD_LETTERED, direct=direct)
                    fatal = fatal or isinstance(again, KeyboardInterrupt | SystemExit)
            if fatal:
                raise
        finally:
            self.in_flight_cost -= batch.cost
            if not abandoned:  # abandoned: stop() marks what is unsettled LOST, then finishes
                batch.finish()
            task = asyncio.current_task()
            (self.direct if direct else self.writing).pop(task, None)  # type: ignore[arg-type]
            self.event.set()

    def publish_notice(self) -> None:
        """Publish the intake's news since the last look: a full buffer, records dropped."""
        notice = self.intake.take_notice()
        if notice is None:
            return
        filled, newest, oldest, expired = notice
        if filled:
            self.events.publish(BufferFilled, max_pending=self.intake.max_pending)
        for reason, count in (
            ("drop_newest", newest), ("drop_oldest", oldest), ("expired", expired)
        ):  # fmt: skip
            if count:
                self.events.publish(RecordsDropped, reason=reason, count=count)

    # -- close ------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Cut everything and wait until it is settled; False if ``timeout`` passed first."""
        self.closing = True
        now = self.clock.monotonic()
        if self.resume_at > now:  # close() ends a pause
            health = self.delivery.health
            if health.resume_at == self.resume_at:  # not a throttle's later resume
                health.resume_at = now
            self.resume_at = now
        self.event.set()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.drained)
        except TimeoutError:
            return False
        return True

    async def stop(self, *, abandon: bool) -> int:
        """Stop the loop. With ``abandon``: cancel the writes still running, give them a
        moment to unwind (a write that finishes, committed or not, settles as it ends), then
        count what is still held as lost (receipts resolve ``LOST``). Returns the lost count."""
        task = self.task
        assert task is not None
        me = asyncio.current_task()
        if task is not me:
            task.cancel()
        tasks = {**self.writing, **self.direct}
        lost = 0
        if abandon:
            in_flight = [r for b in tasks.values() for r in b.receipts]
            for writer in tasks:  # not `task`: that name is the flusher's own task
                writer.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
            lost = self.intake.abandon(in_flight)
            for batch in tasks.values():
                batch.finish()
        if task is not me and self.hold is not me:
            await asyncio.wait([task], timeout=_CANCEL_GRACE)  # type: ignore[type-var]
        for fut in [*self._flush_waiters, *(self._flush_group[1] if self._flush_group else ())]:
            if not fut.done():  # a flush() that raced close(): nothing more will be written
                fut.set_result(None)
        self._flush_waiters, self._flush_group = [], None
        self.publish_notice()
        self.release_capacity()
        return lost

    def release_capacity(self) -> None:
        """Stop spending from the capacity (the last batcher to let go stops it). Once."""
        cap, self.capacity = self.capacity, None
        if cap is not None:
            cap.detach(self.needs, self._rate_changed, self)


async def _settle_flush(batches: list[Batch], waiters: list[asyncio.Future[None]]) -> None:
    for batch in batches:
        await batch.wait()
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
