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
    """The ``ResourceWarning`` and WARNING line for a batcher nobody closed."""
    name = getattr(obj, "name", "?")
    warnings.warn(
        f"unclosed batcher {type(obj).__name__}(name={name!r}): {why}; closing it now. "
        f"Close it yourself ('with'/'async with', or close()) so nothing is left to chance",
        ResourceWarning,
        stacklevel=2,
    )
    log.warning(
        "writebehind[%s]: the batcher was not closed (%s); closing it within its close_timeout",
        name,
        why,
    )


def close_all(why: str) -> None:
    """Close every registered batcher concurrently; return within the largest
    ``close_timeout`` plus a second, even if a sink hangs."""
    with _lock:
        objs = list(_open)
    if not objs:
        return
    threads = []
    for obj in objs:
        t = threading.Thread(
            target=_close_one, args=(obj, why), name="writebehind-exit", daemon=True
        )
        t.start()
        threads.append(t)
    deadline = max(obj.close_timeout for obj in objs) + _EXIT_GRACE
    stop_at = _now() + deadline
    for t in threads:
        t.join(max(0.0, stop_at - _now()))


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
                mine = [o for o in _open if getattr(o, "loop", None) is loop]
            for obj in mine:
                try:
                    obj._close_unclosed("its event loop is closing")
                except Exception:
                    log.exception("writebehind[%s]: closing with the loop failed", obj.name)
        original()

    try:
        loop.close = close  # type: ignore[method-assign]
        loop._writebehind_watched = True  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
