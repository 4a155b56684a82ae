"""Segment files: their names, and what the log remembers about each one in memory.

A segment ``<first seq, 20 digits>-<generation, 6 digits>.seg`` holds record frames in
sequence order; its sibling ``<same stem>.done`` holds done frames for the records it owns.
Names sort by sequence (the generation only breaks the tie between a segment abandoned
after a failed write and the one that took over its unsynced records). ``*.tmp`` files are
replacements being written; one left over by a crash is deleted at the next open.

In memory a segment keeps one byte per sequence number it spans (0: a record not yet done,
1: done or not its record), a live count, and the append time of the first record of each
group commit (for the oldest record's age, to within one commit).
"""

from __future__ import annotations

import bisect
import contextlib
import re

from ._files import FileHandle

__all__ = ["DONE_SUFFIX", "SEG_SUFFIX", "TMP_SUFFIX", "Segment", "parse_name", "segment_stem"]

SEG_SUFFIX = ".seg"
DONE_SUFFIX = ".done"
TMP_SUFFIX = ".tmp"
_NAME = re.compile(r"(\d{20})-(\d{6})")


def segment_stem(first_seq: int, generation: int) -> str:
    return f"{first_seq:020d}-{generation % 1_000_000:06d}"


def parse_name(stem: str) -> tuple[int, int] | None:
    """(first seq, generation) of a segment stem, or None if it is not one."""
    m = _NAME.fullmatch(stem)
    return (int(m.group(1)), int(m.group(2))) if m else None


class Segment:
    """One segment file and its done file, as the log tracks them."""

    __slots__ = (
        "done_handle",
        "done_size",
        "first",
        "handle",
        "live",
        "low",
        "size",
        "stamp_seqs",
        "stamp_times",
        "state",
        "stem",
    )

    def __init__(self, stem: str, first: int) -> None:
        self.stem = stem
        self.first = first  # the lowest sequence number it may own
        self.state = bytearray()  # per seq from ``first``: 0 live, 1 done or not a member
        self.live = 0
        self.low = 0  # every index below this is done
        self.size = 0  # bytes of the segment file known good (synced, when durable)
        self.done_size = 0
        self.handle: FileHandle | None = None  # open for appending: the active segment
        self.done_handle: FileHandle | None = None
        self.stamp_seqs: list[int] = []
        self.stamp_times: list[float] = []

    @property
    def last(self) -> int:
        """The highest sequence number it spans (``first - 1`` when empty)."""
        return self.first + len(self.state) - 1

    def add_run(self, first: int, n: int, time: float) -> None:
        """Record ``first`` .. ``first + n - 1`` (appended from ``time``), none done yet."""
        gap = first - self.first - len(self.state)
        if gap < 0:
            raise ValueError(f"seq {first} is not after {self.last} in segment {self.stem}")
        if gap:
            self.state.extend(b"\x01" * gap)
        self.state.extend(bytes(n))
        self.live += n
        if not self.stamp_times or time - self.stamp_times[-1] > 0.001:
            self.stamp_seqs.append(first)
            self.stamp_times.append(time)

    def add(self, seq: int, time: float, *, done: bool = False) -> None:
        """Record ``seq`` (appended at ``time``) as one of this segment's records."""
        if not done:
            self.add_run(seq, 1, time)
            return
        gap = seq - self.first - len(self.state)
        if gap < 0:
            raise ValueError(f"seq {seq} is not after {self.last} in segment {self.stem}")
        self.state.extend(b"\x01" * (gap + 1))

    def owns(self, seq: int) -> bool:
        return self.first <= seq <= self.last

    def mark(self, seq: int) -> bool:
        """Mark ``seq`` done; True if it was one of its records not yet done."""
        i = seq - self.first
        if not 0 <= i < len(self.state) or self.state[i]:
            return False
        self.state[i] = 1
        self.live -= 1
        return True

    def live_seqs(self) -> list[int]:
        return [self.first + i for i, s in enumerate(self.state) if not s]

    def oldest_time(self) -> float | None:
        """Append time of its oldest record not yet done (None if all are done)."""
        if not self.live:
            return None
        i = self.state.find(0, self.low)
        self.low = i
        k = bisect.bisect_right(self.stamp_seqs, self.first + i) - 1
        return self.stamp_times[max(k, 0)] if self.stamp_times else None

    def close(self) -> None:
        """Close its open files (errors ignored: the data that matters was synced)."""
        for h in (self.handle, self.done_handle):
            if h is not None:
                with contextlib.suppress(OSError):
                    h.close()
        self.handle = self.done_handle = None
