"""The batcher's side of the durable spool (``spool=``): appending what ``add()`` takes,
marking done what is settled, recovering what a previous batcher left, and telling a
caller when its record is durable.

The log itself is :class:`writebehind.spool.SpoolLog` (framed, checksummed, group-committed
on a writer thread of its own). This module connects it to the intake:

- A record is appended and put into the buffer under one lock (``order``), so the spool
  holds records in the order the buffer took them (ties between versions replay as they
  happened), and the buffer's room is checked before the append: a record the buffer
  refuses is never in the spool.
- Every receipt of a spooled record carries its sequence number (``_seq``), set as the
  receipt is made (inside the intake's lock), so no settlement can miss it.
- The intake reports each receipt whose fate is final (committed, dead-lettered, superseded,
  dropped by policy): those are marked done and trimmed in time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._errors import BufferFull, ConfigError, WriteBehindError
from ._receipt import Receipt

if TYPE_CHECKING:
    from .spool import Spool, SpoolLog

__all__ = ["Spooling", "SpoolSpec"]

log = logging.getLogger("writebehind")

SpoolSpec = Any  # str | os.PathLike | writebehind.Spool (checked by Spooling.of)


class Spooling:
    """One batcher's spool: its log (opened at start), the append order and the seqs."""

    def __init__(self, spool: Spool, name: str) -> None:
        self.spool = spool
        self.name = name
        self.log: SpoolLog | None = None
        self.order = threading.Lock()
        self.current = 0  # the seq of the receipt being made (under ``order``)
        self.recovered = 0
        self.last = 0  # the highest seq appended

    @classmethod
    def of(cls, spec: SpoolSpec | None, name: str) -> Spooling | None:
        """None without ``spool=``; ``ConfigError`` for a value that is not a spool."""
        if spec is None:
            return None
        from .spool import Spool

        if not isinstance(spec, Spool | str | os.PathLike):
            raise ConfigError(
                f"spool: must be a directory path or a writebehind.Spool, got {spec!r}"
            )
        return cls(Spool.of(spec), name)

    # -- start and stop (off the event loop: they do file I/O) ----------------------------
    def open(self) -> list[tuple[int, Any]]:
        """Open and lock the spool, recover it; the records not yet done, in order."""
        from .spool import SpoolLog

        self.log = SpoolLog.open(self.spool)
        records = self.log.recovered()
        damage = self.log.damage
        if damage.frames or damage.bytes:
            log.warning(
                "writebehind[%s]: the spool held damaged data (%s); moved aside, the rest "
                "is recovered", self.name, damage,
            )  # fmt: skip
        self.recovered = len(records)
        if records:
            self.last = records[-1][0]
        return records

    def settle_tail(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) until every record appended so far is durable."""
        if self.log is None or self.last == 0:
            return True
        try:
            return self.log.wait_durable(self.last, timeout, tolerate_errors=True)
        except WriteBehindError:
            return False

    def close(self) -> None:
        logged, self.log = self.log, None
        if logged is not None:
            logged.close()

    # -- appending (any thread) ---------------------------------------------------------------
    def wrap(self, put: Callable[[Any], Receipt], has_room: Callable[[], bool],
             drops: bool) -> Callable[[Any], Receipt]:  # fmt: skip
        """``put_nowait`` in spool mode: check the buffer's room, append, then put (the
        receipt takes the seq as it is made). ``drops``: the policy never refuses."""
        order = self.order

        def put_spooled(record: Any) -> Receipt:
            spool_log = self.log
            if spool_log is None:
                raise WriteBehindError("the batcher's spool is not open (start the batcher)")
            with order:
                if not drops and not has_room():
                    return put(record)  # the buffer refuses (BufferFull): nothing appended
                seq = spool_log.append(record)  # RecordError, SpoolFull: nothing taken
                self.current = seq
                try:
                    r = put(record)
                except BaseException:
                    spool_log.done((seq,))  # refused after all (closed meanwhile)
                    raise
                finally:
                    self.current = 0
                self.last = seq
            return r

        return put_spooled

    def done(self, receipts: Iterable[Receipt]) -> None:
        """The intake's hook: these receipts' fates are final (called under its lock)."""
        spool_log = self.log
        if spool_log is None:
            return
        seqs = [s for r in receipts if (s := getattr(r, "_seq", 0))]
        if seqs:
            spool_log.done(seqs)

    @staticmethod
    def full(exc: BaseException) -> bool:
        """Whether ``exc`` says the spool (not the buffer) is full."""
        from .spool import SpoolFull

        return isinstance(exc, SpoolFull)

    # -- durability -------------------------------------------------------------------------
    def is_durable(self, r: Receipt) -> bool:
        seq = getattr(r, "_seq", 0)
        return self.log is not None and 0 < seq <= self.log.durable_seq

    async def durable(self, r: Receipt) -> None:
        """Wait on the running loop until ``r``'s record is fsynced."""
        seq = getattr(r, "_seq", 0)
        spool_log = self.log
        if seq == 0 or spool_log is None:
            return  # not spooled (dropped by a policy, refused) or the spool closed
        await spool_log.wait_durable_async(seq, tolerate_errors=True)

    def wait_durable(self, r: Receipt, timeout: float | None) -> bool:
        """Block this thread until ``r``'s record is fsynced (False after ``timeout``)."""
        seq = getattr(r, "_seq", 0)
        spool_log = self.log
        if seq == 0 or spool_log is None:
            return True
        return spool_log.wait_durable(seq, timeout, tolerate_errors=True)

    def wait_for_room(self, timeout: float | None) -> bool:
        """Block until the spool has room again (records were delivered and trimmed)."""
        spool_log = self.log
        return spool_log is None or spool_log.wait_for_room(timeout)

    async def room(self, timeout: float | None) -> None:
        """Wait on the loop for room in the spool; ``BufferFull`` after ``timeout``."""
        if not await asyncio.to_thread(self.wait_for_room, timeout):
            raise BufferFull(
                f"the spool held max_bytes={self.spool.max_bytes} for {timeout} s; the record "
                f"was not accepted"
            )

    def spooled(self, at_close: int) -> int:
        """Records in the spool not yet done (after close: those it left there)."""
        spool_log = self.log
        return at_close if spool_log is None else spool_log.stats().spooled
