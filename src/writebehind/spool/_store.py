"""The segments on disk, as the writer thread changes them: write a group commit, mark
records done, trim segments that are all done. Not thread-safe: only the writer thread (and
``open``/``close`` around it) calls it.

Failed writes and the fsync gate. After ``write`` or ``fsync`` fails (``ENOSPC``, ``EIO``),
what the file holds beyond its last successful fsync is unknown: a write may have landed in
part, and on Linux a failed fsync may have dropped the dirty pages *and marked them clean*, so
a second fsync on the same file can "succeed" without the data ever reaching the disk
(PostgreSQL's "fsyncgate", 2018). So the store never retries on the same file: it *abandons*
the active segment (a best-effort ``ftruncate`` back to the last synced length, then close)
and the next attempt writes every frame not yet synced into a *new* segment, creates it and
syncs the directory before the frames count as durable. The abandoned segment keeps its
synced frames (delivered as usual) and may keep some of the unsynced ones too; recovery
gives each sequence number to the first segment that holds it and marks the other copies
done, so nothing is delivered twice from the spool.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Iterable

from ._codec import encode_done, ranges
from ._config import Spool
from ._files import FileSystem, write_all
from ._frames import DONE, encode_frame
from ._recovery import Recovered
from ._segments import DONE_SUFFIX, SEG_SUFFIX, Segment, segment_stem

__all__ = ["SegmentStore"]


class SegmentStore:
    """The spool's segment and done files, and what is known about them."""

    def __init__(self, fs: FileSystem, path: str, spool: Spool, recovered: Recovered) -> None:
        self._fs = fs
        self._path = path
        self._sync = spool.fsync == "batch"
        self._segment_bytes = spool.segment_size
        self.segments: list[Segment] = list(recovered.segments)
        self._generation = recovered.next_generation
        self.active: Segment | None = None
        self.fsyncs = 0
        self.live = sum(s.live for s in self.segments)
        self.bytes = sum(s.size + s.done_size for s in self.segments)
        self._early: set[int] = set()  # done before written (the write failed, is retried)
        self._dirty: set[Segment] = set()  # done files written since their last fsync
        self._dir_dirty = False

    # -- group commit -------------------------------------------------------------------

    def start(self, first_seq: int) -> None:
        """Create the active segment now (so its name keeps the sequence floor on disk)."""
        self._rotate(first_seq)

    def write(self, first: int, n: int, time: float, frames: bytes) -> None:
        """Append ``frames`` (records ``first`` .. ``first + n - 1``, appended from ``time``)
        to the active segment and sync it. On an ``OSError`` the segment is abandoned (see the
        module docstring) and the error raised: none of those records is durable."""
        active = self.active
        if active is None or (active.size and active.size + len(frames) > self._segment_bytes):
            active = self._rotate(first)
        assert active.handle is not None
        try:
            write_all(active.handle, frames)
            if self._sync:
                self.fsyncs += 1
                active.handle.fsync()
        except OSError:
            self._abandon(active)
            raise
        active.size += len(frames)
        self.bytes += len(frames)
        active.add_run(first, n, time)
        self.live += n
        if self._early:  # done before they were written (an earlier attempt failed)
            early = [seq for seq in range(first, first + n) if seq in self._early]
            if early:
                self._early.difference_update(early)
                self.mark_done(early)

    def _seal(self) -> None:
        """Stop appending to the active segment (its frames were synced)."""
        if self.active is not None and self.active.handle is not None:
            self.active.handle.close()
            self.active.handle = None
        self.active = None

    def _rotate(self, first_seq: int) -> Segment:
        """Seal the active segment and start a new one whose first record is ``first_seq``."""
        self._seal()
        stem = segment_stem(first_seq, self._generation)
        self._generation += 1
        path = os.path.join(self._path, stem + SEG_SUFFIX)
        handle = self._fs.open(path, new=True)
        seg = Segment(stem, first_seq)
        seg.handle = handle
        self.segments.append(seg)
        self.active = seg
        try:
            if self._sync:
                self.fsyncs += 1
                self._fs.fsync_dir(self._path)  # the name is durable before any frame is
        except OSError:
            self._abandon(seg)
            raise
        return seg

    def _abandon(self, seg: Segment) -> None:
        """Stop writing to ``seg`` after a failed write; forget it if it owns nothing."""
        if seg.handle is not None:
            with contextlib.suppress(OSError):
                seg.handle.truncate(seg.size)
        seg.close()
        if self.active is seg:
            self.active = None
        if not seg.state:
            self.segments.remove(seg)
            self._dirty.discard(seg)
            try:
                self._fs.unlink(os.path.join(self._path, seg.stem + SEG_SUFFIX))
                self._dir_dirty = True
            except OSError:
                pass  # recovery deletes an empty or damaged leftover

    # -- done ---------------------------------------------------------------------------

    def mark_done(self, seqs: Iterable[int]) -> int:
        """Mark records done (in memory now; in their segments' done files, synced by
        :meth:`sync_done`); the number that were not done before. A sequence number not
        written yet (its group commit failed and is being retried) is marked once written."""
        seqs = list(seqs)
        last = self.segments[-1].last if self.segments else 0
        if len(seqs) > 1:  # one run of consecutive seqs, all written (a committed batch)
            lo, hi = min(seqs), max(seqs)
            if hi - lo + 1 == len(seqs) and hi <= last and len(set(seqs)) == len(seqs):
                return self._mark_run(lo, hi)
        newly = 0
        by_segment: dict[Segment, list[int]] = {}
        firsts = [s.first for s in self.segments]
        for seq in seqs:
            i = bisect.bisect_right(firsts, seq) - 1
            if i >= 0 and self.segments[i].mark(seq):
                by_segment.setdefault(self.segments[i], []).append(seq)
                newly += 1
            elif seq > last and seq not in self._early:
                self._early.add(seq)
                newly += 1
        self.live -= sum(len(v) for v in by_segment.values())
        for seg, marked in by_segment.items():
            self._write_marks(seg, ranges(marked))
        return newly

    def _mark_run(self, lo: int, hi: int) -> int:
        """:meth:`mark_done` for ``lo`` .. ``hi``, all written: per segment, one slice of its
        state (C speed) rather than one call per seq."""
        newly = 0
        segments = self.segments
        for k, seg in enumerate(segments):
            # a seq belongs to the last segment whose first is at or below it (as bisect)
            top = segments[k + 1].first - 1 if k + 1 < len(segments) else seg.last
            a, b = max(lo, seg.first), min(hi, seg.last, top)
            if a > b:
                continue
            i, j = a - seg.first, b - seg.first + 1
            state = seg.state
            n = state.count(0, i, j)  # live among them
            if not n:
                continue
            if n == j - i:
                spans = [(a, b)]
            else:  # some were done already (or are not this segment's): only the others
                spans = ranges([a + k for k in range(j - i) if not state[i + k]])
            state[i:j] = b"\x01" * (j - i)
            seg.live -= n
            self.live -= n
            newly += n
            self._write_marks(seg, spans)
        return newly

    def _write_marks(self, seg: Segment, spans: list[tuple[int, int]]) -> None:
        frame = encode_frame(DONE, 0, time.time(), encode_done(spans))
        try:
            if seg.done_handle is None:
                path = os.path.join(self._path, seg.stem + DONE_SUFFIX)
                seg.done_handle = self._fs.open(path, new=False)
                self._dir_dirty = True
            write_all(seg.done_handle, frame)
        except OSError:
            # the marks stay in memory; on disk they are lost, so those records may be
            # delivered again after a restart (at least once), never lost
            if seg.done_handle is not None:
                seg.done_handle.close()
                seg.done_handle = None
            return
        seg.done_size += len(frame)
        self.bytes += len(frame)
        self._dirty.add(seg)

    def sync_done(self) -> None:
        """Fsync the done files written since the last call (errors ignored, as above)."""
        for seg in list(self._dirty):
            if seg.done_handle is not None and self._sync:
                try:
                    self.fsyncs += 1
                    seg.done_handle.fsync()
                except OSError:
                    seg.done_handle.close()
                    seg.done_handle = None
        self._dirty.clear()
        self._sync_dir()

    @property
    def done_pending(self) -> bool:
        return bool(self._dirty) or self._dir_dirty

    def _sync_dir(self) -> bool:
        if not self._dir_dirty:
            return True
        try:
            if self._sync:
                self.fsyncs += 1
                self._fs.fsync_dir(self._path)
        except OSError:
            return False
        self._dir_dirty = False
        return True

    # -- trim ---------------------------------------------------------------------------

    def trim(self) -> int:
        """Delete every sealed segment whose records are all done; the bytes freed.

        Segment first, the directory synced, then its done file (synced with the next
        directory sync): a crash in between leaves a segment with its marks, or a done file
        alone (deleted at open), never a segment without its marks."""
        freed = 0
        active = self.active
        if active is not None and not active.live and active.size >= self._segment_bytes // 4:
            # all done and big enough: trim it too, and start an empty one whose name keeps
            # the sequence numbers rising across opens
            with contextlib.suppress(OSError):  # if not, the next write creates one
                self._rotate(active.last + 1)
        for seg in [s for s in self.segments if s is not self.active and not s.live]:
            try:
                self._fs.unlink(os.path.join(self._path, seg.stem + SEG_SUFFIX))
            except FileNotFoundError:
                pass  # unlinked by an earlier try whose directory sync failed
            except OSError:
                break
            self._dir_dirty = True
            if not self._sync_dir():
                break
            self.segments.remove(seg)
            self._dirty.discard(seg)
            seg.close()
            freed += seg.size + seg.done_size
            try:
                self._fs.unlink(os.path.join(self._path, seg.stem + DONE_SUFFIX))
                self._dir_dirty = True
            except OSError:
                pass  # an orphan done file is deleted at the next open
        self.bytes -= freed
        return freed

    # -- reading ------------------------------------------------------------------------

    def oldest_time(self) -> float | None:
        for seg in self.segments:
            t = seg.oldest_time()
            if t is not None:
                return t
        return None

    def close(self) -> None:
        """Close every file (after a final :meth:`sync_done` by the caller)."""
        for seg in self.segments:
            seg.close()
        self.active = None
