"""Opening a spool directory: read every segment, work out what is not done, repair.

Never refuses to start because of damage. In order:

1. ``*.tmp`` files (a replacement a crash interrupted) are deleted.
2. Every segment is scanned (``_frames.scan``). A record is *owned* by the first segment that
   holds it (a segment abandoned after a failed write may hold a copy of records that the
   next segment holds too). Done marks from every done file count, whichever file holds them.
3. A damaged region (a torn tail, a corrupt frame, a zeroed page) and any checked frame whose
   payload does not decode are copied to ``damaged/<stem>.<offset>.bad`` (synced), then the
   segment is replaced by its good frames (written to ``.tmp``, synced, renamed over, directory
   synced). A crash anywhere in between leaves either the old file or the new one.
4. A segment with no record left to do is deleted: the segment, the directory synced, then its
   done file, the directory synced; a done file without its segment is deleted.
5. A done file that is damaged, or that lacks a mark the segment needs (its copies of another
   segment's records, or marks that a crash left in another segment's done file), is replaced
   by one compact file of ranges, the same way as in 3.

Repairs are best effort: a repair that fails with an ``OSError`` is skipped (and logged), since
the damage it would have removed is found again, and tolerated again, at the next open.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .._errors import ConfigError
from ._codec import decode_done, decode_record, encode_done, ranges
from ._files import FileSystem, write_all
from ._frames import DONE, FORMAT, RECORD, Scan, encode_frame, scan
from ._segments import DONE_SUFFIX, SEG_SUFFIX, TMP_SUFFIX, Segment, parse_name

__all__ = ["DAMAGED", "Recovered", "SpoolDamage", "recover", "replace_file"]

DAMAGED = "damaged"

log = logging.getLogger("writebehind")


@dataclass(frozen=True, slots=True)
class SpoolDamage:
    """What the last open found damaged and moved aside into ``damaged/``.

    ``frames``: record frames lost (a torn tail or a corrupt region counts at least one; a
    region between two good frames counts the sequence numbers missing between them);
    ``bytes``: their bytes; ``done_bytes``: damaged bytes in done files (marks lost: those
    records may be delivered again, never lost); ``temp_files``: leftover ``.tmp`` files
    deleted; ``files``: what was written into ``damaged/``."""

    frames: int = 0
    bytes: int = 0
    done_bytes: int = 0
    temp_files: int = 0
    files: tuple[str, ...] = ()


@dataclass(slots=True)
class Recovered:
    segments: list[Segment] = field(default_factory=list)
    records: list[tuple[int, Any]] = field(default_factory=list)
    damage: SpoolDamage = field(default_factory=SpoolDamage)
    next_seq: int = 1
    next_generation: int = 0


@dataclass(slots=True)
class _Tally:
    frames: int = 0
    bytes: int = 0
    done_bytes: int = 0
    temp_files: int = 0
    files: list[str] = field(default_factory=list)


def replace_file(fs: FileSystem, directory: str, name: str, data: bytes) -> None:
    """Atomically make ``directory/name`` hold ``data``: tmp, fsync, rename, fsync dir."""
    tmp = os.path.join(directory, name + TMP_SUFFIX)
    _unlink_quietly(fs, tmp)
    handle = fs.open(tmp, new=True)
    try:
        write_all(handle, data)
        handle.fsync()
    finally:
        handle.close()
    fs.rename(tmp, os.path.join(directory, name))
    fs.fsync_dir(directory)


def recover(fs: FileSystem, path: str) -> Recovered:
    """Read, repair and tidy the spool at ``path`` (locked by the caller)."""
    names = sorted(fs.listdir(path))
    tally = _Tally()
    for name in names:
        if name.endswith(TMP_SUFFIX):
            tally.temp_files += _unlink_quietly(fs, os.path.join(path, name))
    stems = sorted(
        (parsed, name[: -len(SEG_SUFFIX)])
        for name in names
        if name.endswith(SEG_SUFFIX) and (parsed := parse_name(name[: -len(SEG_SUFFIX)]))
    )
    done_files = {n[: -len(DONE_SUFFIX)] for n in names if n.endswith(DONE_SUFFIX)}
    own_marks: dict[str, list[tuple[int, int]]] = {}
    all_marks: list[tuple[int, int]] = []
    for stem in done_files:
        data = _read(fs, os.path.join(path, stem + DONE_SUFFIX))
        marks, bad = _done_marks(data)
        tally.done_bytes += bad
        own_marks[stem] = marks if not bad else [*marks, (-1, -1)]  # (-1,-1): rewrite it
        all_marks.extend(marks)
    done = _merge(all_marks)
    out = Recovered()
    max_seen = 0
    for (first, generation), stem in stems:
        out.next_generation = max(out.next_generation, generation + 1)
        out.next_seq = max(out.next_seq, first)
        seg_path = os.path.join(path, stem + SEG_SUFFIX)
        data = _read(fs, seg_path)
        found = scan(data)
        if found.newer_format is not None:
            raise ConfigError(
                f"path: the spool {path!r} holds frames of format {found.newer_format}, "
                f"written by a newer writebehind (this one reads format {FORMAT}); open it "
                f"with that version, or move the directory aside"
            )
        seg = Segment(stem, 0)
        regions = [(r.start, r.end) for r in found.damage]
        tally.frames += _lost_frames(found)
        extra: list[int] = []  # frames here that are not this segment's to deliver
        keep: list[bytes] = []
        for frame in found.frames:
            if frame.kind != RECORD or frame.seq <= max_seen:
                extra.append(frame.seq)
                keep.append(data[frame.offset : frame.end])
                continue
            if not seg.state:
                seg.first = frame.seq
            max_seen = frame.seq
            is_done = _covered(done, frame.seq)
            if not is_done:
                try:
                    out.records.append((frame.seq, decode_record(frame.payload)))
                except ValueError:
                    regions.append((frame.offset, frame.end))
                    tally.frames += 1
                    is_done = True
            seg.add(frame.seq, frame.time, done=is_done)
            if not is_done or not regions or regions[-1] != (frame.offset, frame.end):
                keep.append(data[frame.offset : frame.end])
        out.next_seq = max(out.next_seq, max_seen + 1)
        tally.bytes += sum(e - s for s, e in regions)
        if regions and _move_aside(fs, path, stem, data, regions, tally) and seg.live:
            clean = b"".join(keep)
            if _try(partial(replace_file, fs, path, stem + SEG_SUFFIX, clean), "repair"):
                data = clean
        if not seg.live:
            _delete_segment(fs, path, stem, has_done=stem in done_files)
            continue
        seg.size = len(data)
        seg.done_size = _tidy_done(fs, path, seg, own_marks.get(stem, []), extra)
        out.segments.append(seg)
    for stem in done_files - {s for _, s in stems}:
        _unlink_quietly(fs, os.path.join(path, stem + DONE_SUFFIX))
    _try(lambda: fs.fsync_dir(path), "sync the directory")
    out.damage = SpoolDamage(
        tally.frames, tally.bytes, tally.done_bytes, tally.temp_files, tuple(tally.files)
    )
    if tally.frames or tally.done_bytes:
        log.warning(
            "spool: %d damaged frame(s) (%d bytes) and %d damaged bytes of done marks moved "
            "aside into %s/ at open; the records in them are lost",
            tally.frames,
            tally.bytes,
            tally.done_bytes,
            DAMAGED,
        )
    return out


def _read(fs: FileSystem, path: str) -> bytes:
    try:
        return fs.read(path)
    except FileNotFoundError:
        return b""


def _lost_frames(found: Scan) -> int:
    """Record frames lost in ``found``'s damaged regions (see ``SpoolDamage.frames``)."""
    lost = 0
    seqs = [(f.offset, f.seq) for f in found.frames if f.kind == RECORD]
    offsets = [o for o, _ in seqs]
    for r in found.damage:
        i = bisect.bisect_left(offsets, r.start)
        if r.header_ok or r.torn or i == 0 or i >= len(seqs):
            lost += 1
        else:
            lost += max(1, seqs[i][1] - seqs[i - 1][1] - 1)
    return lost


