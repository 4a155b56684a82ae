"""``SpoolLog``: the durable, segmented, group-committed append-only log of one spool.

Threads. ``append()`` (any thread) encodes the record, takes the next sequence number and
queues it under one lock held for a few hundred nanoseconds; it never touches the disk. One
writer thread per log takes *everything* queued since its last sync, writes it with one
``write`` and one ``fsync`` (group commit: every append waiting at that moment shares the
fsync), then advances the durable watermark (``_watermark.Watermark``: blocking waits,
asyncio waits and callbacks). ``done()`` queues marks that the writer appends to the
segments' done files (synced at most every second: a lost mark means a record delivered again
after a crash, never a lost one) before it deletes segments whose records are all done.

Failures. A failed write or fsync makes every waiter not yet durable see
``SpoolWriteError``; the records stay queued, and the writer retries with backoff (10 ms
doubling to 0.5 s) in a *new* segment (see ``_store``): when the fault clears (space
returns), they become durable and waiting again succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from .._errors import RecordError
from ._codec import encode_record
from ._config import Spool
from ._dir import check_dir, lock_dir, on_fork_in_child
from ._errors import SpoolClosed, SpoolForked, full, too_big, write_failed
from ._files import FileHandle, FileSystem, OsFileSystem
from ._frames import HEADER, record_frames
from ._recovery import Recovered, SpoolDamage, recover
from ._stats import SpoolStats
from ._store import SegmentStore
from ._watermark import DurableListener, Watermark

__all__ = ["SpoolLog"]

_DONE_SYNC = 1.0  # seconds between syncs of done marks
_RETRY_FIRST = 0.005
_RETRY_CAP = 0.5


class SpoolLog:
    """The durable log of one spool directory. Open it with :meth:`open`."""

    def __init__(
        self, spool: Spool, fs: FileSystem, path: str, lock: FileHandle, found: Recovered
    ) -> None:
        self.spool = spool
        self.path = path
        self._fs = fs
        self._lock_file: FileHandle | None = lock
        self._pid = os.getpid()
        self._forked = False  # set in a forked child (by the fork hook): calls check the pid
        self._found = found
        self._recovered = len(found.records)
        self._store = SegmentStore(fs, path, spool, found)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # trimming freed space; the writer's wake
        self._queue: list[bytes] = []  # payloads, the last one's seq is _next - 1
        self._segment_size = spool.segment_size
        self._max_bytes = spool.max_bytes
        self._queued_at = 0.0  # when the oldest queued record was appended
        self._dones: list[int] = []
        self._reserved = 0  # bytes queued or unsynced
        self._disk = self._store.bytes
        self._next = found.next_seq
        self._first = found.next_seq
        self._spooled = len(found.records)
        self._oldest_written: float | None = self._store.oldest_time()
        self._oldest_unsynced: float | None = None
        self._segments = len(self._store.segments)
        self._fsyncs = 0
        self._errors = 0
        self._last_error: str | None = None
        self._idle = False
        self._stopping = False
        self._closed = False
        self._lost = 0
        self._watermark = Watermark(found.next_seq - 1)
        self._writer = threading.Thread(
            target=self._run, name=f"writebehind-spool-{os.path.basename(path)}", daemon=True
        )
        self._forget_fork = on_fork_in_child(self)

    @classmethod
    def open(
        cls, spool: Spool | str | os.PathLike[str], *, fs: FileSystem | None = None
    ) -> SpoolLog:
        """Open (creating if need be), lock and recover the spool; start its writer thread.

        Blocking (it reads every segment): call it off the event loop. Raises ``ConfigError``
        for a bad directory (not ours, writable by others) or one in use by another log."""
        spool = Spool.of(spool)
        fs = fs if fs is not None else OsFileSystem()
        path = os.path.abspath(os.fspath(spool.path))
        check_dir(fs, path)
        lock = lock_dir(fs, path)
        try:
            found = recover(fs, path)
            log = cls(spool, fs, path, lock, found)
            with contextlib.suppress(OSError):  # if not, the writer creates it (and retries)
                log._store.start(found.next_seq)
            log._writer.start()
        except BaseException:
            lock.close()
            raise
        return log

    # -- appending ----------------------------------------------------------------------

    def append(self, record: Any) -> int:
        """Queue ``record`` for the next group commit; its seq (never waits for the disk).
        ``RecordError``: it cannot be encoded; ``SpoolFull``; ``SpoolClosed`` after close."""
        return self.append_encoded(encode_record(record))

    def append_encoded(self, payload: bytes) -> int:
        """:meth:`append` for a record already encoded (``_codec.encode_record``)."""
        if self._forked:
            self._check_pid()
        size = HEADER + len(payload)
        if size > self._segment_size:
            raise too_big(size, self._segment_size, "")
        with self._lock:  # _enqueue for one record, inline: the hot path of every add
            if self._stopping or self._disk + self._reserved + size > self._max_bytes:
                self._refuse(size)
            seq = self._next
            self._next = seq + 1
            queue = self._queue
            if not queue:
                self._queued_at = time.time()
            queue.append(payload)
            self._reserved += size
            self._spooled += 1
            if self._idle:
                self._idle = False
                self._room.notify_all()
        return seq

    def append_many(self, records: Iterable[Any]) -> list[int]:
        """:meth:`append` for several records at once (consecutive sequence numbers), all or
        none: a record that cannot be encoded, or no room for all, appends nothing."""
        self._check_pid()
        encoded = []
        size = 0
        for i, record in enumerate(records):
            try:
                payload = encode_record(record)
            except RecordError as exc:
                if i:
                    raise RecordError(f"record {i}: {exc}") from None
                raise
            n = HEADER + len(payload)
            if n > self._segment_size:
                raise too_big(n, self._segment_size, f"record {i}: " if i else "")
            encoded.append(payload)
            size += n
        first = self._enqueue(encoded, size)
        return list(range(first, first + len(encoded)))

    def _enqueue(self, encoded: list[bytes], size: int) -> int:
        """Queue encoded records (``size`` bytes framed) for the writer: the first's seq."""
        with self._lock:
            if self._stopping or self._disk + self._reserved + size > self._max_bytes:
                self._refuse(size)
            first = self._next
            self._next = first + len(encoded)
            queue = self._queue
            if not queue:
                self._queued_at = time.time()
            queue += encoded
            self._reserved += size
            self._spooled += len(encoded)
            if self._idle:
                self._idle = False
                self._room.notify_all()
        return first

    def _refuse(self, size: int) -> NoReturn:
        """``SpoolClosed`` or ``SpoolFull`` for an append of ``size`` bytes (lock held)."""
        if self._stopping:
            raise SpoolClosed("the spool log is closed; it takes no more records")
        raise full(self._disk + self._reserved, self._max_bytes, size)

    def done(self, seqs: Iterable[int]) -> None:
        """Those records are committed, coalesced or dead-lettered: never deliver them again
        (persisted with the next commits; after a crash a few may be delivered again)."""
        self._check_pid()
        seqs = list(seqs)
        with self._lock:
            top = self._next
            self._dones.extend(s for s in seqs if 0 < s < top)
            if self._idle and self._dones:
                self._idle = False
                self._room.notify_all()

    # -- waiting ------------------------------------------------------------------------

    @property
    def durable_seq(self) -> int:
        """The highest sequence number known synced: every record up to it is durable."""
        return self._watermark.value

    def wait_durable(
        self, seq: int, timeout: float | None = None, *, tolerate_errors: bool = False
    ) -> bool:
        """Block until record ``seq`` is durable (True) or ``timeout`` passes (False).

        ``SpoolWriteError`` while the latest attempt to sync failed, at the call or during
        the wait (the record stays queued and is retried; waiting again may succeed) unless
        ``tolerate_errors`` (then it waits through failures); ``SpoolClosed`` if the log
        closed first. Not on an event loop's thread: use :meth:`wait_durable_async` there."""
        self._check_pid()
        return self._watermark.wait(seq, timeout, tolerate_errors=tolerate_errors)

    async def wait_durable_async(self, seq: int, *, tolerate_errors: bool = False) -> None:
        """Wait in the running event loop until record ``seq`` is durable; raises as
        :meth:`wait_durable` does. Cancelling the wait does not cancel the record."""
        self._check_pid()
        await self._watermark.wait_async(seq, tolerate_errors=tolerate_errors)

    def durable_future(
        self, seq: int, loop: asyncio.AbstractEventLoop, result: Any = None
    ) -> asyncio.Future[Any] | None:
        """A future of ``loop`` resolved with ``result`` once record ``seq`` is durable (None
        if it is already), waiting through failures (``tolerate_errors``); ``SpoolClosed`` if
        the log closed first. Awaiting it is :meth:`wait_durable_async` without a coroutine."""
        if self._forked:
            self._check_pid()
        return self._watermark.future(seq, loop, tolerate_errors=True, result=result)

    def on_durable(self, listener: DurableListener) -> Callable[[], None]:
        """Call ``listener(durable_seq, error)`` on the writer thread after every group
        commit (``error`` None) and every failed attempt (``error`` a ``SpoolWriteError``);
        returns a function that unsubscribes it. Keep it short; from there, reach an event
        loop with ``loop.call_soon_threadsafe``."""
        return self._watermark.subscribe(listener)

    def wait_for_room(self, timeout: float | None = None, nbytes: int = 1) -> bool:
        """Block until ``nbytes`` more fit under ``max_bytes`` (True) or ``timeout`` passes
        (False). ``SpoolClosed`` if the log closes meanwhile."""
        self._check_pid()

        def room() -> bool:
            return self._stopping or self._disk + self._reserved + nbytes <= self.spool.max_bytes

        with self._room:
            ok = self._room.wait_for(room, timeout)
            if self._stopping:
                raise SpoolClosed("the spool log is closed")
            return ok

    # -- reading ------------------------------------------------------------------------

    def recovered(self) -> list[tuple[int, Any]]:
        """The records a previous log left not done, in append order, with their sequence
        numbers (mark them done like any other once delivered)."""
        return list(self._found.records)

    def take_recovered(self) -> list[tuple[int, Any]]:
        """:meth:`recovered`, handed over: the log keeps no reference to them afterwards
        (a large recovery is not held twice, nor after its records are delivered)."""
        records, self._found.records = self._found.records, []
        return records

    @property
    def damage(self) -> SpoolDamage:
        """What the open found damaged and moved aside (``damaged/``)."""
        return self._found.damage

    def stats(self) -> SpoolStats:
        self._check_pid()  # a fork may have copied our lock held: never take it in a child
        with self._lock:
            oldest = self._oldest_written or self._oldest_unsynced
            if oldest is None and self._queue:
                oldest = self._queued_at
            return SpoolStats(
                bytes=self._disk + self._reserved,
                max_bytes=self.spool.max_bytes,
                spooled=self._spooled,
                oldest_age=None if oldest is None else max(0.0, time.time() - oldest),
                segments=self._segments,
                fsyncs=self._fsyncs,
                appended=self._next - self._first,
                durable_seq=self._watermark.value,
                queued=self._next - 1 - self._watermark.value,
                write_errors=self._errors,
                last_error=self._last_error,
                recovered=self._recovered,
                damaged_frames=self._found.damage.frames,
                damaged_bytes=self._found.damage.bytes,
            )

    # -- closing ------------------------------------------------------------------------

    def close(self) -> int:
        """Make a last group commit, stop the writer, release the lock; idempotent. Returns
        how many appended records could not be made durable (the last attempt failed)."""
        self._check_pid()
        with self._lock:
            if self._closed:
                return self._lost
            self._closed = self._stopping = True
            self._room.notify_all()
        if self._writer.is_alive():
            self._writer.join()
        with self._lock:
            self._lost = self._next - 1 - self._watermark.value
        self._store.close()
        self._watermark.stop(SpoolClosed("the spool log closed before the record was durable"))
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        self._forget_fork()
        return self._lost

    def __enter__(self) -> SpoolLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def forked(self) -> None:
        """In a forked child: let go of the parent's files (the lock stays the parent's)."""
        self._forked = True  # every call checks the pid from now on (getpid is a syscall)
        for seg in self._store.segments:
            for h in (seg.handle, seg.done_handle):
                if h is not None:
                    with contextlib.suppress(OSError):
                        os.close(h.fileno())
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_file.fileno())

    def _check_pid(self) -> None:
        if self._forked and os.getpid() != self._pid:
            raise SpoolForked(
                f"this spool log belongs to process {self._pid}, which forked this one "
                f"({os.getpid()}); a forked child cannot use its parent's spool: open the "
                f"batcher (and its spool, on another directory) in the child"
            )

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug, or a test's simulated crash: never hang waiters
            with self._lock:
                self._stopping = True
                self._room.notify_all()
            self._watermark.stop(exc)

    def _loop(self) -> None:
        unsynced = 0  # records taken from the queue, not yet synced: seqs first..first+n-1
        unsynced_first = 0
        unsynced_at = 0.0  # when the first of them was appended
        frames = b""
        held: list[int] = []  # done marks kept back while appended records are not synced
        failures = 0
        retry_at = 0.0
        done_sync_at = time.monotonic() + _DONE_SYNC
        store = self._store
        while True:
            with self._room:
                while True:
                    now = time.monotonic()
                    due = now >= retry_at
                    if self._stopping or self._dones or ((self._queue or unsynced) and due):
                        break
                    if store.done_pending and now >= done_sync_at:
                        break
                    waits = [retry_at - now] if (self._queue or unsynced) else []
                    if store.done_pending:
                        waits.append(done_sync_at - now)
                    self._idle = True
                    self._room.wait(min(waits) if waits else None)
                    self._idle = False
                batch, self._queue = self._queue, []
                first = self._next - len(batch)  # the queue holds the latest appends
                queued_at = self._queued_at
                dones, self._dones = self._dones, []
                stopping = self._stopping
            if batch:
                if not unsynced:
                    unsynced_first, unsynced_at = first, queued_at
                    with self._lock:
                        self._oldest_unsynced = queued_at
                unsynced += len(batch)
                frames += record_frames(first, queued_at, batch)
            if unsynced and (due or stopping):
                try:
                    store.write(unsynced_first, unsynced, unsynced_at, frames)
                except OSError as exc:
                    failures += 1
                    wait = min(_RETRY_CAP, _RETRY_FIRST * 2 ** min(failures, 16))
                    retry_at = time.monotonic() + wait
                    self._failed(exc)
                else:
                    failures, retry_at = 0, 0.0
                    last, size = unsynced_first + unsynced - 1, len(frames)
                    unsynced, frames = 0, b""
                    with self._lock:
                        self._reserved -= size
                        self._oldest_unsynced = None
                    self._publish()
                    self._watermark.advance(last)
            if held or dones:  # a done mark may be a record's that one not synced replaced:
                held += dones  # marked only once everything appended before it is synced
                dones = [] if unsynced else held
                if dones:
                    held = []
                    newly = store.mark_done(dones)
                    with self._lock:
                        self._spooled -= newly
            if store.done_pending and (stopping or time.monotonic() >= done_sync_at):
                store.sync_done()
                done_sync_at = time.monotonic() + _DONE_SYNC
            if store.trim() or dones:
                self._publish()
            if stopping:
                store.sync_done()
                self._publish()
                return

    def _failed(self, exc: OSError) -> None:
        error = write_failed(exc)
        with self._lock:
            self._errors += 1
            self._last_error = str(error)
        self._publish()
        self._watermark.fail(error)

    def _publish(self) -> None:
        """Copy what the store knows into the figures other threads read; wake room waiters."""
        store = self._store
        oldest = store.oldest_time()
        with self._lock:
            self._disk = store.bytes
            self._fsyncs = store.fsyncs
            self._segments = len(store.segments)
            self._oldest_written = oldest
            self._room.notify_all()
