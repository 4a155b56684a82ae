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
import contextlib
import datetime as dt
import decimal
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import BatcherClosed, BufferFull, ConfigError, RecordError, WriteBehindError
from ._receipt import Receipt

if TYPE_CHECKING:
    from ._intake import Intake
    from .spool import Spool, SpoolLog

__all__ = ["SpoolSpec", "Spooling", "off_loop"]

log = logging.getLogger("writebehind")

SpoolSpec = Any  # str | os.PathLike | writebehind.Spool (checked by Spooling.of)

T = TypeVar("T")

_FILESYSTEM: Any = None
"""A test hook: the ``writebehind.spool.FileSystem`` the next spool opens with (None: the
real one). tests/spool_kill_worker.py sets one that SIGKILLs the process at a named point."""

_POLL = 0.02  # seconds between two looks at a full spool (a wait holds no thread)
_WAITS = ("block", "direct", "spill")  # the policies under which add() waits for room


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
        self.left: int | None = None  # records left in the spool (once closed)
        self.taking: tuple[SpoolLog, bytes] | None = None  # the record being put (``order``)

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

        self.log = SpoolLog.open(self.spool, fs=_FILESYSTEM)
        records = self.log.take_recovered()
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

    def take_back(self, records: list[tuple[int, Any]], recover: Callable[[Any], Any]) -> None:
        """What :meth:`open` recovered, taken again in its order by ``recover`` (the put that
        takes records whatever the room: they were accepted once); coalescing applies
        across them. ``order`` is held, so no add slips in before them."""
        refused = 0
        for seq, record in records:
            self.current = seq
            try:
                recover(record)
            except RecordError:  # this batcher's key/version/cost= cannot take it
                refused += 1  # not marked done: it stays in the spool, never trimmed
        self.current = 0
        self.recovered -= refused  # Stats.recovered: the records taken back
        if refused:
            log.error(
                "writebehind[%s]: %d record(s) recovered from the spool do not fit this "
                "batcher's key, version or cost= and were not taken; they stay in the spool "
                "(its segment is kept) for a batcher configured as the one that wrote them",
                self.name, refused,
            )  # fmt: skip

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
            unsynced = logged.close()  # appended, never made durable: not in the spool
            self.left = logged.stats().spooled - unsynced  # what the next batcher finds

    # -- appending (any thread) ---------------------------------------------------------------
    def wrap(self, put: Callable[[Any], Receipt], intake: Intake,
             drops: bool) -> Callable[[Any], Receipt]:  # fmt: skip
        """``put_nowait`` in spool mode: check that the record comes back from the spool as
        the buffer reads it, encode it, then put it: ``put`` (built with
        ``_intake_spool.spooled_steps``) appends it to the spool under the buffer's lock
        once it knows the buffer takes it. ``drops``: a ``drop_*`` policy, which drops a
        record the full spool cannot take instead of raising."""
        from .spool._codec import encode_record

        order = self.order
        identity = intake.identity
        fields = intake.fields

        def put_spooled(record: Any) -> Receipt:
            spool_log = self._checked(record, identity, fields)
            payload = encode_record(record)  # RecordError: nothing taken
            with order:  # the put's steps append it (self.taking), under the buffer's lock
                self.taking = (spool_log, payload)
                try:
                    return put(record)
                except BufferFull:  # the spool is full (a put under drop_* never refuses)
                    if drops:
                        return intake.drop_new(record)
                    raise
                finally:
                    self.taking = None

        return put_spooled

    def _checked(self, record: Any, identity: Callable[[Any], tuple[Any, Any, float]],
                 fields: tuple[str, ...] | None) -> SpoolLog:  # fmt: skip
        """The open log, once ``record`` is known to come back from it as the buffer reads
        it (``BatcherClosed``, ``RecordError``)."""
        spool_log = self.log
        if spool_log is None:
            raise BatcherClosed("the batcher is closed and takes no more records")
        if fields is None or type(record) is not dict or not _plain(record, fields):
            _same_after_round_trip(record, identity)
        return spool_log

    def _appended(self, spool_log: SpoolLog, record: Any,
                  take: Callable[[Any], Receipt]) -> Receipt:  # fmt: skip
        """Append ``record`` (``RecordError``, ``SpoolFull``: nothing taken) and let ``take``
        make its receipt, which takes the seq as it is made; if ``take`` refuses it after all
        (closed, a bad key, cut meanwhile), the seq is marked done. ``order`` is held."""
        seq = spool_log.append(record)
        self.current = seq
        try:
            r = take(record)
        except BaseException:
            spool_log.done((seq,))
            raise
        finally:
            self.current = 0
        self.last = seq
        return r

    def wrap_spill(self, put: Callable[[Any], Receipt], spill: Callable[[Any], Receipt],
                   intake: Intake) -> Callable[[Any], Receipt]:  # fmt: skip
        """``put_nowait`` under ``when_full="spill"``: a record the buffer takes (room, no
        spilled record waiting, or its key pending) goes to memory only, as without a spool;
        any other is appended to the spool and queued (``spill``, the receipt taking the
        seq): it is durable at the next group commit, and the flusher moves it into the
        buffer when there is room (``Intake.refill``), oldest first. A full spool raises
        ``SpoolFull`` (a ``BufferFull``): ``add()`` waits for it to be trimmed."""
        order = self.order
        identity = intake.identity
        fields = intake.fields

        def put_spilling(record: Any) -> Receipt:
            # the same check for every record, spilled or not: whether a record is taken
            # must not depend on how full the buffer is
            spool_log = self._checked(record, identity, fields)
            # decide and put in one step: the intake's lock (reentrant in this mode) keeps
            # cut() from taking the key or the room between the two
            with order, intake.locked():
                if not intake.spill_next(record):
                    return put(record)
                return self._appended(spool_log, record, spill)

        return put_spilling

    def add(self, intake: Intake, record: Any, timeout: float | None, policy: str,
            loop: asyncio.AbstractEventLoop) -> Awaitable[Receipt]:  # fmt: skip
        """``AsyncBatcher.add`` in spool mode, on ``loop`` (the batcher's, running): wait for
        room in the buffer, or (polling on the loop, no thread held) in the spool, within one
        deadline; then for durability. The usual case (room) returns the durable wait's
        future itself, resolved with the receipt: no coroutine of ours between the caller
        and the group commit (one fewer frame to create and resume per durable add)."""
        try:
            r = intake.put_nowait(record)  # the usual case: room in the buffer and the spool
        except BufferFull:
            if policy not in _WAITS:
                raise
            return self._add_slow(intake, record, timeout, policy, loop)
        return self._durable(r, loop)

    def _durable(self, r: Receipt, loop: asyncio.AbstractEventLoop) -> Awaitable[Receipt]:
        """A future of ``loop`` resolved with ``r`` once its record is fsynced."""
        seq = getattr(r, "_seq", 0)
        spool_log = self.log
        if seq and spool_log is not None:
            durable = spool_log.durable_future(seq, loop, r)
            if durable is not None:
                return durable
        done: asyncio.Future[Receipt] = loop.create_future()
        done.set_result(r)
        return done

    async def _add_slow(self, intake: Intake, record: Any, timeout: float | None,
                        policy: str, loop: asyncio.AbstractEventLoop) -> Receipt:  # fmt: skip
        r = await self._add_waiting(intake, record, timeout, policy)
        return await self._durable(r, loop)

    async def _add_waiting(self, intake: Intake, record: Any, timeout: float | None,
                           policy: str) -> Receipt:  # fmt: skip
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return await intake.put_waiting(record, left)
            except BufferFull as exc:
                await asyncio.sleep(self._room_wait(exc, left, policy))

    def add_blocking(self, intake: Intake, record: Any, timeout: float | None, policy: str
                     ) -> Receipt:  # fmt: skip
        """``Batcher.add`` in spool mode: the same waits, blocking this thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                r = intake.put_blocking(record, left)
                break
            except BufferFull as exc:
                time.sleep(self._room_wait(exc, left, policy))
        self.wait_durable(r, None)
        return r

    def _room_wait(self, exc: BufferFull, left: float | None, policy: str) -> float:
        """After ``exc``: the seconds to wait for room in the spool before trying again, or
        ``exc`` raised (the buffer refused, the policy does not wait, or time is up)."""
        if not self.full(exc) or policy not in _WAITS:
            raise exc
        if left is not None and left <= 0:
            raise exc
        return _POLL if left is None else min(_POLL, left)

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

    def spooled(self) -> int:
        """Records in the spool not yet done (after close: those it left there, whether
        this batcher took them or not)."""
        spool_log = self.log
        if spool_log is None:
            return self.left or 0
        return spool_log.stats().spooled


_EXACT = frozenset(
    {str, int, float, bool, type(None), bytes, uuid.UUID, dt.datetime, dt.date, dt.time,
     decimal.Decimal}
)  # fmt: skip
"""Types the spool's codec gives back exactly (and equal): a dict's key, version and cost
fields holding only these read the same after a round trip, with no need to check."""


def _plain(record: dict[str, Any], fields: tuple[str, ...]) -> bool:
    for name in fields:  # noqa: SIM110 (a loop: no generator per add on the hot path)
        if type(record.get(name)) not in _EXACT:
            return False
    return True


def _same_after_round_trip(record: Any, identity: Callable[[Any], tuple[Any, Any, float]]) -> None:
    """``RecordError`` unless the record, as it comes back from the spool (plain data: a
    dataclass as a dict of its fields, an enum as its value), has the same key, version and
    cost for this batcher: else a batcher recovering the spool could not take it back."""
    from .spool._codec import decode_record, encode_record

    mine = identity(record)  # the record's own RecordError (no key, a bad cost) goes as is
    payload = encode_record(record)  # RecordError: it cannot be encoded
    try:
        same = identity(decode_record(payload)) == mine
    except Exception:
        same = False
    if not same:
        raise RecordError(
            "spool mode: this record would not come back from the spool as the batcher reads "
            "it (the spool keeps plain data: a dataclass comes back as a dict of its fields, "
            "an enum as its value), so its key, version or cost would differ after a crash. "
            "Use plain values in key, version and cost fields, and field names (not "
            "attribute-reading callables) for key=, version= and cost="
        )


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread of its own (not the loop's default executor, which the
    application's own ``to_thread`` calls may fill), awaited on the running loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="writebehind-spool-io", daemon=True).start()
    return await fut
