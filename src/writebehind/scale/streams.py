"""``consume_stream``: the flusher half of the Redis Streams hand-off (docs/scaling.md).

Producers on any host append with :class:`~writebehind.RedisStreamSink`; flushers on any
host read the stream as one consumer group and add each record to a batcher of their own,
whose sink is the datastore. An entry is acknowledged (``XACK``, then ``XDEL`` so the
stream holds only what is not done) once its record is committed, coalesced,
dead-lettered or dropped (``_stream_acks``); what a dead flusher left pending is claimed by
the others after ``claim_after`` seconds (``XAUTOCLAIM``). Delivery is at least once: an
entry whose record committed just before its flusher died is written again by the one that
claims it, which the sinks' version-conditional upserts make harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from .._engine import AsyncBatcher
from .._errors import (
    BatcherClosed,
    BufferFull,
    ConfigError,
    RecordError,
    SinkError,
    WriteBehindError,
)
from .._retry import check_number
from .._sync import Batcher
from ..sinks._redis import RedisSource
from ..sinks.redis_stream import check_stream_name
from ._stream_acks import Acks
from ._stream_entries import bytes_client, dead_letter, entries_of, group_gone, raw, record_of
from ._stream_report import StreamReport

__all__ = ["StreamReport", "consume_stream"]

log = logging.getLogger("writebehind")

_FINAL_ACKS = 5.0  # seconds the last acknowledgements may take once the batcher closed
_MAX_BACKOFF = 2.0  # seconds between tries while Redis does not answer
_TRACKED_PER_PENDING = 4  # entries tracked at most, per max_pending (superseded ones count)
_MAX_SECONDS = 10**9  # claim_after and block: Redis takes them as 64-bit milliseconds


async def consume_stream(
    redis: Any,
    *,
    stream: str,
    group: str,
    consumer: str,
    into: AsyncBatcher | Batcher,
    claim_after: float = 30.0,
    count: int | None = None,
    block: float = 1.0,
    delete: bool = True,
) -> StreamReport:
    """Read ``stream`` as ``consumer`` of ``group`` into the batcher ``into``, until it closes.

    The group is created if needed (reading the stream from its start). Entries are read
    with ``XREADGROUP`` in blocks of at most ``count`` (default: the batcher's
    ``max_batch``), and never more than the batcher has room for (``max_pending`` less what
    it holds): a slow datastore slows the reading, not the memory. Each entry's record is
    added to the batcher; the entry is acknowledged, in batches, once the record is
    committed, coalesced, dead-lettered or dropped by the batcher's policy, never before. An
    entry that cannot be decoded, or whose record the batcher refuses (``RecordError``), is
    dead-lettered as it was into the batcher's dead-letter store (logged at ERROR when it
    has none) and acknowledged. Entries another consumer has left pending for
    ``claim_after`` seconds are claimed (``XAUTOCLAIM``); entries this consumer is still
    working on are re-claimed by it well before then, so a flusher that is only slow keeps
    them. At start, this consumer's own pending entries (a restart under the same name) are
    read again.

    Returns a :class:`StreamReport` once the batcher has closed (leaving the ``async with``
    block, or ``close()``): then nothing more is read, and the entries whose records were
    settled are acknowledged. Cancelled, it raises ``CancelledError`` at once; entries not
    acknowledged stay pending, for this consumer's next start or for another to claim.
    Redis errors are retried with backoff (a WARNING per outage); a group that vanished (a
    Redis restarted without persistence) is created again.

    ``into`` is an :class:`AsyncBatcher` running on this event loop, or a sync
    :class:`Batcher`: then the reading runs on the batcher's own loop thread, and the caller
    waits (``asyncio.run(consume_stream(..., into=batcher))`` from a thread of its own).

    Args:
        redis: a ``redis://`` URL (a client of its own, closed on return) or a
            ``redis.asyncio.Redis`` client of yours. The password never appears in logs.
        stream, group, consumer: the stream's key, the consumer group, this consumer's name
            (unique per running flusher: a host and process id, say).
        claim_after: seconds an entry must have been pending with another consumer before
            this one claims it.
        block: seconds one ``XREADGROUP`` waits for new entries (a closing batcher is noticed
            within this long).
        delete: ``XDEL`` each entry once acknowledged (the default: the stream then holds
            only what is not done, and its length is the backlog). With several groups on
            one stream, pass False and trim it yourself.
    """
    for what, value in (("stream", stream), ("group", group), ("consumer", consumer)):
        check_stream_name(value, what)
    check_number("claim_after", claim_after, minimum=0, inclusive=False, finite=True)
    check_number("block", block, minimum=0, inclusive=False, finite=True)
    for what, seconds in (("claim_after", claim_after), ("block", block)):
        if seconds > _MAX_SECONDS:
            raise ConfigError(f"{what}: at most {_MAX_SECONDS:,} seconds, got {seconds!r}")
    if count is not None and not (
        isinstance(count, int) and not isinstance(count, bool) and count >= 1
    ):
        raise ConfigError(f"count: must be an integer >= 1 or None, got {count!r}")
    source = RedisSource(redis, "consume_stream")
    if isinstance(into, Batcher):
        loop = into.loop
        if loop is None:
            raise WriteBehindError("consume_stream: start the batcher first (with Batcher(...))")
        reader = _Reader(source, stream, group, consumer, into.engine, claim_after, count, block)
        reader.delete = delete
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - a coroutine runs on a loop
            running = None
        if running is not loop:
            done = asyncio.run_coroutine_threadsafe(reader.run(), loop)
            return await asyncio.wrap_future(done)
        return await reader.run()
    if not isinstance(into, AsyncBatcher):
        raise ConfigError(f"into: must be an AsyncBatcher or a Batcher, got {into!r}")
    if into.loop is None:
        raise WriteBehindError(
            "consume_stream: start the batcher first ('async with AsyncBatcher(...)')"
        )
    if into.loop is not asyncio.get_running_loop():
        raise WriteBehindError("consume_stream: run it on the batcher's own event loop")
    reader = _Reader(source, stream, group, consumer, into, claim_after, count, block)
    reader.delete = delete
    return await reader.run()


class _Reader:
    """One ``consume_stream`` call's state (on the batcher's loop)."""

    def __init__(
        self,
        source: RedisSource,
        stream: str,
        group: str,
        consumer: str,
        into: AsyncBatcher,
        claim_after: float,
        count: int | None,
        block: float,
    ) -> None:
        self.source, self.stream, self.group, self.consumer = source, stream, group, consumer
        self.into = into
        self.claim_after = claim_after
        self.claim_every = min(claim_after / 2, 5.0)
        self.count = count or into.options.max_batch
        self.block_ms = max(1, round(block * 1000))
        self.delete = True
        self.read = self.claimed = self.added = self.dead_lettered = self.unadded = 0
        self.client: Any = None
        self._own_client: Any = None  # ours, for a client of yours that decodes replies
        self.acks: Acks | None = None
        self._history: bytes | None = b"0"  # our own pending entries, read again at start
        self._cursor = b"0-0"
        self._next_claim = 0.0
        self._next_renew = time.monotonic() + claim_after / 3
        self._down_since: float | None = None

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> StreamReport:
        self.client = self.source.connect(f"writebehind-consumer-{self.consumer}"[:60])
        if not self.source.owned:
            self._own_client = bytes_client(self.client)
            self.client = self._own_client or self.client
        acks = self.acks = Acks(self.stream, self.group, delete=self.delete)
        stop = asyncio.Event()
        acker = asyncio.ensure_future(acks.run(self.client, stop))
        try:
            while not self.into.stats().closed:  # Redis may be down at start: ride it out
                try:
                    await self._create_group()
                    break
                except ConfigError:
                    raise
                except Exception as exc:  # a retriable error: retry as a read would
                    await self._down(exc)
            while not self.into.stats().closed:
                if acker.done():
                    acker.result()  # a bug in the acknowledging task: raise it
                try:
                    await self._step(acks)
                    self._up()
                except BatcherClosed:
                    break
                except (ConfigError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await self._down(exc)
            stop.set()
            acks.changed.set()
            with contextlib.suppress(TimeoutError):
                # the batcher's close settles every receipt by its deadline; then a bounded
                # time for the last acknowledgements (a Redis that does not answer leaves
                # them pending: they are claimed, and written again, idempotently)
                await asyncio.wait_for(asyncio.shield(acker), self.into.close_timeout + _FINAL_ACKS)
            acks.left_pending += len(acks.tracked) + len(acks.to_ack) + self.unadded
            return StreamReport(
                read=self.read, claimed=self.claimed, added=self.added, acked=acks.acked,
                dead_lettered=self.dead_lettered, left_pending=acks.left_pending,
            )  # fmt: skip
        finally:
            acker.cancel()
            if self.source.owned or self._own_client is not None:
                closing = getattr(self.client, "aclose", None) or self.client.close
                with contextlib.suppress(Exception):
                    await asyncio.shield(closing())

    async def _step(self, acks: Acks) -> None:
        """One read (or claim) of as many entries as the batcher has room for."""
        room = self._room(acks)
        if room <= 0:  # the batcher is full, or too many entries await their records' fate
            await acks.wait_progress(0.05)
            return
        now = time.monotonic()
        if now >= self._next_renew and acks.ids:
            await self._renew(acks)
        if self._history is not None:
            entries = await self._read(self._history, room, block=False)
            self._history = entries[-1][0] if entries else None
        elif now >= self._next_claim:
            entries = await self._claim(room)
        else:
            entries = await self._read(b">", room, block=True)
        await self._take(entries, acks)

    def _room(self, acks: Acks) -> int:
        stats = self.into.stats()
        max_pending = self.into.options.pending_limit
        room = max_pending - stats.held
        room = min(room, _TRACKED_PER_PENDING * max_pending - len(acks), self.count)
        return room

    async def _create_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" in str(exc):
                return
            error = self.source.error(exc, f"cannot create group {self.group!r}")
            if "WRONGTYPE" in str(exc):
                raise ConfigError(str(error)) from None
            raise error from None

    async def _read(self, start: bytes, room: int, *, block: bool) -> list[tuple[bytes, Any]]:
        reply = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=room,
            block=self.block_ms if block else None,
        )  # fmt: skip
        entries = entries_of(reply)
        self.read += len(entries)
        return entries

    async def _claim(self, room: int) -> list[tuple[bytes, Any]]:
        reply = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, round(self.claim_after * 1000),
            start_id=self._cursor, count=room,
        )  # fmt: skip
        cursor, claimed = reply[0], reply[1]
        self._cursor = cursor if isinstance(cursor, bytes) else str(cursor).encode()
        if self._cursor in (b"0-0", b"0"):
            self._next_claim = time.monotonic() + self.claim_every
        entries = (
            [(i, f) for i, f in claimed if i not in self.acks.ids] if self.acks is not None else []
        )
        self.read += len(entries)
        self.claimed += len(entries)
        return entries

    async def _renew(self, acks: Acks) -> None:
        """Re-claim the entries this consumer is still working on that have been idle a
        third of ``claim_after``, so no one claims them from a flusher that is only slow."""
        self._next_renew = time.monotonic() + self.claim_after / 3
        ids = list(acks.ids)
        for i in range(0, len(ids), 1000):
            await self.client.xclaim(
                self.stream, self.group, self.consumer, round(self.claim_after * 1000 / 3),
                ids[i : i + 1000], justid=True,
            )  # fmt: skip

    async def _take(self, entries: list[tuple[bytes, Any]], acks: Acks) -> None:
        """Add each entry's record to the batcher and track it; dead-letter what cannot be.
        A read's records go in one ``add_many_nowait`` (half the cost of one add each); if
        it stops part-way (the buffer full, a record refused), the rest go one by one."""
        bad: list[tuple[bytes, Any, BaseException]] = []
        ids: list[bytes] = []
        records: list[Any] = []
        for entry_id, fields in entries:
            if fields is None:  # claimed, but deleted from the stream meanwhile
                acks.ack_now(entry_id)
                continue
            try:
                records.append(record_of(fields))
            except Exception as exc:
                bad.append((entry_id, raw(self.stream, entry_id, fields), exc))
                continue
            ids.append(entry_id)
        taken: list[Any] = []
        if records:
            try:
                taken = list(self.into.add_many_nowait(records))
            except WriteBehindError as exc:  # the records before the refusal stay taken
                taken = list(getattr(exc, "receipts", None) or ())
        acks.track_many(list(zip(ids, taken, strict=False)))  # taken: maybe fewer
        self.added += len(taken)
        try:
            await self._add_each(ids[len(taken) :], records[len(taken) :], acks, bad)
        except BatcherClosed:
            await self._dead_letter(bad, acks)
            raise
        await self._dead_letter(bad, acks)

    async def _add_each(
        self,
        ids: list[bytes],
        records: list[Any],
        acks: Acks,
        bad: list[tuple[bytes, Any, BaseException]],
    ) -> None:
        """Add records one by one, waiting for room; a refused one goes to ``bad``."""
        added: list[tuple[bytes, Any]] = []  # tracked in one go, and before any wait
        into = self.into
        try:
            for n, (entry_id, record) in enumerate(zip(ids, records, strict=True)):
                try:
                    try:
                        receipt = into.add_nowait(record)
                    except BufferFull:
                        acks.track_many(added)
                        added = []
                        receipt = await into.add(record)
                except RecordError as exc:
                    bad.append((entry_id, record, exc))
                    continue
                except BatcherClosed:
                    self.unadded += len(ids) - n
                    raise
                self.added += 1
                added.append((entry_id, receipt))
        finally:
            acks.track_many(added)

    async def _dead_letter(self, bad: list[tuple[bytes, Any, BaseException]], acks: Acks) -> None:
        if bad:
            self.dead_lettered += await dead_letter(self.into, self.stream, self.group, bad, acks)

    # -- outages ----------------------------------------------------------------------------
    async def _down(self, exc: BaseException) -> None:
        if group_gone(exc):  # the stream was deleted, or Redis restarted without persistence
            log.warning(
                "consume_stream(%r): the stream or its group %r is gone (%s); creating it again",
                self.stream, self.group, str(exc).split(" ", 1)[0],
            )  # fmt: skip
            self._history, self._cursor = None, b"0-0"
            try:
                await self._create_group()
                return
            except ConfigError:
                raise
            except Exception as again:  # Redis down as well: back off as below
                exc = again
        error = exc if isinstance(exc, SinkError) else self.source.error(exc, "reading")
        if not getattr(error, "retriable", True):
            raise error from None
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning("consume_stream(%r): %s; retrying", self.stream, error)
        waited = now - self._down_since
        await asyncio.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.05 + waited / 2)))

    def _up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "consume_stream(%r): Redis answers again after %.1f s",
                self.stream, time.monotonic() - self._down_since,
            )  # fmt: skip
            self._down_since = None
