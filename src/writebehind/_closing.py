"""How an ``AsyncBatcher`` closes: the close sequence within its deadline, and the closes
that come from outside its loop (exit, a closed loop, a sink stuck in a blocking call).

``AsyncBatcher.close()`` runs :func:`close_sequence` once, in a task shared by every caller;
``_lifecycle`` calls :func:`close_unclosed` for batchers the application never closed; when
the loop cannot run a close at all, :func:`abandon_without_loop` counts what is held as lost
(or spooled) from whichever thread this is. Each takes the batcher as ``b`` (an
``_engine.AsyncBatcher``, typed loosely: that module imports this one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import _lifecycle
from ._events import Closed
from ._spooling import off_loop
from ._stats import CloseReport

__all__ = ["abandon_without_loop", "close_sequence", "close_unclosed"]

log = logging.getLogger("writebehind")


async def close_sequence(b: Any, timeout: float) -> CloseReport:
    """The close: stop accepting, drain within ``timeout``, stop the flusher (abandoning
    what is left: lost, or spooled), close the spool, the sink and an owned dead-letter
    store, each within the deadline; publish ``Closed`` and log what was not written."""
    assert b._flusher is not None
    started = time.monotonic()
    deadline = started + timeout
    b._intake.close()
    drained = await b._flusher.drain(timeout)
    spooling = b._spooling
    if spooling is not None and not drained:  # what stays must be durable to be SPOOLED
        left = max(0.05, deadline - time.monotonic())
        await off_loop(spooling.settle_tail, left)
    await b._flusher.stop(abandon=not drained)
    if spooling is not None:
        await off_loop(spooling.close)
    await _bounded(b, b._sink, "close", deadline, "closing the sink")
    if b._owns_dead_letter:
        await _bounded(b, b._delivery.dead_letter, "close", deadline,
                            "closing the dead-letter store")  # fmt: skip
    b._health.limiter.flush()  # summaries still held back
    stats = b.stats()
    report = CloseReport(
        stats=stats, lost=stats.lost, timed_out=not drained,
        duration=time.monotonic() - started,
        spooled=0 if spooling is None else spooling.spooled(),
    )  # fmt: skip
    b._report = report
    b._intake.forget_thread()
    _lifecycle.unregister(b)
    b._events.publish(Closed, report=report)
    b._events.close()
    if stats.dropped:
        log.warning(
            "writebehind[%s]: %d record(s) were dropped while it ran (%s; when_full=%r, "
            "ttl=%r)",
            b.name, stats.dropped,
            ", ".join(f"{k} {v}" for k, v in stats.dropped_by_reason.items() if v),
            b._opts.when_full, b._opts.ttl,
        )  # fmt: skip
    if report.spooled:
        log.warning(
            "writebehind[%s]: closed after %.1f s with %d record(s) left in the spool "
            "(not written by the deadline); the next batcher on the spool delivers them",
            b.name, report.duration, report.spooled,
        )  # fmt: skip
    if report.lost:
        log.warning(
            "writebehind[%s]: closed after %.1f s with %d record(s) lost (neither committed "
            "nor dead-lettered): %d pending, %d in flight",
            b.name, report.duration, report.lost, stats.pending, stats.in_flight,
        )  # fmt: skip
    return report


async def _bounded(b: Any, obj: Any, method: str, deadline: float, what: str) -> None:
    """Call ``obj.method()`` if it exists, within the close deadline (at least 0.25 s)."""
    fn = getattr(obj, method, None)
    if fn is None:
        return
    try:
        async with asyncio.timeout(max(0.25, deadline - time.monotonic())):
            await fn()
    except TimeoutError:
        log.warning("writebehind[%s]: %s did not finish by the close deadline; left "
                    "behind", b.name, what)  # fmt: skip
    except Exception:
        log.exception("writebehind[%s]: %s failed", b.name, what)


def close_unclosed(b: Any, why: str) -> None:
    """Close from outside the loop (exit, a closing loop); blocks up to the deadline."""
    loop, flusher = b._loop, b._flusher
    if b._report is not None or b._forked or loop is None or flusher is None:
        return
    try:
        _lifecycle.warn_unclosed(b, why)
    except Exception:
        log.debug("writebehind[%s]: the ResourceWarning raised", b.name)
    if loop.is_closed():
        abandon_without_loop(b, "its event loop was closed with the batcher open")
        return
    if loop.is_running():
        if b._intake.on_loop_thread():
            return  # cannot block the loop's own thread; its shutdown closes us
        fut = asyncio.run_coroutine_threadsafe(b.close(), loop)
        try:
            fut.result(b._opts.close_timeout + 1.0)
        except TimeoutError:
            log.warning("writebehind[%s]: close did not finish in time", b.name)
    else:
        loop.run_until_complete(b._close_here())


def abandon_without_loop(b: Any, why: str) -> CloseReport:
    """Close when the loop cannot run the close (closed, or stuck in a sink's blocking
    call): count everything held as lost, from whichever thread this is."""
    flusher = b._flusher
    writes = () if flusher is None else (*flusher.writing.values(), *flusher.direct.values())
    b._intake.close()
    lost = b._intake.abandon([r for w in writes for r in w.receipts])
    if flusher is not None:
        flusher.release_capacity()
    if b._spooling is not None:
        b._spooling.close()  # a last group commit; what is in it waits for the next
    report = CloseReport(stats=b.stats(), lost=lost, timed_out=True, duration=0.0)
    b._report = report
    b._intake.forget_thread()
    _lifecycle.unregister(b)
    if lost:
        log.warning("writebehind[%s]: %s: %d record(s) lost", b.name, why, lost)
    return report
