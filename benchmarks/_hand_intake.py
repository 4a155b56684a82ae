"""A careful hand-written intake with ``add_nowait``'s guarantees: the hot path's baseline.

What a competent engineer would write for the same promises, and nothing more: one
``threading.Lock`` round trip per record; one ``__slots__`` receipt; the key and version
read with ``operator.itemgetter`` (a ``uuid.UUID`` key hashed as its ``int``); a version of
None or NaN refused; a record whose key is pending coalesces (the newer or equal version
takes the slot, the loser's receipt points at the winner); a bound in records (a full
buffer refuses); a closed intake refuses; every record counted; the consumer woken (an
``asyncio.Event``) only when a batch is due (the first record of a window, or ``max_batch``
pending). Its consumer cuts the oldest ``max_batch`` records from the front (pending keys
kept oldest first in a deque beside the dict, as the batcher's) and settles them.

Written as a closure over locals, as the batcher's own ``put_nowait`` is, so that neither
side pays for attribute lookups the other avoids.
"""

from __future__ import annotations

import asyncio
import collections
import operator
import threading
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["HandIntake"]


class HandReceipt:
    __slots__ = ("_outcome", "_succ", "record", "version")
    _outcome: str
    _succ: HandReceipt

    def __init__(self, record: Any, version: Any) -> None:
        self.record = record
        self.version = version


class HandIntake:
    """``put_nowait(record)`` and ``cut()`` over one lock; ``counts`` as a list:
    accepted, coalesced, committed, in flight (held against the bound until settled)."""

    def __init__(
        self, key: str, version: str, max_batch: int, max_pending: int, wake: Callable[[], None]
    ) -> None:
        self.pending: dict[Any, HandReceipt] = {}
        self.order: collections.deque[Any] = collections.deque()
        self.lock = threading.Lock()
        self.counts = [0, 0, 0, 0]
        self.woken = False
        self.closed = False  # a closed intake refuses records
        self.max_batch = max_batch
        self.put_nowait = self._make_put(key, version, max_batch, max_pending, wake)

    def _make_put(
        self, key: str, version: str, max_batch: int, max_pending: int, wake: Callable[[], None]
    ) -> Callable[[Any], HandReceipt]:
        get_key, get_version = operator.itemgetter(key), operator.itemgetter(version)
        pending, remember, counts = self.pending, self.order.append, self.counts
        acquire, release = self.lock.acquire, self.lock.release
        uuid_type = uuid.UUID
        me = self

        def put_nowait(record: Any) -> HandReceipt:
            k = get_key(record)
            v = get_version(record)
            if type(k) is uuid_type:
                k = k.int
            if v is None or v != v:
                raise ValueError(f"version {v!r} cannot be ordered")
            r = HandReceipt(record, v)
            acquire()
            try:
                if me.closed:
                    raise RuntimeError("closed")
                old = pending.get(k)
                if old is not None:
                    if v >= old.version:
                        old._succ = r
                        pending[k] = r
                    else:
                        r._succ = old
                    counts[0] += 1
                    counts[1] += 1
                    return r
                n = len(pending)
                if n + counts[3] >= max_pending:
                    raise OverflowError("buffer full")
                pending[k] = r
                remember(k)
                counts[0] += 1
                if me.woken or (n and n + 1 < max_batch):
                    return r
                me.woken = True
            finally:
                release()
            wake()
            return r

        return put_nowait

    def cut(self) -> list[HandReceipt]:
        """The oldest ``max_batch`` pending records, settled as committed."""
        with self.lock:
            self.woken = False
            n = min(self.max_batch, len(self.pending))
            popleft, pop = self.order.popleft, self.pending.pop
            taken = [pop(popleft()) for _ in range(n)]
            self.counts[3] += n  # in flight
        for r in taken:
            r._outcome = "committed"
        with self.lock:
            self.counts[3] -= n
            self.counts[2] += n
        return taken


async def consume(intake: HandIntake, due: asyncio.Event, done: asyncio.Event) -> None:
    """The consumer: cut what is due whenever woken; at ``done``, cut everything."""
    while True:
        await due.wait()
        due.clear()
        while intake.cut():
            if not done.is_set():
                break
        if done.is_set() and not intake.pending:
            return
