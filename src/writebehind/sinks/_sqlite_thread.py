"""The pieces of ``SQLiteSink``'s write that let a cancelled await stop its thread.

The engine abandons a write by cancelling the task awaiting ``sink.write()``; the SQLite work
runs on the sink's own thread, which a cancellation does not stop. So each write is a
:class:`Job` that the awaiter marks ``abandoned`` and interrupts (``sqlite3``'s
``interrupt()``, which stops the statement running): the thread looks at the mark before it
starts, between statements, while it waits for another connection's lock (:func:`begin`, in
slices) and before ``COMMIT``. The awaiter then waits (:func:`settled`) for the thread to
return before deciding the outcome, interrupting again every 20 ms meanwhile, since an
interrupt made between two statements is lost. (There is no progress handler: a Python
callback inside SQLite's step takes the GIL back, which the step is meant to leave to the
event loop; ``_sqlite_batch``.)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ._sqlite_errors import SQLITE_BUSY, error_code

__all__ = ["POKE", "Abandoned", "Job", "Moved", "begin", "file_identity", "moved", "settled"]

POKE = 0.02
"""Seconds between the interrupts of an abandoned write, until its thread returns."""


class Job:
    """One write handed to the sink's thread; ``abandoned`` once its awaiter is cancelled."""

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False


class Abandoned(Exception):
    """Raised on the sink's thread to roll back a write whose awaiter was cancelled."""


class Moved(Exception):
    """The database file is not the one the sink opened (deleted or replaced)."""


def begin(conn: sqlite3.Connection, job: Job, busy_timeout: float) -> None:
    """``BEGIN IMMEDIATE``, waiting up to ``busy_timeout`` seconds for another connection's
    lock. SQLite's own busy wait (set short on the connection) ignores ``interrupt()``, so
    the wait is made of short ones, and an abandoned job stops between them."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if error_code(exc) != SQLITE_BUSY or job.abandoned:
                raise
            if time.monotonic() >= deadline:
                raise


def file_identity(path: str, where: str) -> tuple[int, int] | None:
    """The (device, inode) of the database file at ``where``; None for an in-memory one."""
    if path in ("", ":memory:"):
        return None
    st = os.stat(where)
    return st.st_dev, st.st_ino


def moved(where: str, file: tuple[int, int] | None) -> bool:
    """Whether the file at ``where`` is no longer ``file`` (the one a connection has open;
    None: in memory, never moved)."""
    if file is None:
        return False
    try:
        st = os.stat(where)
    except FileNotFoundError:
        return True
    return (st.st_dev, st.st_ino) != file


async def settled(fut: asyncio.Future[Any], poke: Callable[[], None] | None = None) -> None:
    """Wait until ``fut`` is done, through any further cancellation: a write's outcome is
    decided only once its thread has returned. ``poke`` (the abandon again) is called every
    :data:`POKE` seconds meanwhile: ``sqlite3``'s ``interrupt()`` stops only a statement
    that is running, so one made between two statements is lost, and the next statement
    would run to its end."""
    while not fut.done():
        try:
            await asyncio.wait([fut], timeout=POKE)
        except asyncio.CancelledError:
            continue
        if poke is not None and not fut.done():
            poke()
