"""What happens to batchers that the application never closed: exit, fork, a closed loop.

Services do not always end with a tidy ``with`` block. Every started batcher registers here
(weakly: registering keeps nothing alive), and this module closes the ones still open when:

- the interpreter exits (return, ``sys.exit``, an uncaught exception): an ``atexit`` hook
  closes them all concurrently, each within its own ``close_timeout``;
- a ``multiprocessing`` child ends (its workers leave through ``os._exit`` and skip
  ``atexit``): the same hook, registered with ``multiprocessing.util.Finalize``;
- a loop is closed with the batcher open (``loop.close()`` without ``asyncio.run``);
  ``asyncio.run`` itself is handled by the batcher's guarded tasks (see ``_tasks``).

Each unclosed batcher is reported with a ``ResourceWarning`` ("unclosed batcher") and a
WARNING line, and whatever it could not write is counted, logged and reported as lost.

After ``os.fork()``, the child must never write or report its parent's records: every
registered object is told (``_after_fork_in_child``) and the registry starts empty.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
import warnings
import weakref
from typing import Any, Protocol

__all__ = ["Closable", "register", "unregister", "watch_loop"]

log = logging.getLogger("writebehind")

_EXIT_GRACE = 1.0  # seconds beyond the largest close_timeout that exit may take


class Closable(Protocol):
    """What the registry needs of a batcher (``AsyncBatcher`` and ``Batcher``)."""

    @property
    def name(self) -> str: ...

    @property
    def close_timeout(self) -> float: ...

    def _close_unclosed(self, why: str) -> None:
        """Close now, from any thread but the batcher's own loop thread (blocking)."""

    def _after_fork_in_child(self) -> None:
        """Forget the parent's records and loop (called in the child, single-threaded)."""


_open: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_process_hooks = False
_mp_hook_pid = 0
_inherited: list[Any] = []  # the parent's objects in a forked child: kept, never finalised


def register(obj: Closable) -> None:
    """Track a started batcher until it closes."""
    _install_hooks()
    with _lock:
        _open.add(obj)


def unregister(obj: Closable) -> None:
    with _lock:
        _open.discard(obj)


def keep_inherited(*objs: Any) -> None:
    """Hold objects a forked child inherited from its parent (an engine, a loop) for the
    life of the process, so they are never finalised there."""
    _inherited.extend(o for o in objs if o is not None)


def warn_unclosed(obj: Any, why: str) -> None:
    """The ``ResourceWarning`` for a batcher nobody closed, and an INFO line. What it could
    not write is logged at WARNING with the count by the close itself; a close that loses
    nothing needs no warning in the log (a ``with`` block or ``atexit.register(b.close)``
    after this hook are both fine)."""
    name = getattr(obj, "name", "?")
    warnings.warn(
        f"unclosed batcher {type(obj).__name__}(name={name!r}): {why}; closing it now. "
        f"Close it yourself ('with'/'async with', or close()) so nothing is left to chance",
        ResourceWarning,
        stacklevel=2,
    )
    log.info(
        "writebehind[%s]: the batcher was not closed (%s); closing it within its close_timeout",
        name,
        why,
    )


def close_all(why: str) -> None:
    """Close every registered batcher concurrently; return within the largest
    ``close_timeout`` plus a second, even if a sink hangs.

    Batchers on one event loop that is not running (a loop left open by
    ``run_until_complete``) are closed together, in one run of that loop."""
    with _lock:
        objs = list(_open)
    if not objs:
        return
    idle: dict[int, list[Any]] = {}
    others: list[Any] = []
    for obj in objs:
        loop = getattr(obj, "loop", None)
        if loop is not None and not loop.is_running() and not loop.is_closed():
            idle.setdefault(id(loop), []).append(obj)
        else:
            others.append(obj)
    jobs: list[tuple[Any, tuple[Any, ...]]] = [(_close_one, (o, why)) for o in others]
    jobs += [(close_together, (group, why)) for group in idle.values()]
    threads = []
    for target, args in jobs:
        t = threading.Thread(target=target, args=args, name="writebehind-exit", daemon=True)
        t.start()
        threads.append(t)
    deadline = min(max(obj.close_timeout for obj in objs), threading.TIMEOUT_MAX) + _EXIT_GRACE
    stop_at = _now() + deadline
    for t in threads:
        t.join(max(0.0, stop_at - _now()))


def close_together(objs: list[Any], why: str) -> None:
    """Close batchers that share one idle (not running) loop, concurrently, in one run of
    it."""
    loop = objs[0].loop
    for obj in objs:
        try:
            warn_unclosed(obj, why)
        except Exception:
            log.debug("writebehind[%s]: the ResourceWarning raised", obj.name)

    async def all_of() -> None:
        await asyncio.gather(*(o._close_here() for o in objs), return_exceptions=True)

    try:
        loop.run_until_complete(all_of())
    except Exception:
        log.exception("writebehind: closing the batchers of an idle loop failed")


def _close_one(obj: Closable, why: str) -> None:
    try:
        obj._close_unclosed(why)
    except Exception:
        log.exception("writebehind[%s]: closing the unclosed batcher failed", obj.name)


def _now() -> float:
    import time

    return time.monotonic()


def _at_exit() -> None:
    close_all("the interpreter is exiting")


def _at_multiprocessing_exit() -> None:
    close_all("the multiprocessing child is exiting")


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # it may have been held by a thread that did not cross the fork
    objs = list(_open)
    _open.clear()
    for obj in objs:
        _inherited.append(obj)
        try:
            obj._after_fork_in_child()
        except Exception:  # never let one batcher break the child's start
            log.exception("writebehind: resetting a batcher after fork failed")


def _install_hooks() -> None:
    """The exit and fork hooks (once), and multiprocessing's finaliser (once per process
    that uses multiprocessing)."""
    global _process_hooks, _mp_hook_pid
    if not _process_hooks:
        _process_hooks = True
        # Close at exit *before* the interpreter shuts its thread pools down (then
        # to_thread(), getaddrinfo() and executor-backed stores refuse work) and before it
        # joins non-daemon threads (one blocked in add() would then wait for ever):
        # threading's own exit hooks run first, latest registered first, so
        # concurrent.futures' is registered before ours.
        import concurrent.futures.thread  # noqa: F401 - registers its exit hook now

        register_early = getattr(threading, "_register_atexit", None)
        if register_early is not None:
            register_early(_at_exit)
        else:  # pragma: no cover - a Python without it
            atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    pid = os.getpid()
    if _mp_hook_pid != pid and "multiprocessing" in sys.modules:
        _mp_hook_pid = pid
        from multiprocessing import util

        # runs in multiprocessing children, which leave through os._exit() (atexit skipped)
        util.Finalize(None, _at_multiprocessing_exit, exitpriority=100)


def watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close the batchers of ``loop`` before it closes (``loop.close()`` outside
    ``asyncio.run``). Loops whose ``close`` cannot be wrapped (uvloop) are left alone."""
    if getattr(loop, "_writebehind_watched", False):
        return
    original = loop.close

    def close() -> None:
        if not loop.is_running():
            with _lock:
                mine = [
                    o for o in _open
                    if getattr(o, "loop", None) is loop and o._report is None
                ]  # fmt: skip
            if mine:
                close_together(mine, "its event loop is closing")
        original()

    try:
        loop.close = close  # type: ignore[method-assign]
        loop._writebehind_watched = True  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