def _done_marks(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """The ranges a done file holds, and how many of its bytes are damaged."""
    found = scan(data)
    marks: list[tuple[int, int]] = []
    bad = found.damaged_bytes
    for frame in found.frames:
        try:
            if frame.kind != DONE:
                raise ValueError("not a done frame")
            marks.extend(decode_done(frame.payload))
        except ValueError:
            bad += frame.end - frame.offset
    return marks, bad


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _covered(spans: list[tuple[int, int]], seq: int) -> bool:
    i = bisect.bisect_right(spans, (seq, float("inf"))) - 1
    return i >= 0 and spans[i][0] <= seq <= spans[i][1]


def _tidy_done(
    fs: FileSystem, path: str, seg: Segment, own: list[tuple[int, int]], extra: list[int]
) -> int:
    """Make ``seg``'s done file mark all it needs; returns its size."""
    need = [seg.first + i for i, s in enumerate(seg.state) if s] + extra
    mine = _merge(own)
    name = seg.stem + DONE_SUFFIX
    if not need and not own:
        return 0
    if (-1, -1) not in own and all(_covered(mine, s) for s in need):
        try:
            return len(fs.read(os.path.join(path, name)))
        except OSError:
            return 0
    data = encode_frame(DONE, 0, time.time(), encode_done(ranges(need))) if need else b""
    _try(lambda: replace_file(fs, path, name, data), "rewrite done marks")
    return len(data)


def _move_aside(
    fs: FileSystem, path: str, stem: str, data: bytes, regions: list[tuple[int, int]], t: _Tally
) -> bool:
    """Copy each damaged region into ``damaged/``; False if that failed."""
    where = os.path.join(path, DAMAGED)

    def copy() -> None:
        fs.mkdir(where)
        for start, end in regions:
            name = f"{stem}.{start:012d}.bad"
            target = os.path.join(where, name)
            _unlink_quietly(fs, target)
            handle = fs.open(target, new=True)
            try:
                write_all(handle, data[start:end])
                handle.fsync()
            finally:
                handle.close()
            t.files.append(f"{DAMAGED}/{name}")
        fs.fsync_dir(where)

    return _try(copy, "move damaged frames aside")


def _delete_segment(fs: FileSystem, path: str, stem: str, *, has_done: bool) -> None:
    """Delete a segment with nothing left to do: segment, sync, done file, sync."""
    if not _try(lambda: fs.unlink(os.path.join(path, stem + SEG_SUFFIX)), "trim"):
        return
    if has_done and _try(lambda: fs.fsync_dir(path), "sync the directory"):
        _unlink_quietly(fs, os.path.join(path, stem + DONE_SUFFIX))


def _unlink_quietly(fs: FileSystem, path: str) -> int:
    try:
        fs.unlink(path)
    except OSError:
        return 0
    return 1


def _try(step: Any, what: str) -> bool:
    try:
        step()
    except OSError as exc:
        log.warning("spool: could not %s at open (%s); will retry at the next open", what, exc)
        return False
    return True
